"""How `discover` finds an IOmeter bridge: it announces `_iometer._tcp` and answers
`GET /v1/status` (plain HTTP) without credentials."""

from __future__ import annotations

from ...discover import Address, Device, DeviceIdentifier, Prober, json_body
from ...model.samples import ParseError
from . import parse as io


async def identify(prober: Prober, address: Address, scheme: str, base: str) -> Device | None:
    resp = await prober.get(f"{base}/v1/status")
    payload = json_body(resp) if resp is not None and resp.status == 200 else None
    if not isinstance(payload, dict) or not str(payload.get("__typename", "")).startswith("iometer.status."):
        return None
    try:
        reading = io.parse_bridge_status(payload)
    except ParseError:
        return None
    meter = next((d for d in reading.devices if d.model == io.METER_MODEL), None)
    bridge = next((d for d in reading.devices if d.model == io.BRIDGE_MODEL), None)
    device = Device("iometer", address.target_host(scheme), model="bridge",
                    serial=bridge.serial if bridge else "", firmware=bridge.firmware if bridge else "",
                    api="local API /v1")
    if meter is not None and meter.serial:
        device.notes.append(f"reads electricity meter {meter.serial}")
    core = payload.get("device", {}).get("core") if isinstance(payload.get("device"), dict) else None
    if isinstance(core, dict) and core.get("pinStatus") not in (None, "entered"):
        device.notes.append("the meter's PIN is not entered in the IOmeter app: only totals will be read")
    return device


IDENTIFIER = DeviceIdentifier(vendor="iometer", identify=identify, schemes=("http",),
                    services={"_iometer._tcp.local.": "http"})
