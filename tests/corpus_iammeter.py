"""Every IAMMETER measurement body of the conformance corpus, parsed (for the catalogue checks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from exporter.model.samples import Reading
from exporter.vendors.iammeter.parse import (decode_single_phase, decode_three_phase, parse_monitor, parse_monitorjson,
                                             parse_ratio, parse_wifidata)


def readings(conformance_root: Path) -> Iterator[tuple[str, Reading]]:
    """(file name relative to the corpus root, Reading) for each `iammeter/*.json` body.

    All of them are `GET /api/monitorjson` (or legacy `/monitorjson`) answers.
    """
    for path in sorted((conformance_root / "iammeter").glob("*.json")):
        yield path.relative_to(conformance_root).as_posix(), parse_monitorjson(json.loads(path.read_bytes()))


def documented() -> Iterator[tuple[str, Reading]]:
    """Shapes the seed and the facts sheet document but the corpus holds no capture of: NEM rows,
    reactive data, single phase `Data`, `/api/monitor`, `/api/ratio`, Modbus register images."""
    from tests.test_iammeter_parse import NEM, REACTIVE, SEED_WIFIDATA, SINGLE, TWO_PHASE_NEM
    from tests.test_iammeter_registers import three_phase_image

    yield "single phase with EA.Reactive", parse_monitorjson({**SINGLE, "EA": {"Reactive": [[3.0, 1.0, 2.0]]}})
    yield "three phase NEM with EA.Reactive", parse_monitorjson({**NEM, "EA": REACTIVE})
    yield "WEM2067 with NEM", parse_monitorjson(TWO_PHASE_NEM)
    yield "/api/monitor", parse_monitor({**SINGLE, "sig": 70})
    yield "/api/monitor dBm", parse_monitor({"sig": -60})
    yield "/api/ratio", parse_ratio({"CTratio": 400})
    yield "/api/wifidata", parse_wifidata(SEED_WIFIDATA).reading()
    yield "modbus three phase", decode_three_phase(three_phase_image(), "WEM3080T")
    yield "modbus single phase", decode_single_phase([23000, 100, 0, 230, 0, 3200, 0, 0])
    yield from cloud_documented()


def cloud_documented() -> Iterator[tuple[str, Reading]]:
    """Every example body of the cloud API document (`seeds/iammeter-cloud-api.txt`, embedded in
    the cloud simulator): there is no capture of that API."""
    from datetime import date

    from exporter.vendors.iammeter import cloud_parse as cp
    from simulators import iammeter_cloud as seed

    labels = cp.MeterLabels("", "meter")
    for sn, reading in cp.parse_metersdata(seed.SEED_METERSDATA["data"], {}).items():
        yield f"cloud metersdata {sn}", reading
    for name in ("SEED_METERDATA_SINGLE", "SEED_METERDATA_THREE", "SEED_METERDATA2_SINGLE", "SEED_METERDATA2_THREE"):
        yield f"cloud {name}", cp.parse_meterdata(getattr(seed, name)["data"], "SN", labels)
    for name in ("SEED_METERDATALIST_SINGLE", "SEED_METERDATALIST_THREE", "SEED_METERDATALIST2"):
        for point in cp.parse_meterdatalist(getattr(seed, name)["data"], "SN"):
            yield f"cloud {name} at {point.time:.0f}", cp.history_reading(point, "SN", labels)
    yield "cloud powerAnalysis", cp.parse_power_analysis(seed.SEED_POWER_ANALYSIS["data"], labels)
    yield "cloud offlineAnalysis", cp.parse_offline_analysis(seed.SEED_OFFLINE_ANALYSIS["data"], labels)
    for place, body in seed.SEED_ENERGY_HISTORY.items():
        yield f"cloud energyhistory {place}", cp.parse_energy_history(body["data"], place, date(2024, 5, 6))
