"""One endpoint of the gateway: where it is, how often it is read, whether it applies to this
gateway, and how its answer becomes a Reading. The families of endpoints live in the modules
next to this one; `__init__.py` orders them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ....model.samples import Reading
from .. import parse
from ..parse.meters import CtList


def has_cts(meters: Mapping[int, parse.MeterConfig]) -> bool:
    """Whether the gateway has a current transformer in use (its CT list says so)."""
    return any(m.enabled and m.label for m in meters.values())


@dataclass(frozen=True)
class Facts:
    """What reading an answer may need besides the answer itself."""

    meters: Mapping[int, parse.MeterConfig]  # the gateway's CT list
    now: float
    # tell_once(key, message, **fields): an info log line, given once per target.
    tell_once: Callable[..., None]

    @property
    def phases(self) -> int | None:
        return parse.gateway_phase_count(self.meters)

    @property
    def ct_list(self) -> Mapping[int, parse.MeterConfig] | None:
        """The CT list as the gateway gave it (maybe empty: no CTs), or None when the gateway
        has none to give (`/ivp/meters` missing on older firmware, or not read yet): then the
        parsers judge the CT figures by themselves."""
        return self.meters if isinstance(self.meters, CtList) else None


@dataclass(frozen=True)
class Endpoint:
    name: str  # also what `disable` takes
    path: str
    cadence: float  # seconds between reads; 0 = every poll
    # The answer (decoded JSON, or the body's bytes when `html`) -> Reading; ParseError when
    # it is not what the endpoint gives.
    read: Callable[[Any, Facts], Reading]
    stagger: int = 0  # first read this many polls after the first, to keep the first poll short
    fallback_of: tuple[str, ...] = ()  # read only while all of these are unavailable
    needs_cts: bool = False
    html: bool = False  # the answer is an HTML page (elsewhere an HTML page means "not here")

    def applies(self, meters: Mapping[int, parse.MeterConfig]) -> bool:
        """Whether this gateway has what the endpoint reports, as far as known before asking."""
        return not self.needs_cts or has_cts(meters)
