"""When each endpoint is read, and what the latest reads give together.

Each endpoint has its own cadence. A poll reads what is due, one request at a time; the cached
results of the others are merged in while they are fresh enough to pass for the present.

The primary endpoints are those a poll cannot do without: the CT readings on a gateway with a CT
in use, else the production family (whichever of its endpoints the firmware has). A poll reads
them first; the others are secondary: one that fails leaves its figures out until it answers
again, and the poll goes on with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from ...model.samples import Reading
from . import parse
from .endpoints import Endpoint


# Groups of primary endpoints by name, in order: the first group with an active endpoint is
# primary. Names absent from the endpoint table are ignored.
PRIMARY_GROUPS: tuple[tuple[str, ...], ...] = (
    ("meters_readings",),
    ("production_json", "api_v1_production", "production_page"),
)


@dataclass
class EndpointState:
    next_due: float = 0.0
    off_until: float = 0.0  # switched off (not on this gateway, or not for this account) until then
    reading: Reading | None = None
    read_at: float = 0.0
    # The outcome of the last read: None before the first one (or once switched off), True when
    # it answered, False when it failed, with `problem` saying how ("HTTP 500", "timeout").
    up: bool | None = None
    problem: str = ""


class Timetable:
    def __init__(self, endpoints: tuple[Endpoint, ...], disabled: Iterable[str]) -> None:
        self.endpoints = endpoints
        self.disabled = set(disabled)
        self.states = {e.name: EndpointState() for e in endpoints}
        self.polls = 0  # polls started

    def start_poll(self, now: float, interval: float) -> None:
        """The first poll schedules the staggered endpoints' first reads."""
        if self.polls == 0:
            for endpoint in self.endpoints:
                if endpoint.stagger:
                    self.states[endpoint.name].next_due = now + endpoint.stagger * interval
        self.polls += 1

    def due(self, now: float, meters: Mapping[int, parse.MeterConfig],
            primary: bool) -> Iterator[tuple[Endpoint, EndpointState]]:
        """The primary (or the secondary) endpoints to read now, in order. Lazy: reading one may
        switch on a fallback later in the table, or change which endpoints are primary."""
        for endpoint in self.endpoints:
            state = self.states[endpoint.name]
            if not self.active(endpoint, now, meters) or now < state.next_due:
                continue
            if (endpoint in self.primary(now, meters)) == primary:
                yield endpoint, state

    def primary(self, now: float, meters: Mapping[int, parse.MeterConfig]) -> tuple[Endpoint, ...]:
        """The active endpoints of the first group of PRIMARY_GROUPS that has one."""
        for group in PRIMARY_GROUPS:
            found = tuple(e for e in self.endpoints if e.name in group and self.active(e, now, meters))
            if found:
                return found
        return ()

    def active(self, endpoint: Endpoint, now: float, meters: Mapping[int, parse.MeterConfig]) -> bool:
        if endpoint.name in self.disabled or self.states[endpoint.name].off_until > now:
            return False
        if not endpoint.applies(meters):
            return False
        if endpoint.fallback_of:
            others = [e for e in self.endpoints if e.name in endpoint.fallback_of]
            return not any(self.active(e, now, meters) for e in others)
        return True

    def latest(self, now: float, interval: float, meters: Mapping[int, parse.MeterConfig]) -> dict[str, Reading]:
        """The latest read of every active endpoint while it is fresh enough to pass for the
        present, by endpoint name, in the order of the table."""
        fresh = {}
        for endpoint in self.endpoints:
            state = self.states[endpoint.name]
            if state.reading is None or not self.active(endpoint, now, meters):
                continue
            if now - state.read_at > 3 * max(endpoint.cadence, interval):
                continue  # too old to pass for the present
            fresh[endpoint.name] = state.reading
        return fresh

    @staticmethod
    def merge(into: Reading, latest: Mapping[str, Reading]) -> Reading:
        """`into` with the samples of `latest` (see above), one source per metric: the first
        endpoint that has a metric gives all its series."""
        claimed: set[str] = set()
        for reading in latest.values():
            into.samples.extend(s for s in reading.samples if s.metric.name not in claimed)
            claimed.update(s.metric.name for s in reading.samples)
        return into
