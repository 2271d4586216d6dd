"""Polling on each target's own schedule, in the background, never on scrape.

A target's polls run one after the other, so there is never more than one request in flight to
a device (weak Wi-Fi chips fall over with more). Polls keep to a fixed grid (interval, with a
random phase and a little jitter, so a fleet does not poll in lock-step); after a failure the
delay grows exponentially up to `max_backoff`.

Waiting targets cost no task: one timetable per event loop holds every target's next due time
and starts each poll as a short task of its own. (A sleeping task per target costs a coroutine,
a future and a timer each, 1.5 kB and steady work for the garbage collector at 10,000 targets.)
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
import weakref
from array import array
from typing import Any

from .config import TargetConfig
from .errors import PollError
from .samples import ParseError, Reading
from .store import SnapshotStore

# The first poll of a target waits a random part of its interval, at most this long.
FIRST_POLL_SPREAD = 10.0
# ... unless many targets start at once: a first poll opens a connection and identifies the
# device (two or three times the work of a poll), so a fleet's first polls are spread to start
# about this many per second.
FIRST_POLLS_PER_SECOND = 250.0


def first_poll_spread(target: TargetConfig, starting: int) -> float:
    """Seconds over which the first polls of `starting` targets started together are spread."""
    return max(min(target.interval, FIRST_POLL_SPREAD), starting / FIRST_POLLS_PER_SECOND)


# Consecutive failures retried at the normal interval before the delay starts to grow: a glitch
# (one dropped Wi-Fi packet, a reboot) then costs at most one interval after it clears, while a
# device that stays away is asked less and less often.
RETRIES_BEFORE_BACKOFF = 3


def backoff_delay(target: TargetConfig, failures: int) -> float:
    """Delay after the n-th consecutive failure: the interval for the first few, then 2x, 4x ...
    up to max_backoff."""
    growth = max(failures - RETRIES_BEFORE_BACKOFF, 0)
    return min(target.interval * (2 ** growth), max(target.max_backoff, target.interval))


class _Timetable:
    """When each poll target of one event loop is due; starts its poll then."""

    # Polls due this close together start in one pass (one timer for a burst of them).
    COALESCE = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, TargetRunner]] = []
        self.seq = 0
        self.timer: asyncio.TimerHandle | None = None
        self.wake_at = float("inf")

    def add(self, runner: "TargetRunner", due: float) -> None:
        self.seq += 1
        runner.entry = self.seq  # an older entry of the runner is now stale
        heapq.heappush(self.heap, (due, self.seq, runner))
        if due < self.wake_at:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.wake_at = due
        self.timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.wake_at = float("inf")
        heap = self.heap
        limit = self.loop.time() + self.COALESCE
        while heap and heap[0][0] <= limit:
            due, seq, runner = heapq.heappop(heap)
            if runner.entry == seq:
                runner.entry = 0
                runner.launch(due)
        if heap:
            self._arm(heap[0][0])


_TIMETABLES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timetable]" = weakref.WeakKeyDictionary()


def _timetable() -> _Timetable:
    loop = asyncio.get_running_loop()
    table = _TIMETABLES.get(loop)
    if table is None:
        table = _TIMETABLES[loop] = _Timetable(loop)
    return table


class LagRing:
    """The last LAGS lags of a target, as 4-byte floats: 10,000 targets keep 2.5 MB, where a
    deque of 1,000 float objects each would grow to 300 MB."""

    __slots__ = ("_values", "_count")
    LAGS = 64

    def __init__(self) -> None:
        self._values = array("f")
        self._count = 0  # appended in all

    def append(self, value: float) -> None:
        if len(self._values) < self.LAGS:
            self._values.append(value)
        else:
            self._values[self._count % self.LAGS] = value
        self._count += 1

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self):
        """Oldest first."""
        start = self._count % self.LAGS if len(self._values) == self.LAGS else 0
        values = self._values
        return iter(values[start:].tolist() + values[:start].tolist())


class Once:
    """Set once, never cleared (`asyncio.Event`'s is_set/set/wait, without its waiter queue
    for each of 10,000 targets)."""

    __slots__ = ("_set", "_event")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self._event is not None:
                self._event.set()

    async def wait(self) -> bool:
        if not self._set:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return True


class TargetRunner:
    __slots__ = ("target", "adapter", "store", "log", "kind", "failures", "task", "polled_once", "lags",
                 "first_spread", "stopped", "entry", "timetable", "task_name")

    def __init__(self, target: TargetConfig, adapter: Any, store: SnapshotStore, log: Any, kind: str = "poll") -> None:
        self.target = target
        self.adapter = adapter
        self.store = store
        self.log = log
        self.kind = kind
        self.failures = 0
        self.task: asyncio.Task | None = None
        self.polled_once = Once()
        # How late each recent poll started behind its schedule (seconds): the cadence others
        # keep while one device misbehaves, and the scheduler's headroom at fleet scale.
        self.lags = LagRing()
        self.first_spread = min(target.interval, FIRST_POLL_SPREAD)
        self.stopped = False
        self.entry = 0  # its live entry in the timetable (0: none)
        self.timetable: _Timetable | None = None
        self.task_name = f"target:{target.name}"

    def start(self, starting: int = 1) -> None:
        """Run in the background; `starting`: how many targets start along with this one."""
        self.first_spread = first_poll_spread(self.target, starting)
        if self.kind != "poll":
            self.task = asyncio.create_task(self._push_loop(), name=f"target:{self.target.name}")
            return
        self.timetable = _timetable()
        self._schedule(self.timetable.loop.time() + random.uniform(0, self.first_spread))

    def _schedule(self, due: float) -> None:
        if self.stopped:
            return
        loop = self.timetable.loop
        self.store.set_next_poll(self.target.name, time.time() + max(0.0, due - loop.time()))
        self.timetable.add(self, due)

    def launch(self, due: float) -> None:
        """The timetable's call: the poll that was due at `due` starts now."""
        if not self.stopped:
            self.task = self.timetable.loop.create_task(self._cycle(due), name=self.task_name)

    async def stop(self) -> None:
        self.stopped = True
        self.entry = 0
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await asyncio.wait_for(self.adapter.close(), timeout=2)
        except Exception as exc:  # closing a broken connection must not stop the others
            self.log.debug("close failed", error=str(exc))

    async def poll_once(self) -> Reading:
        """One bounded poll; the store is updated and the reading (or PollError) returned."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.target.timeout):
                reading = await self.adapter.poll()
        except PollError as exc:
            self._failed(exc.reason, exc.message, started)
            raise
        except TimeoutError:
            message = f"no complete answer within {self.target.timeout:g}s"
            self._failed("timeout", message, started)
            raise PollError("timeout", message) from None
        except ParseError as exc:
            self._failed("parse", str(exc), started)
            raise PollError("parse", str(exc)) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("poll crashed", error_type=exc.__class__.__name__)
            message = f"internal error: {exc.__class__.__name__}"
            self._failed("internal", message, started)
            raise PollError("internal", message) from None
        duration = time.monotonic() - started
        self.store.record_success(self.target.name, reading, duration)
        if self.failures:
            self.log.info("target recovered", after_failures=self.failures)
        self.failures = 0
        return reading

    def _failed(self, reason: str, message: str, started: float | None) -> None:
        self.failures += 1
        duration = None if started is None else time.monotonic() - started
        self.store.record_failure(self.target.name, reason, message, duration)
        # Log the first failure and then every 10th, so a dead device does not flood the log.
        if self.failures == 1 or self.failures % 10 == 0:
            self.log.warning("poll failed", reason=reason, error=message, consecutive=self.failures)

    async def _cycle(self, due: float) -> None:
        """One poll that was due at `due`, then the next one on the timetable."""
        target = self.target
        loop = self.timetable.loop
        self.lags.append(max(0.0, loop.time() - due))
        try:
            await self.poll_once()
        except PollError:
            pass
        finally:
            self.polled_once.set()
        now = loop.time()
        spread = target.jitter * target.interval / 2
        if self.failures:
            next_due = now + backoff_delay(target, self.failures) + random.uniform(0, spread)
        else:
            next_due = due + target.interval
            if next_due < now:  # a slow poll or a stalled loop: skip missed ticks
                next_due = now + random.uniform(0, spread)
            else:
                next_due += random.uniform(-spread, spread) / 2
        self._schedule(next_due)

    async def _push_loop(self) -> None:
        """Run a push adapter; it reconnects by itself. Silence longer than the target's
        interval x 3 (or stale_after) marks it down.

        `emit` takes a Reading (a good message) or a PollError: a push adapter cannot raise into
        this loop, so a malformed message or a refused connection is handed in like a reading
        and recorded as the target's failure with its reason."""
        def emit(item: Reading | PollError) -> None:
            if isinstance(item, PollError):
                self._failed(item.reason, item.message, None)
            else:
                self.store.record_success(self.target.name, item)
                self.failures = 0
            self.polled_once.set()

        runner = asyncio.create_task(self.adapter.run(emit))
        silence = self.target.stale_after
        try:
            while not runner.done():
                await asyncio.wait([runner], timeout=min(silence, 5.0))
                state = self.store.targets.get(self.target.name)
                if state is None:
                    continue
                last = state.last_success or 0.0
                if state.up and time.time() - last > silence:
                    self.store.record_failure(self.target.name, "stale", f"no message for {silence:g}s")
                    self.log.warning("push target silent", seconds=silence)
            if runner.exception() is not None:
                exc = runner.exception()
                self.store.record_failure(self.target.name, "internal", f"receiver stopped: {exc.__class__.__name__}")
                self.log.error("push receiver stopped", error=str(exc))
        finally:
            runner.cancel()
