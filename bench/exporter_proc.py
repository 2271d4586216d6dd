"""The exporter daemon as `serve()` runs it, plus a small side server that reports what the
benchmark measures from inside: polls done, how late they started behind their schedule, the
push readings taken in.

Prints `READY <metrics port> <stats port>` once the daemon listens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time

from aiohttp import web

from exporter.config.loader import load_config
from exporter.daemon import Daemon
from exporter.vendors import registry

from .common import serve_control


class Stats:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.marked: dict[str, int] = {}
        self.marked_at = time.monotonic()
        # garbage collector pauses: generation -> [collections, seconds, longest]
        self.gc: dict[int, list] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        self._gc_started = 0.0
        gc.callbacks.append(self._gc_callback)

    def _gc_callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        entry = self.gc[info["generation"]]
        pause = time.perf_counter() - self._gc_started
        entry[0] += 1
        entry[1] += pause
        entry[2] = max(entry[2], pause)

    def polls(self) -> dict[str, int]:
        return {name: state.polls for name, state in self.daemon.store.targets.items()}

    async def mark(self, request: web.Request) -> web.Response:
        self.marked = self.polls()
        self.marked_at = time.monotonic()
        for entry in self.gc.values():
            entry[:] = [0, 0.0, 0.0]
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        now = self.polls()
        lags: list[float] = []
        polls = 0
        for name, runner in self.daemon.runners.items():
            new = now.get(name, 0) - self.marked.get(name, 0)
            polls += new
            if new > 0:
                lags.extend(list(runner.lags)[-new:])
        lags.sort()

        def q(p: float) -> float | None:
            return lags[min(len(lags) - 1, int(p / 100 * len(lags)))] if lags else None

        errors: dict[str, int] = {}
        up = 0
        for state in self.daemon.store.targets.values():
            up += state.up
            for reason, count in state.errors.items():
                errors[reason] = errors.get(reason, 0) + count
        received = sum(getattr(getattr(r.adapter, "account", None), "received", 0) for r in self.daemon.runners.values())
        return web.json_response({
            "seconds": time.monotonic() - self.marked_at, "polls": polls, "targets": len(now), "up": up,
            "errors": errors, "lag_p50": q(50), "lag_p99": q(99), "lag_max": lags[-1] if lags else None,
            "lags": len(lags), "readings_received": received, "gc": self.gc,
        })


async def run(config_path: str) -> None:
    config = load_config(config_path, vendors=registry)
    daemon = Daemon(config)
    port = await daemon.start("127.0.0.1", 0)
    stats = Stats(daemon)
    runner = await serve_control(
        [web.post("/mark", stats.mark), web.get("/stats", stats.stats)], f"{port} {{port}}"
    )
    await asyncio.wait_for(daemon.stop(), 10)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--cpu", type=int, help="pin to this CPU")
    parser.add_argument("--log-level", default="warn")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    from exporter.runtime import logs

    logs.setup(args.log_level, "logfmt")
    asyncio.run(run(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
