"""Polling on each target's own schedule, in the background, never on scrape.

One task per target, so there is never more than one request in flight to a device (weak Wi-Fi
chips fall over with more). Polls keep to a fixed grid (interval, with a random phase and a
little jitter, so a fleet does not poll in lock-step); after a failure the delay grows
exponentially up to `max_backoff`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

from .config import TargetConfig
from .errors import PollError
from .samples import ParseError, Reading
from .store import SnapshotStore

# The first poll of a target waits a random part of its interval, at most this long.
FIRST_POLL_SPREAD = 10.0


# Consecutive failures retried at the normal interval before the delay starts to grow: a glitch
# (one dropped Wi-Fi packet, a reboot) then costs at most one interval after it clears, while a
# device that stays away is asked less and less often.
RETRIES_BEFORE_BACKOFF = 3


def backoff_delay(target: TargetConfig, failures: int) -> float:
    """Delay after the n-th consecutive failure: the interval for the first few, then 2x, 4x ...
    up to max_backoff."""
    growth = max(failures - RETRIES_BEFORE_BACKOFF, 0)
    return min(target.interval * (2 ** growth), max(target.max_backoff, target.interval))


class TargetRunner:
    def __init__(self, target: TargetConfig, adapter: Any, store: SnapshotStore, log: Any, kind: str = "poll") -> None:
        self.target = target
        self.adapter = adapter
        self.store = store
        self.log = log
        self.kind = kind
        self.failures = 0
        self.task: asyncio.Task | None = None
        self.polled_once = asyncio.Event()
        # How late each recent poll started behind its schedule (seconds): the cadence others
        # keep while one device misbehaves, and the scheduler's headroom at fleet scale.
        self.lags: deque[float] = deque(maxlen=1000)

    def start(self) -> None:
        body = self._poll_loop() if self.kind == "poll" else self._push_loop()
        self.task = asyncio.create_task(body, name=f"target:{self.target.name}")

    async def stop(self) -> None:
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

    async def _poll_loop(self) -> None:
        target = self.target
        loop = asyncio.get_running_loop()
        next_due = loop.time() + random.uniform(0, min(target.interval, FIRST_POLL_SPREAD))
        while True:
            self.store.set_next_poll(target.name, time.time() + max(0.0, next_due - loop.time()))
            await asyncio.sleep(max(0.0, next_due - loop.time()))
            self.lags.append(max(0.0, loop.time() - next_due))
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
                next_due += target.interval
                if next_due < now:  # a slow poll or a stalled loop: skip missed ticks
                    next_due = now + random.uniform(0, spread)
                else:
                    next_due += random.uniform(-spread, spread) / 2

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
