"""How `discover` finds IAMMETER meters: they do not announce themselves, so only a scan finds
them. A meter answers `GET /api/monitorjson` (and `/api/wifidata`) on plain HTTP without
credentials; legacy firmware is recognised by the Basic-auth challenge of `/monitorjson`, which
names the maker, so no password is sent to find it."""

from __future__ import annotations

import re

from ...discover import Address, Device, DeviceIdentifier, Prober, header, json_body
from ...model.samples import ParseError
from . import parse as iam


async def identify(prober: Prober, address: Address, scheme: str, base: str) -> Device | None:
    resp = await prober.get(f"{base}/api/monitorjson")
    if resp is not None and resp.status == 200:
        payload = json_body(resp)
        if not isinstance(payload, dict) or not any(k in payload for k in ("Data", "Datas", "data")):
            return None
        try:
            reading = iam.parse_monitorjson(payload)
        except ParseError:
            return None
        own = reading.devices[0] if reading.devices else None
        device = Device("iammeter", address.target_host(scheme), model=own.model if own else "",
                        serial=own.serial if own else "", firmware=own.firmware if own else "",
                        api="local HTTP API")
        if not device.serial or not device.firmware:
            wifi = await prober.get(f"{base}/api/wifidata")
            try:
                data = iam.parse_wifidata(json_body(wifi)) if wifi is not None and wifi.status == 200 else None
            except ParseError:
                data = None
            if data is not None:
                device.serial = device.serial or data.serial
                device.firmware = device.firmware or data.firmware
        return device
    if resp is not None and resp.status != 404:
        return None
    # Legacy firmware has only /monitorjson behind Basic auth: its challenge names the maker.
    legacy = await prober.get(f"{base}/monitorjson")
    challenge = header(legacy.headers, "WWW-Authenticate") if legacy is not None else None
    if legacy is None or legacy.status != 401 or not challenge or "iammeter" not in challenge.lower():
        return None
    device = Device("iammeter", address.target_host(scheme), model="WEM3162 or similar",
                    api="legacy /monitorjson with Basic auth")
    device.options["legacy"] = True
    device.hints.append("# username: admin        # only if you changed the meter's login (default admin/admin)")
    device.hints.append("# password_file: /etc/energy-meter-exporter/iammeter.password")
    return device


def name(device: Device) -> str:
    """`iammeter-wem3080t`: the model where it is one word."""
    model = re.sub(r"[^a-z0-9]+", "-", device.model.lower()).strip("-")
    return f"iammeter-{model}" if model and " " not in device.model else "iammeter"


IDENTIFIER = DeviceIdentifier(vendor="iammeter", identify=identify, schemes=("http",), name=name)
