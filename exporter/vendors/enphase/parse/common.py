"""Checked accessors and phase rows shared by the parsers of the gateway's endpoints."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ....model.catalogue import JOULES_PER_WH
from ....model.jsontext import label_text
from ....model.samples import ParseError, checked_object, kind_of, number_or_none, optional_list, optional_object

PHASES = ("l1", "l2", "l3")
MW_TO_W = 1e-3

# --- Small checked accessors ------------------------------------------------------------------


def opt_obj(parent: dict, key: str, what: str) -> dict | None:
    return optional_object(parent.get(key), f"{what}.{key}")


def opt_list(parent: dict, key: str, what: str) -> list:
    return optional_list(parent.get(key), f"{what}.{key}")


def opt_str(parent: dict, key: str, what: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{what}.{key}: expected a string, got {kind_of(value)}")
    return value


def int_or_none(value: Any, what: str) -> int | None:
    """An integer identifier or count (JSON integer, or a string of digits)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ParseError(f"{what}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    raise ParseError(f"{what}: expected an integer, got {kind_of(value)}")


_DIGITS = re.compile(r"[0-9]{1,30}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def serial_of(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParseError(f"{what}: expected a serial number, got {kind_of(value)}")
    if isinstance(value, int) and not -10**64 < value < 10**64:
        raise ParseError(f"{what}: number out of range")
    text = str(value).strip()
    if not text:
        raise ParseError(f"{what}: empty serial number")
    return label_text(text)  # a label value (inverter, battery)


def wh_to_joules(value: Any, what: str) -> float | None:
    """Lifetime Wh -> J; None for absent or negative (a counter cannot be negative)."""
    number = number_or_none(value, what)
    if number is None or number < 0:
        return None
    return number * JOULES_PER_WH


def lifetime_to_joules(value: Any, what: str) -> float | None:
    """A lifetime figure of the system (Wh) -> J; None for absent, negative or 0: a gateway
    reports a lifetime of 0 for a source that does not count (CTs not installed, and
    `/api/v1/production` on some firmware while the CTs are disabled), never for a system that
    has produced or consumed anything."""
    joules = wh_to_joules(value, what)
    return joules if joules else None


def add(a: float | None, b: float | None) -> float | None:
    """The sum of two figures, None unless both are known."""
    return None if a is None or b is None else a + b


def power_factor(value: Any, what: str) -> float | None:
    number = number_or_none(value, what)
    if number is None or abs(number) > 1.0:
        return None  # impossible power factor: firmware fault, not a measurement
    return number


def timestamp_of(value: Any, what: str) -> float | None:
    number = number_or_none(value, what)
    return number if number is not None and number > 0 else None


def all_zero(row: dict, skip: Iterable[str], what: str) -> bool:
    """Every numeric value of a channel is 0 (ids, clocks and frequency do not count)."""
    skipped = set(skip)
    for key, value in row.items():
        if key in skipped or isinstance(value, (dict, list, str)) or value is None:
            continue
        if number_or_none(value, f"{what}.{key}") != 0:
            return False
    return True


ROW_META = ("eid", "timestamp", "freq", "freqHz", "phase")


def phase_rows(rows: list, phase_count: int | None, what: str) -> list[tuple[str, dict]]:
    """Per-phase rows (channels, lines) with the phases that do not exist left out."""
    if len(rows) > 3:
        raise ParseError(f"{what}: {len(rows)} phases; a meter has at most 3")
    checked = [checked_object(row, f"{what}[{i}]") for i, row in enumerate(rows)]
    out = []
    for index, row in enumerate(checked):
        if phase_count:
            if index >= phase_count:
                continue  # not monitored: zeros, noise, or a copy of another CT's phase
        elif all_zero(row, ROW_META, f"{what}[{index}]"):
            continue
        out.append((PHASES[index], row))
    return out


def same_figures(a: Mapping, b: Mapping, keys: tuple[str, str], what: str) -> bool:
    values = [(number_or_none(a.get(k), f"{what}.{k}"), number_or_none(b.get(k), f"{what}.{k}")) for k in keys]
    return all(x is not None and x == y for x, y in values)


def nothing_produced(source: tuple[dict, str] | None, kind: str) -> bool:
    """True when the system has produced nothing yet (then total and net consumption are equal
    for real, and the 8.3.5433 check must not fire)."""
    if source is None:
        return True
    entry, what = source
    lifetime = number_or_none(entry.get("whLifetime") if kind == "production" else entry.get("whDlvdCum"), what)
    return not lifetime


def unique_serial(row: dict, key: str, what: str, seen: set[str], kind: str) -> str:
    """The serial number of one row of a list: present, and not listed before in the same answer
    (two rows of one unit cannot both be true)."""
    serial = serial_of(row.get(key), f"{what}.{key}")
    if serial is None:
        raise ParseError(f"{what}: no {key}")
    if serial in seen:
        raise ParseError(f"{what}: {kind} {serial} listed twice")
    seen.add(serial)
    return serial
