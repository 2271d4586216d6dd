"""Polling on each target's own schedule, in the background, never on scrape.

A target's polls run one after the other, so there is never more than one request in flight to
a device (weak Wi-Fi chips fall over with more). Polls keep to a fixed grid (interval, with a
random phase and a little jitter, so a fleet does not poll in lock-step); after a failure the
delay grows exponentially up to `max_backoff` (`exporter.runtime.backoff`'s poll policy).

Waiting targets cost no task: one timetable per event loop holds every target's next due time
and starts each poll as a short task of its own. (A sleeping task per target costs a coroutine,
a future and a timer each, 1.5 kB and steady work for the garbage collector at 10,000 targets.)
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import time
import traceback
import weakref
from array import array
from typing import Any

from ..config.loader import TargetConfig
from ..model.errors import PollError, safe_message
from ..model.samples import ParseError, Reading
from ..store import DEFAULT_MAX_POWER, Notice, SnapshotStore
from .backoff import Backoff, poll_spread
from .tasks import cancel_and_wait

# The first poll of a target waits a random part of its interval, at most this long.
FIRST_POLL_SPREAD = 10.0
# ... unless many targets start at once: a first poll opens a connection and identifies the
# device (two or three times the work of a poll), so a fleet's first polls are spread to start
# about this many per second.
FIRST_POLLS_PER_SECOND = 250.0


def first_poll_spread(target: TargetConfig, starting: int) -> float:
    """Seconds over which the first polls of `starting` targets started together are spread."""
    return max(min(target.interval, FIRST_POLL_SPREAD), starting / FIRST_POLLS_PER_SECOND)


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


# A failure of the same reason is logged at most once per this many seconds (with how many
# were left out since); a dead device otherwise writes a line per poll for days.
REPEAT_LOG_SECONDS = 300.0
# A refused value of a series (metric and reason) is logged at most once per this many seconds.
NOTICE_LOG_SECONDS = 3600.0


class LogThrottle:
    """Which of one target's repeated log lines to write: the first of a kind, then at most one
    per `every` seconds, which says how many were left out. Bounded: the kinds come from a
    device's answers."""

    __slots__ = ("_kinds",)
    KINDS = 64

    def __init__(self) -> None:
        self._kinds: dict[Any, list] = {}  # kind -> [when last written, left out since]

    def allow(self, kind: Any, every: float, now: float | None = None) -> int | None:
        """None: leave this line out; else write it, noting the number left out before it."""
        now = time.monotonic() if now is None else now
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= self.KINDS:
                del self._kinds[next(iter(self._kinds))]  # the kind seen first goes
            self._kinds[kind] = [now, 0]
            return 0
        if now - entry[0] >= every:
            left_out, entry[0], entry[1] = entry[1], now, 0
            return left_out
        entry[1] += 1
        return None


def as_poll_error(exc: BaseException, timeout: float) -> PollError:
    """The failure an exception in a poll's path stands for. Errors that come from what a device
    sent (nesting too deep for the parser, text that is not valid, JSON that is not) are
    `parse`; anything unforeseen is `internal`."""
    if isinstance(exc, PollError):
        return exc
    if isinstance(exc, TimeoutError):
        return PollError("timeout", f"no complete answer within {timeout:g}s")
    if isinstance(exc, ParseError):
        return PollError("parse", str(exc))
    if isinstance(exc, RecursionError):
        return PollError("parse", "the answer is nested too deeply")
    if isinstance(exc, UnicodeError):
        return PollError("parse", "the answer holds text that is not valid Unicode")
    if isinstance(exc, json.JSONDecodeError):
        return PollError("parse", f"the answer is not JSON ({exc.msg})")
    return PollError("internal", f"internal error: {exc.__class__.__name__}")


