"""`/info`: the gateway's serial, firmware and whether it wants a token."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ....model.jsontext import label_text
from ....model.samples import DeviceInfo, ParseError, Reading, kind_of

# --- /info -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    serial: str
    part_number: str
    firmware: str  # as the gateway writes it, e.g. "D8.3.5169"
    version: tuple[int, ...]  # (8, 3, 5169)
    web_tokens: bool | None = None
    imeter: bool | None = None

    @property
    def needs_token(self) -> bool:
        """Firmware 7 and later want a JWT over HTTPS; older firmware Digest over HTTP."""
        return self.version[0] >= 7 or bool(self.web_tokens)

    def reading(self) -> Reading:
        return Reading(devices=[DeviceInfo(model=self.part_number, serial=self.serial, firmware=self.firmware)])


_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})(?:\.([0-9]{1,9}))?")


def parse_info(body: bytes | str) -> GatewayInfo:
    """`GET /info` (XML, no auth): serial `<sn>`, part number `<pn>`, firmware `<software>`."""
    if isinstance(body, bytes):
        text = body.decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        raise ParseError(f"/info: expected XML text, got {kind_of(body)}")
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise ParseError(f"/info: not XML ({exc})") from None
    if root.tag != "envoy_info":
        raise ParseError(f"/info: root element is <{root.tag[:40]}>, expected <envoy_info>")
    device = root.find("device")
    if device is None:
        raise ParseError("/info: no <device> element")

    def text_of(parent: ET.Element, tag: str) -> str | None:
        node = parent.find(tag)
        return node.text.strip() if node is not None and node.text and node.text.strip() else None

    serial = text_of(device, "sn")
    software = text_of(device, "software")
    if not serial or not software:
        raise ParseError("/info: <sn> or <software> missing")
    match = _VERSION.search(software)
    if not match:
        raise ParseError(f"/info: firmware {software[:40]!r} has no version number")
    version = tuple(int(part) for part in match.groups() if part is not None)

    def flag(value: str | None) -> bool | None:
        return None if value is None else value.lower() == "true"

    return GatewayInfo(  # label values of the info metric: made fit for that
        serial=label_text(serial),
        part_number=label_text(text_of(device, "pn") or ""),
        firmware=label_text(software),
        version=version,
        web_tokens=flag(text_of(root, "web-tokens")),
        imeter=flag(text_of(device, "imeter")),
    )
