"""How `discover` finds an Enphase IQ Gateway: it announces `_enphase-envoy._tcp` and answers
`GET /info` without credentials (firmware 7 and later on HTTPS only, where the fingerprint of
its self-signed certificate is read for `tls_fingerprint`)."""

from __future__ import annotations

from typing import Mapping

from ...discover import Address, Device, DeviceIdentifier, Prober
from ...model.samples import ParseError
from ...transport.peercert import colon_hex
from . import parse as en


async def identify(prober: Prober, endpoint: Address, scheme: str, base: str) -> Device | None:
    resp = await prober.get(f"{base}/info")
    target_endpoint, target_scheme = endpoint, scheme
    if resp is not None and resp.status in (301, 302, 303, 307, 308) and scheme == "http":
        # Firmware 7 and later answer on HTTPS; plain HTTP only redirects there.
        target_endpoint = Address(endpoint.host, 443) if endpoint.port == 80 else endpoint
        target_scheme = "https"
        resp = await prober.get(f"https://{target_endpoint.netloc}/info")
    if resp is None or resp.status != 200 or b"envoy_info" not in resp.body[:4096]:
        return None
    try:
        info = en.parse_info(resp.body)
    except ParseError:
        return None
    device = Device("enphase", target_endpoint.target_host(target_scheme), model=info.part_number,
                    serial=info.serial, firmware=info.firmware)
    device.options["serial"] = info.serial
    if info.needs_token:
        device.api = "HTTPS with a token (firmware 7+)"
        # A gateway that answered on plain HTTP still serves its API on HTTPS (443).
        tls_endpoint = Address(endpoint.host, 443) if target_scheme == "http" and endpoint.port == 80 \
            else target_endpoint
        fingerprint = await prober.tls_fingerprint(tls_endpoint)
        if fingerprint:
            device.options["tls_fingerprint"] = colon_hex(fingerprint)
            device.notes.append("tls_fingerprint pins the self-signed certificate it presented now; "
                                "compare it with the one your browser shows for https://" + device.host)
        device.hints += [
            "# username: you@example.com        # your Enlighten login: the exporter fetches and renews tokens",
            "# password_file: /etc/energy-meter-exporter/enlighten.password",
            f"# token_file: enphase-{info.serial}.token   # from `energy-meter-exporter token enphase "
            f"--host {device.host} --username EMAIL`, or entrez.enphaseenergy.com",
        ]
        device.action_needed = True
        device.notes.append("it needs a token: set username and password_file (Enlighten login), "
                            "or token_file; see docs/vendors/enphase.md")
    else:
        device.api = "HTTP with Digest auth (firmware below 7)"
    return device


def announced(device: Device, properties: Mapping[str, str], scheme: str | None) -> None:
    device.serial = properties.get("serialnum", "")
    device.firmware = properties.get("protovers", "")


def name(device: Device) -> str:
    return "enphase-gateway"


IDENTIFIER = DeviceIdentifier(vendor="enphase", identify=identify, services={"_enphase-envoy._tcp.local.": None},
                              announced=announced, name=name)