def _origin(exc: BaseException) -> tuple[str, str, int]:
    """(exception type, file, line) where it was raised: one traceback in the log per origin."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return exc.__class__.__name__, "", 0
    return exc.__class__.__name__, frames[-1].filename, frames[-1].lineno or 0


class TargetRunner:
    __slots__ = ("target", "adapter", "store", "log", "delivery", "failures", "task", "polled_once", "lags",
                 "first_spread", "stopped", "entry", "timetable", "task_name", "throttle")

    def __init__(self, target: TargetConfig, adapter: Any, store: SnapshotStore, log: Any,
                 delivery: str = "poll") -> None:
        self.target = target
        self.adapter = adapter
        self.store = store
        self.log = log
        self.delivery = delivery  # "poll" or "push" (TransportSpec.delivery)
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
        self.throttle: LogThrottle | None = None  # made when the target first has something to log

    def start(self, starting: int = 1) -> None:
        """Run in the background; `starting`: how many targets start along with this one."""
        self.first_spread = first_poll_spread(self.target, starting)
        self.store.set_max_power(self.target.name, float(self.target.option("max_power", DEFAULT_MAX_POWER)))
        if self.delivery != "poll":
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
        await cancel_and_wait(self.task)
        try:
            await asyncio.wait_for(self.adapter.close(), timeout=2)
        except Exception as exc:  # closing a broken connection must not stop the others
            self.log.debug("close failed", error=str(exc))

    async def poll_once(self) -> Reading:
        """One bounded poll; the store is updated and the reading (or PollError) returned. Any
        exception on the way (the device's answer, parsing it, rendering it) ends the poll as a
        failure with a reason."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.target.timeout):
                reading = await self.adapter.poll()
            notices = self.store.record_success(self.target.name, reading, time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = self._error(exc)
            self._failed(error.reason, error.message, started)
            if error is exc:
                raise
            raise error from None
        if notices:
            self._log_notices(notices)
        self._succeeded()
        return reading

    def _error(self, exc: Exception) -> PollError:
        """The PollError of an exception; an internal one logs its traceback once per origin."""
        error = as_poll_error(exc, self.target.timeout)
        if error.reason == "internal" and not isinstance(exc, PollError):
            if self._throttle().allow(("traceback", *_origin(exc)), float("inf")) is not None:
                self.log.error("poll crashed", error_type=exc.__class__.__name__, exc_info=exc)
        return error

    def _throttle(self) -> LogThrottle:
        if self.throttle is None:
            self.throttle = LogThrottle()
        return self.throttle

    def _succeeded(self) -> None:
        if self.failures:
            if self._throttle().allow("recovered", REPEAT_LOG_SECONDS) is not None:
                self.log.info("target recovered", after_failures=self.failures)
        self.failures = 0

    def _failed(self, reason: str, message: str, started: float | None) -> None:
        self.failures += 1
        duration = None if started is None else time.monotonic() - started
        self.store.record_failure(self.target.name, reason, message, duration)
        # The first failure of a reason, then at most one line per REPEAT_LOG_SECONDS: a dead
        # or hostile device does not flood the log.
        left_out = self._throttle().allow(("failed", reason), REPEAT_LOG_SECONDS)
        if left_out is not None:
            fields = {"repeated": left_out} if left_out else {}
            self.log.warning("poll failed", reason=reason, error=safe_message(message),
                             consecutive=self.failures, **fields)

    def _log_notices(self, notices: list[Notice]) -> None:
        """Values a reading lost: per metric and reason one line (naming its first series) per
        NOTICE_LOG_SECONDS, however many series a device makes up."""
        throttle = self._throttle()
        for notice in notices:
            left_out = throttle.allow(("notice", notice.reason, notice.metric), NOTICE_LOG_SECONDS)
            if left_out is None:
                continue
            if notice.reason == "forgotten":
                self.log.warning("counters gone from the answers forgotten (too many series came and went)",
                                 forgotten=notice.value)
                continue
            labels = safe_message(",".join(f"{k}={v}" for k, v in notice.labels)[:200])
            self.log.warning("value refused", reason=notice.reason, metric=notice.metric, labels=labels,
                             value=repr(notice.value)[:40], **({"repeated": left_out} if left_out else {}))

    async def _cycle(self, due: float) -> None:
        """One poll that was due at `due`, then the next one on the timetable."""
        target = self.target
        loop = self.timetable.loop
        self.lags.append(max(0.0, loop.time() - due))
        try:
            await self.poll_once()
        except PollError:
            pass
        except Exception as exc:  # recording the failure failed too: the next poll still comes
            self._last_resort(exc)
        finally:
            self.polled_once.set()
        now = loop.time()
        if self.failures:
            next_due = now + Backoff.for_polls(target).delay(self.failures)
        else:
            spread = poll_spread(target)
            next_due = due + target.interval
            if next_due < now:  # a slow poll or a stalled loop: skip missed ticks
                next_due = now + random.uniform(0, spread)
            else:
                next_due += random.uniform(-spread, spread) / 2
        self._schedule(next_due)

    def _last_resort(self, exc: Exception) -> None:
        """An exception while recording a poll's outcome: logged (a traceback once per origin),
        never raised into the schedule or a receiver."""
        if self._throttle().allow(("traceback", *_origin(exc)), float("inf")) is not None:
            self.log.error("recording a poll failed", error_type=exc.__class__.__name__, exc_info=exc)

    async def _push_loop(self) -> None:
        """Run a push adapter; it reconnects by itself. Silence longer than the target's
        interval x 3 (or stale_after) marks it down.

        `emit` takes a Reading (a good message) or a PollError: a push adapter cannot raise into
        this loop, so a malformed message or a refused connection is handed in like a reading
        and recorded as the target's failure with its reason."""
        def emit(item: Reading | PollError) -> None:
            try:
                if isinstance(item, PollError):
                    self._failed(item.reason, item.message, None)
                else:
                    try:
                        notices = self.store.record_success(self.target.name, item)
                    except Exception as exc:  # a message that cannot be taken fails, the receiver goes on
                        error = self._error(exc)
                        self._failed(error.reason, error.message, None)
                    else:
                        if notices:
                            self._log_notices(notices)
                        self._succeeded()
            except Exception as exc:
                self._last_resort(exc)
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
