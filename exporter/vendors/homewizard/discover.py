"""How `discover` finds HomeWizard devices: they announce `_hwenergy._tcp` (API v1, HTTP) and
`_homewizard._tcp` (API v2, HTTPS), and answer `GET /api` without credentials."""

from __future__ import annotations

from typing import Mapping

from ...discover import Address, Device, DeviceIdentifier, Prober, json_body
from ...model.samples import ParseError
from . import parse as hw

# Product types -> a target name a person would pick.
NAMES = {
    "HWE-P1": "p1-meter", "HWE-KWH1": "kwh-meter", "HWE-KWH3": "kwh-meter-3phase",
    "SDM230-wifi": "kwh-meter", "SDM630-wifi": "kwh-meter-3phase", "HWE-SKT": "energy-socket",
    "HWE-WTR": "water-meter", "HWE-BAT": "battery", "HWE-DSP": "display",
}


async def identify(prober: Prober, address: Address, scheme: str, base: str) -> Device | None:
    resp = await prober.get(f"{base}/api", {"X-Api-Version": "2"} if scheme == "https" else None)
    if resp is None:
        return None
    payload = json_body(resp)
    host = address.target_host(scheme)
    if resp.status == 403 and isinstance(payload, dict) and hw.api_error(payload) == "202":
        return Device("homewizard", host, api="API v1 (switched off)", action_needed=True, notes=[
            "its local API is switched off: enable it in the HomeWizard Energy app "
            "(Settings > Meters > your meter > Local API), then run discover again"])
    if resp.status != 200 or not isinstance(payload, dict):
        return None
    try:
        info = hw.parse_device(payload)
        version = hw.api_version(payload)
    except ParseError:
        return None
    device = Device("homewizard", host, model=info.model, serial=info.serial, firmware=info.firmware)
    device.options["serial"] = info.serial
    if scheme == "http" and version == 1:
        device.api = "API v1"
    else:
        device.api = "API v2"
        _needs_pairing(device)
    return device


def announced(device: Device, properties: Mapping[str, str], scheme: str | None) -> None:
    device.model = properties.get("product_type", "")
    device.serial = properties.get("serial", "")
    device.api = "API v2" if scheme == "https" else "API v1"
    if device.serial:
        device.options["serial"] = device.serial
    if scheme == "http" and properties.get("api_enabled") == "0":
        device.action_needed = True
        device.notes.append("its local API is switched off: enable it in the HomeWizard Energy app "
                            "(Settings > Meters > your meter > Local API)")
    if scheme == "https":
        _needs_pairing(device)


def merge(known: Device, device: Device) -> None:
    """One device answering on API v1 and v2: API v1 works without pairing, so it stays the
    target, and v2 is mentioned."""
    if known.api == device.api or "v1" not in known.api + device.api:
        return
    v1, v2 = (known, device) if "v1" in known.api else (device, known)
    if known is not v1:
        known.host, known.api, known.hints = v1.host, v1.api, list(v1.hints)
        known.notes = [n for n in known.notes if "API v2 needs a token" not in n]
        known.action_needed = v1.action_needed
    known.api = "API v1 (and v2)"
    known.notes.append(f"it also speaks API v2 ({v2.host}): for it, run `energy-meter-exporter pair "
                       f"homewizard {v2.host}` and set token_file and api_version: v2")


def name(device: Device) -> str:
    return NAMES.get(device.model, "homewizard")


def _needs_pairing(device: Device) -> None:
    device.action_needed = True
    device.hints.append(f"# token_file: /etc/energy-meter-exporter/homewizard-{device.serial or 'SERIAL'}.token"
                        "   # from `energy-meter-exporter pair homewizard HOST`")
    device.notes.append(f"API v2 needs a token: run `energy-meter-exporter pair homewizard {device.host}`, "
                        "press the button on the device, and set token_file to the file it writes")


IDENTIFIER = DeviceIdentifier(
    vendor="homewizard", identify=identify,
    services={"_hwenergy._tcp.local.": "http", "_homewizard._tcp.local.": "https"},
    announced=announced, name=name, merge=merge,
)
