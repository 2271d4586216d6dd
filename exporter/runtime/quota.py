"""The quota ledger: how many calls each rate-limited API has had, in every window that limits it.

Vendors' clouds limit calls per hour, per day or per few minutes, and ban or return nothing
when a client goes over. The ledger records a call *before* it is made (a crash in the middle
still counts), keeps the record in the state directory (written atomically) so that a restart
or a crash loop cannot spend a quota twice, and defers a call instead of making it over the
limit. The daemon holds one ledger for its state directory and hands it to every target, so
targets sharing an account share its quota.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ..model.errors import PollError
from .state import StateDirectory

LEDGER_FILE = "quota-ledger.json"


@dataclass(frozen=True)
class Limit:
    calls: int
    seconds: float
    window: str  # label value: "hour", "day", "5m"

    def describe(self) -> str:
        return f"{self.calls} per {self.window}"


@dataclass(frozen=True)
class WindowState:
    api: str
    scope: str
    window: str
    remaining: int
    limit: int


def _plausible_stamp(value: object, now: float) -> bool:
    """A stored call time that can be counted: a finite number, not ahead of the clock (a NaN or
    a stamp years ahead in a damaged or hand-edited ledger would hold a cloud call back forever)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value <= now + 60)


class QuotaLedger:
    def __init__(self, state: StateDirectory, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.calls: dict[str, list[float]] = {}
        self.limits: dict[str, tuple[Limit, ...]] = {}
        self.listeners: list[Callable[[], None]] = []
        stored = state.read_json(LEDGER_FILE)
        if isinstance(stored, dict) and isinstance(stored.get("calls"), dict):
            for key, stamps in stored["calls"].items():
                if isinstance(stamps, list):
                    self.calls[key] = sorted(float(t) for t in stamps if _plausible_stamp(t, self.clock()))

    @staticmethod
    def _key(api: str, scope: str) -> str:
        return f"{api}|{scope}"

    def _recent(self, key: str, horizon: float) -> list[float]:
        now = self.clock()
        stamps = [t for t in self.calls.get(key, []) if now - t < horizon]
        self.calls[key] = stamps
        return stamps

    def wait_time(self, api: str, scope: str, limits: Iterable[Limit]) -> float:
        """Seconds until one more call fits every limit (0: it fits now)."""
        limits = tuple(limits)
        if not limits:
            return 0.0
        key = self._key(api, scope)
        stamps = self._recent(key, max(limit.seconds for limit in limits))
        now = self.clock()
        wait = 0.0
        for limit in limits:
            inside = [t for t in stamps if now - t < limit.seconds]
            if len(inside) >= limit.calls:
                # the oldest call that must leave the window for one more to fit
                oldest = inside[len(inside) - limit.calls]
                wait = max(wait, oldest + limit.seconds - now)
        return wait

    def acquire(self, api: str, scope: str, limits: Iterable[Limit]) -> None:
        """Record one call now, or raise PollError("quota") saying when it would fit."""
        limits = tuple(limits)
        wait = self.wait_time(api, scope, limits)
        if wait > 0:
            limit_text = ", ".join(limit.describe() for limit in limits)
            raise PollError("quota", f"{api} quota ({limit_text}) used up for {scope}; next call in {wait:.0f}s")
        key = self._key(api, scope)
        self.limits[key] = limits
        self.calls.setdefault(key, []).append(self.clock())
        self._save()

    def remaining(self, api: str, scope: str, limit: Limit) -> int:
        key = self._key(api, scope)
        now = self.clock()
        return max(0, limit.calls - sum(1 for t in self.calls.get(key, []) if now - t < limit.seconds))

    def register(self, api: str, scope: str, limits: Iterable[Limit]) -> None:
        """Make a quota visible (in `windows()`) before its first call."""
        self.limits[self._key(api, scope)] = tuple(limits)
        self._notify()

    def windows(self) -> list[WindowState]:
        out = []
        for key, limits in self.limits.items():
            api, scope = key.split("|", 1)
            for limit in limits:
                out.append(WindowState(api, scope, limit.window, self.remaining(api, scope, limit), limit.calls))
        return out

    def _save(self) -> None:
        longest = 86400.0 * 2
        now = self.clock()
        calls = {k: [t for t in v if now - t < longest] for k, v in self.calls.items()}
        self.state.write_json(LEDGER_FILE, {"version": 1, "calls": {k: v for k, v in calls.items() if v}})
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

