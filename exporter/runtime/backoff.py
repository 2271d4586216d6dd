"""How long to wait before trying again: one policy for every retry and reconnection.

A `Backoff` gives the delay after the n-th consecutive failure: `base` for the first `grace`
failures, then `factor` times longer for each one after those, never more than `ceiling`. A
fleet that failed together must not come back together, so a policy varies its delays in one
of two ways, one per kind of caller:

- polls (`Backoff.for_polls`): the scheduler's next try after a failed poll. The interval for
  the first RETRIES_BEFORE_BACKOFF failures, then 2x, 4x ... up to `max_backoff`; up to `slack`
  seconds are added (the target's own poll spread), never taken off: a retry never comes
  earlier than the backoff says, and the grid's jitter and the retry's are the same size.
- reconnections (`Backoff.for_reconnects`): a stream, a subscription or a broker connection
  that broke. The first delay, doubling from the second failure on, varied by `spread` (10 %)
  either way and still at most the ceiling.

A wait that must stay exact (a cloud quota's hold-off, a gateway's nightly window, a local port
taken) has neither.

`retry_forever` runs a connection (or a periodic job) again and again under a policy: the
adapters do the I/O and the parsing, it does the waiting. `Deadline` is what is left of one
poll's time, for the parts of a poll that must leave room for the rest.

This module knows no vendor and no configuration: it takes numbers, and targets by the three
fields it reads.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, NoReturn, Protocol

# Consecutive failures of a poll retried at the normal interval before the delay starts to grow:
# a glitch (one dropped Wi-Fi packet, a reboot) then costs at most one interval after it clears,
# while a device that stays away is asked less and less often.
RETRIES_BEFORE_BACKOFF = 3
# Reconnection delays vary by this share either way: enough to spread clients that lost the
# same peer at once, little enough that `reconnect_delay` still means what it says.
RECONNECT_SPREAD = 0.1


class PollTiming(Protocol):
    """What a poll policy reads of a target (`exporter.config.loader.TargetConfig` has it)."""

    @property
    def interval(self) -> float: ...

    @property
    def max_backoff(self) -> float: ...

    @property
    def jitter(self) -> float: ...


def poll_spread(target: PollTiming) -> float:
    """Seconds by which a target's poll times vary at random: its `jitter` share of half an
    interval, so that a fleet does not poll in lock-step."""
    return target.jitter * target.interval / 2


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay after the n-th consecutive failure (see the module's description)."""

    base: float  # seconds after each of the first `grace` failures
    ceiling: float  # never longer (the slack of a poll comes on top)
    grace: int = 1  # failures that wait `base` before the delay starts to grow
    factor: float = 2.0
    spread: float = 0.0  # reconnections: the delay varies by this share either way
    slack: float = 0.0  # polls: up to this many seconds are added

    def __post_init__(self) -> None:
        if not 0.0 <= self.spread < 1.0:
            raise ValueError(f"spread must be at least 0 and below 1, not {self.spread}")
        if self.grace < 0 or self.factor < 1.0 or self.slack < 0.0:
            raise ValueError("grace and slack must not be negative, factor not below 1")

    @classmethod
    def for_polls(cls, target: PollTiming) -> "Backoff":
        """The scheduler's: 10, 10, 10, 20, 40 ... s for an interval of 10 s, up to max_backoff."""
        return cls(base=target.interval, ceiling=max(target.max_backoff, target.interval),
                   grace=RETRIES_BEFORE_BACKOFF, slack=poll_spread(target))

    @classmethod
    def for_reconnects(cls, first: float, ceiling: float) -> "Backoff":
        """A broken connection's: `first`, then doubling up to `ceiling`, 10 % either way. The
        ceiling wins over `first` (a broker is tried within its targets' shortest interval)."""
        return cls(base=first, ceiling=ceiling, spread=RECONNECT_SPREAD)

    def nominal(self, failures: int) -> float:
        """The delay after the `failures`-th consecutive failure, before any jitter."""
        growth = max(failures - self.grace, 0)
        try:
            delay = self.base * self.factor ** growth
        except OverflowError:  # a peer away for thousands of tries: long since at the ceiling
            delay = math.inf
        return min(delay, self.ceiling)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay after the `failures`-th consecutive failure, jitter included."""
        uniform = (rng or random).uniform
        delay = self.nominal(failures)
        if self.spread:
            delay = min(delay * uniform(1.0 - self.spread, 1.0 + self.spread), self.ceiling)
        if self.slack:
            delay += uniform(0.0, self.slack)
        return delay

    def after(self, previous: float) -> float:
        """The delay that follows one of `previous` seconds, for a delay kept without its count
        (a hold-off stored across restarts); no jitter."""
        return min(previous * self.factor, self.ceiling)


async def retry_forever(attempt: Callable[[], Awaitable[bool]], policy: Backoff,
                        on_failure: Callable[[Exception], None] | None = None, *,
                        every: float | None = None) -> NoReturn:
    """Run `attempt` again and again until cancelled, waiting in between as `policy` says.

    `attempt` returns True when it went well (a connection that delivered before it ended, a
    periodic job done): the count of failures starts over, and the next run comes `every`
    seconds later, or without `every` after the policy's first delay, so that a peer which
    drops each connection after a message is not asked in a tight loop. False, or an exception
    (handed to `on_failure`; without one it ends the loop), is one more consecutive failure."""
    failures = 0
    task = asyncio.current_task()
    while True:
        try:
            good = await attempt()
        except Exception as exc:
            _stop_if_cancelled(task, exc)
            if on_failure is None:
                raise
            on_failure(exc)
            good = False
        _stop_if_cancelled(task)
        if good:
            failures = 0
            if every is not None:
                await asyncio.sleep(every)
                continue
        failures += 1
        await asyncio.sleep(policy.delay(failures))


def _stop_if_cancelled(task: asyncio.Task | None, cause: BaseException | None = None) -> None:
    """Raise CancelledError if `task` has been asked to stop. On Python 3.11 a cancellation that
    arrives as a library's `asyncio.wait_for` times out comes out as TimeoutError (the library's,
    websockets' or gql's, error), which an attempt takes for a failed connection: without this
    check the loop would go on and the adapter would never stop."""
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from cause


@dataclass(frozen=True, slots=True)
class Deadline:
    """One poll's time: `seconds` from `start` (event-loop time). A part of a poll that must
    leave room for the rest asks how long it has until a share of that time has passed."""

    start: float
    seconds: float

    @classmethod
    def from_now(cls, seconds: float) -> "Deadline":
        return cls(asyncio.get_running_loop().time(), seconds)

    def left(self, share: float = 1.0) -> float:
        """Seconds until `share` of the poll's time has passed (0 or less: it has)."""
        return self.start + self.seconds * share - asyncio.get_running_loop().time()
