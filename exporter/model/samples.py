"""What parse functions produce: normalized samples, device identity, and their errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .catalogue import ENDPOINT_UP, Metric
from .errors import PollError


class ParseError(ValueError):
    """A payload the parser cannot turn into trustworthy samples (the poll fails with reason `parse`)."""


@dataclass(frozen=True, slots=True)
class Sample:
    metric: Metric
    labels: tuple[tuple[str, str], ...]  # extra labels in the order of `metric.labels`, then `obis`
    value: float


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    model: str = ""
    serial: str = ""
    firmware: str = ""
    meter: str | None = None  # set where one target holds several meters


@dataclass(slots=True)
class Reading:
    """The result of one successful poll (or one pushed message) of one target."""

    samples: list[Sample] = field(default_factory=list)
    devices: list[DeviceInfo] = field(default_factory=list)
    # Endpoints of the device that failed at their last read (name -> what went wrong, short:
    # "HTTP 500", "timeout"), for the status page; see `report_endpoint`. None: none failed.
    endpoints_down: dict[str, str] | None = None

    def report_endpoint(self, name: str, problem: str | None = None) -> None:
        """The health of one endpoint of a device read through several: `problem` None when it
        answered at its last read. Gives energy_meter_exporter_endpoint_up{endpoint} (1/0); a
        failing one is also listed in `endpoints_down`."""
        self.add(ENDPOINT_UP, 0 if problem else 1, endpoint=name)
        if problem:
            if self.endpoints_down is None:
                self.endpoints_down = {}
            self.endpoints_down[name] = problem

    def add(self, metric: Metric, value: Any, **labels: str) -> None:
        """Add a sample, silently skipping values the device did not send.

        `value` may be None (field absent or null): no series, never 0 or NaN. A value of the
        wrong type is a parse error for the whole payload, not a guess.
        """
        number = number_or_none(value, metric.name)
        if number is None:
            return
        missing = [name for name in metric.labels if name not in labels]
        extra = [name for name in labels if name not in metric.labels and name != "obis"]
        if missing or extra:
            raise TypeError(f"{metric.name}: labels {sorted(labels)} do not match {metric.labels}")
        pairs = tuple((name, str(labels[name])) for name in metric.labels)
        obis = labels.get("obis") or metric.obis_for(labels)
        if obis:
            pairs += (("obis", obis),)
        self.samples.append(Sample(metric, pairs, number))

    def value_of(self, metric: Metric, **labels: str) -> float | None:
        """The value of one series (tests and tools), or None."""
        for sample in self.samples:
            if sample.metric is metric and all(
                dict(sample.labels).get(k) == v for k, v in labels.items()
            ):
                return sample.value
        return None


# What a push adapter hands the scheduler for each thing its device sends: a Reading (the target's
# new state), or a PollError (the target is down for that reason, counted and logged).
Emit = Callable[[Reading | PollError], None]


def number_or_none(value: Any, what: str = "value") -> float | None:
    """A finite float from a JSON value; None for null; ParseError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ParseError(f"{what}: expected a number, got a boolean")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range (10**400)
            raise ParseError(f"{what}: number out of range") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ParseError(f"{what}: expected a number, got {value[:40]!r}") from None
    else:
        raise ParseError(f"{what}: expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ParseError(f"{what}: not a finite number")
    return number


def scaled(value: Any, factor: float, what: str = "value") -> float | None:
    number = number_or_none(value, what)
    return None if number is None else number * factor


# --- checked accessors: what parse functions use to take a JSON document apart ------------------
# Each raises ParseError naming the field (`what`) and what came instead, so that an answer of
# the wrong shape fails its poll with reason `parse` and a message a user can act on.

def kind_of(value: Any) -> str:
    """How a JSON value is named in a parse error: "null", "a boolean", "an object", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def checked_object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ParseError(f"{what}: expected an object, got {kind_of(value)}")
    return value


def checked_list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ParseError(f"{what}: expected a list, got {kind_of(value)}")
    return value


def optional_object(value: Any, what: str) -> dict | None:
    """An object, or None where the field is absent or null."""
    return None if value is None else checked_object(value, what)


def optional_list(value: Any, what: str) -> list:
    """A list, or an empty one where the field is absent or null."""
    return [] if value is None else checked_list(value, what)
