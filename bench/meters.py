"""Simulated HomeWizard P1 meters for the benchmarks: 3-phase, with gas (and the other M-Bus
meters of the captured body), values that move the way a real meter's do.

The body is the captured API v1 `/api/v1/data` of a P1 meter (`data.json` of the simulator's
data, from the conformance corpus) plus the three phase voltages firmware 4+ sends. Between two
polls the power, currents, voltages, the 15-minute average and the energy counters move; the
gas meter reports every five minutes; tariffs, failure counts and the monthly peak stay. So a
poll changes about a third of a target's lines, as in the field.
"""

from __future__ import annotations

import json
import random
import time

from simulators.homewizard import DATA

TEMPLATE = json.loads((DATA / "v1" / "HWE-P1" / "data.json").read_text(encoding="utf-8"))
DEVICE = json.loads((DATA / "v1" / "HWE-P1" / "device.json").read_text(encoding="utf-8"))


def _dsmr(moment: float) -> int:
    """A DSMR timestamp (YYMMDDhhmmss, local time) as the v1 API sends it."""
    return int(time.strftime("%y%m%d%H%M%S", time.localtime(moment)))


class P1Meter:
    def __init__(self, index: int, seed: int = 1) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        self.rng = rng
        self.index = index
        self.serial = f"5c2faf{index:06x}"
        self.power = [rng.randint(-800, 1500) for _ in range(3)]
        self.voltage = [rng.uniform(226, 234) for _ in range(3)]
        self.import_t = [rng.uniform(2_000, 12_000), rng.uniform(1_000, 6_000)]
        self.export_t = [rng.uniform(0, 2_000), rng.uniform(0, 1_000)]
        self.gas = rng.uniform(500, 5_000)
        self.average = float(sum(self.power))
        self.last = time.time()
        self.device = json.dumps({**DEVICE, "serial": self.serial}).encode()

    def step(self, now: float | None = None) -> dict:
        """The body of the next `/api/v1/data` answer."""
        now = time.time() if now is None else now
        elapsed = min(max(now - self.last, 0.0), 3600.0)
        self.last = now
        rng = self.rng
        for n in range(3):
            self.power[n] = max(-4000, min(6000, self.power[n] + rng.randint(-60, 60)))
            self.voltage[n] = max(215.0, min(245.0, self.voltage[n] + rng.uniform(-0.4, 0.4)))
        total = sum(self.power)
        tariff = TEMPLATE["active_tariff"] - 1
        if total > 0:
            self.import_t[tariff] += total * elapsed / 3.6e6
        else:
            self.export_t[tariff] += -total * elapsed / 3.6e6
        self.average += (total - self.average) * min(elapsed / 900.0, 1.0)
        gas_at = now - now % 300  # the gas meter reports every five minutes
        body = dict(TEMPLATE)
        body.update(
            active_power_w=total,
            active_power_l1_w=self.power[0], active_power_l2_w=self.power[1], active_power_l3_w=self.power[2],
            active_current_l1_a=round(self.power[0] / self.voltage[0]),
            active_current_l2_a=round(self.power[1] / self.voltage[1]),
            active_current_l3_a=round(self.power[2] / self.voltage[2]),
            active_voltage_l1_v=round(self.voltage[0], 1),
            active_voltage_l2_v=round(self.voltage[1], 1),
            active_voltage_l3_v=round(self.voltage[2], 1),
            total_power_import_kwh=round(sum(self.import_t), 3),
            total_power_import_t1_kwh=round(self.import_t[0], 3),
            total_power_import_t2_kwh=round(self.import_t[1], 3),
            total_power_export_kwh=round(sum(self.export_t), 3),
            total_power_export_t1_kwh=round(self.export_t[0], 3),
            total_power_export_t2_kwh=round(self.export_t[1], 3),
            active_power_average_w=round(self.average, 3),
            total_gas_m3=round(self.gas + gas_at / 3.6e6, 3),
            gas_timestamp=_dsmr(gas_at),
            gas_unique_id=f"4e474c59{self.index:06x}",
        )
        externals = []
        for entry in TEMPLATE["external"]:
            entry = dict(entry, timestamp=_dsmr(gas_at))
            if entry["type"] == "gas_meter":
                entry.update(unique_id=body["gas_unique_id"], value=body["total_gas_m3"])
            else:
                entry["unique_id"] = f"{entry['unique_id'][:8]}{self.index:06x}"
            externals.append(entry)
        body["external"] = externals
        return body
