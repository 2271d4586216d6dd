"""The IOmeter Partner API's own scalars, `ObisCode` and `DateTime`, as its document defines them.

Written from the seed document (iometer-partner-graphql-api.txt, "ObisCode", "ObisFormat" and
"DateTime"), apart from the exporter's readers, which accept more notations (those of the local
bridge as well): the simulator reads what the API documents and nothing else.

ObisCode: `A-B:C.D.E` in decimal, optionally `*F` (`1-0:1.8.0*255`); the hexadecimal form with all
six groups as two hex digits (`01-00:01.08.00*ff`); the short form `C.D.E` (medium 1, channel 0).
F is 255 ("current value") when not written. DateTime: RFC 3339 with a zone (`Z` or an offset),
whole or fractional seconds; the document's own example writes hour 24 (`2024-12-31T24:30:15Z`),
which counts on into the next day.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from typing import Any, NamedTuple


class ObisCode(NamedTuple):
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int = 255

    def format(self, fmt: str) -> str:
        """The code in one of the `ObisFormat` enum values (`decimal` for anything else)."""
        if fmt == "hex":
            return "{:02x}-{:02x}:{:02x}.{:02x}.{:02x}*{:02x}".format(*self)
        if fmt == "short":
            return f"{self.c}.{self.d}.{self.e}"
        decimal = f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}"
        if fmt == "decimal_full" or self.f != 255:
            # A billing period (F other than 255) is a different quantity: keep it visible.
            return f"{decimal}*{self.f}"
        return decimal


_HEX_CODE = re.compile(r"([0-9a-fA-F]{2})-([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})"
                       r"\*([0-9a-fA-F]{2})")
_DECIMAL_CODE = re.compile(r"(?:(\d{1,3})-(\d{1,3}):)?(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\*(\d{1,3}))?")


def read_obis(text: Any) -> ObisCode:
    """An ObisCode as a client may send it; ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"ObisCode must be a string, not {type(text).__name__}")
    text = text.strip()
    # The hex form is tried first: decimal never zero-pads, so `01-00:...*ff` is never decimal.
    match = _HEX_CODE.fullmatch(text)
    if match:
        return ObisCode(*(int(group, 16) for group in match.groups()))
    match = _DECIMAL_CODE.fullmatch(text)
    if not match:
        raise ValueError(f"not an ObisCode: {text[:40]!r}")
    a, b, c, d, e, f = match.groups()
    groups = [int(g) for g in (a or "1", b or "0", c, d, e, f or "255")]
    if max(groups) > 255:
        raise ValueError(f"not an ObisCode (a group above 255): {text[:40]!r}")
    return ObisCode(*groups)


_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def read_datetime(text: Any) -> float:
    """Unix time of a DateTime; ValueError if it is not one."""
    match = _DATETIME.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not an RFC 3339 DateTime: {str(text)[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign, offset_h, offset_m = match.group(7, 8, 9, 10, 11)
    valid = (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour <= 24
             and minute <= 59 and second <= 59)
    if not valid or (not zulu and (int(offset_h) > 23 or int(offset_m) > 59)):
        raise ValueError(f"not an RFC 3339 DateTime: {text[:40]!r}")
    # timegm counts hours past 23 on into the next day, which is what hour 24 means.
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if not zulu:
        offset = (int(offset_h) * 60 + int(offset_m)) * 60
        seconds -= offset if sign == "+" else -offset
    return seconds + (float(fraction) if fraction else 0.0)


def write_datetime(timestamp: float) -> str:
    """The API's DateTime for a Unix time: UTC, whole seconds, the fraction cut off."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(timestamp)))
