"""What the store keeps of one target: its status and the series of its last reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model.catalogue import Metric
from ..model.samples import DeviceInfo

# The power a target's energy counters may imply (watts), unless its `max_power` says otherwise:
# well above any house or business connection, far below what a forged or garbled value implies.
DEFAULT_MAX_POWER = 1e7

@dataclass(slots=True)  # 10,000 of them in a fleet: no per-object __dict__
class TargetState:
    name: str
    vendor: str
    stale_after: float
    up: bool = False
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_reason: str | None = None
    next_poll: float | None = None
    poll_duration: float | None = None
    polls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    regressions: int = 0
    # Values of readings not exported, by reason (SAMPLES_DROPPED); None while there are none.
    dropped: dict[str, int] | None = None
    max_power: float = DEFAULT_MAX_POWER  # watts: the fastest rise of its energy counters
    devices: list[DeviceInfo] = field(default_factory=list)
    has_series: bool = False
    # The series of the last reading as exported (counters held): its metrics (one tuple
    # shared by targets of a kind), a hash of their labels, the labels of its counters, and
    # the values. The next poll is compared with them: only families whose values changed are
    # rendered again (about a third of a meter's lines), and counters are held against them.
    # The labels of every series are not kept: they are the biggest part of a target's state
    # (1.3 kB of small tuples and strings from the device's answer for a P1 meter with its
    # M-Bus meters), and a poll renders the families that changed from its own labels.
    metrics: tuple[Metric, ...] = ()
    shape: int = 0  # hash() of the labels of the series, in order
    counter_labels: tuple[tuple, ...] = ()  # labels of the counters (_counter_positions order)
    values: Any = None  # array("d"), or a list if a value does not fit one
    # Counters not in the last reading, held in case they come back: (name, labels) -> value,
    # oldest first (at most RETIRED_MIN, or the reading's number of counters).
    retired: dict[tuple[str, tuple], float] | None = None
    # While a counter reads out of line with the value held (lower, or rising faster than
    # max_power allows): (name, labels) -> when that was first seen. Only counters of the last
    # reading or retired ones.
    disputed_since: dict[tuple[str, tuple], float] | None = None
    device_families: tuple[Metric, ...] = ()
    base: str = ""  # the target's labels, rendered once: vendor="...",device="..."
    # Endpoints that failed at the last successful poll, with what went wrong (status page).
    endpoints_down: tuple[tuple[str, str], ...] = ()
    info_lines: bytes = b""  # device_info lines of `devices`
