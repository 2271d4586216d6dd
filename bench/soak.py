"""`make soak`: many simulated meters, a tenth of them failing at random, for minutes; do the
exporter's memory, open file descriptors and asyncio tasks stay flat?

The meters are `bench.fleet`'s (one light process, one loopback address per meter), with a
fault layer on top: every `--switch` seconds a fresh random 10 % of the meters misbehave, each in
one of the ways a field device does (HTTP 500/503, an HTML error page, truncated JSON, a hang
past the timeout, a closed connection). The exporter runs as a real process (`python -m
exporter`); every 10 s this script samples its RSS (/proc/PID/status), its open descriptors
(/proc/PID/fd) and `energy_meter_exporter_asyncio_tasks` from /metrics, then fits a least-squares
slope per minute to each series (the first minute is warm-up and left out of the fit) and writes
the table to `bench/SOAK.md`.

    python -m bench.soak --targets 1000 --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

from .common import ROOT, Child, free_port, python_child, rss_mb
from .fleet import Fleet, address, hosts

FAULTS = ("status:500", "status:503", "html", "truncated", "hang", "close")
SAMPLE_EVERY = 10.0
WARM_UP = 60.0


class FaultyFleet(Fleet):
    """`bench.fleet.Fleet` whose meters fail at random, a new random share every `switch` s."""

    def __init__(self, first: int, count: int, port: int, share: float, switch: float, seed: int) -> None:
        super().__init__(first, count, port)
        self.share = share
        self.switch = switch
        self.rng = random.Random(seed)
        self.failing: dict[str, str] = {}
        self.faults_served = 0

    def reshuffle(self) -> None:
        chosen = self.rng.sample(sorted(self.meters), int(len(self.meters) * self.share))
        self.failing = {host: self.rng.choice(FAULTS) for host in chosen}

    async def rotate(self) -> None:
        while True:
            self.reshuffle()
            await asyncio.sleep(self.switch)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        fault = self.failing.get(sockname[0]) if sockname else None
        if fault is None or request.path != "/api/v1/data":
            return await super().handle(request)
        self.faults_served += 1
        if fault.startswith("status:"):
            return web.Response(status=int(fault[7:]), text="Internal Server Error")
        if fault == "html":
            return web.Response(text="<html><body><h1>Error</h1></body></html>", content_type="text/html")
        if fault == "truncated":
            return web.Response(body=b'{"wifi_ssid": "x", "active_power_w": 12', content_type="application/json")
        if fault == "hang":
            await asyncio.sleep(30)  # past the exporter's timeout: it gives up first
            return web.Response(status=504)
        # close: drop the connection without an answer
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)


async def fleet_main(count: int, port: int, share: float, switch: float, seed: int) -> None:
    fleet = FaultyFleet(0, count, port, share, switch, seed)
    await fleet.start()
    rotator = asyncio.create_task(fleet.rotate())
    print(f"READY {port} {address(0)}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    rotator.cancel()
    for server in fleet.servers:
        server.close()


def write_config(path: Path, targets: list[str], interval: float, state: Path) -> None:
    lines = [f"state_directory: {state}", "defaults:", f"  interval: {interval:g}s", "  timeout: 3s", "targets:"]
    lines += [f"  - {{name: p1-{i:05d}, vendor: homewizard, host: \"{host}\"}}" for i, host in enumerate(targets)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)


TASKS = re.compile(r"^energy_meter_exporter_asyncio_tasks(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)
UP = re.compile(r"^energy_meter_exporter_target_up\{[^}]*\} ([01])", re.M)


def scrape(port: int) -> tuple[float | None, int, int]:
    """(asyncio tasks, targets up, targets down) from the exporter's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    tasks = TASKS.search(text)
    ups = UP.findall(text)
    return (float(tasks.group(1)) if tasks else None), ups.count("1"), ups.count("0")


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 60 if sxx else float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    port = free_port(address(0))
    fleet = python_child("bench.soak", "--fleet", "--targets", str(args.targets), "--port", str(port),
                         "--share", str(args.share), "--switch", str(args.switch), "--seed", str(args.seed),
                         name="fleet", log=workdir / "fleet.log").start()
    exporter: Child | None = None
    samples: list[dict] = []
    try:
        config = workdir / "soak.yaml"
        write_config(config, hosts(0, args.targets, port), args.interval, workdir / "state")
        metrics_port = free_port()
        exporter = Child([sys.executable, "-m", "exporter", "--config.file", str(config),
                          "--web.listen-address", f"127.0.0.1:{metrics_port}", "--log.level", "warn"],
                         name="exporter", log=workdir / "exporter.log")
        # `python -m exporter` prints no READY line: start it and wait for /metrics instead
        import subprocess

        exporter._log = open(exporter.log, "w")
        exporter.proc = subprocess.Popen(exporter.argv, cwd=ROOT, stdout=exporter._log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 120
        while True:
            try:
                scrape(metrics_port)
                break
            except OSError:
                if time.monotonic() > deadline or exporter.proc.poll() is not None:
                    raise RuntimeError(f"the exporter did not start: {exporter.log.read_text()[-2000:]}")
                time.sleep(0.5)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_at = started
        while time.monotonic() < end:
            next_at += SAMPLE_EVERY
            if exporter.proc.poll() is not None:
                raise RuntimeError(f"the exporter died: {exporter.log.read_text()[-2000:]}")
            tasks, up, down = scrape(metrics_port)
            rss, _ = rss_mb(exporter.pid)
            sample = {"t": time.monotonic() - started, "rss_mb": rss, "fds": open_fds(exporter.pid),
                      "tasks": tasks, "up": up, "down": down}
            samples.append(sample)
            print(f"{sample['t']:6.0f}s rss {rss:6.1f} MB  fds {sample['fds']:5d}  tasks {tasks}  up {up} down {down}",
                  flush=True)
            time.sleep(max(0.0, next_at - time.monotonic()))
        alive = exporter.proc.poll() is None
    finally:
        if exporter is not None:
            exporter.stop()
        fleet.stop()
    steady = [s for s in samples if s["t"] >= WARM_UP] or samples
    result = {"targets": args.targets, "minutes": args.minutes, "interval": args.interval, "share": args.share,
              "switch": args.switch, "samples": samples, "alive": alive, "workdir": str(workdir)}
    for key in ("rss_mb", "fds", "tasks"):
        points = [(s["t"], float(s[key])) for s in steady if s[key] is not None]
        values = [v for _, v in points]
        result[key] = {"first": values[0] if values else None, "last": values[-1] if values else None,
                       "min": min(values) if values else None, "max": max(values) if values else None,
                       "slope": slope_per_minute(points)}
    return result


def report(result: dict) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    downs = [s["down"] for s in result["samples"] if s["t"] >= WARM_UP] or [s["down"] for s in result["samples"]]
    lines = [
        "# Soak run",
        "",
        f"`make soak` (`python -m bench.soak --targets {result['targets']} --minutes {result['minutes']:g}`), "
        f"{date}: {result['targets']} simulated HomeWizard P1 meters polled every {result['interval']:g} s, "
        f"{result['share']:.0%} of them failing at random (a new random set every {result['switch']:g} s; "
        f"faults: {', '.join(FAULTS)}), for {result['minutes']:g} minutes. Samples every {SAMPLE_EVERY:g} s; "
        f"slopes are least-squares fits after the first {WARM_UP:g} s of warm-up.",
        "",
        "| series | after warm-up | at the end | min | max | slope per minute |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"rss_mb": "resident memory (MB)", "fds": "open file descriptors", "tasks": "asyncio tasks"}
    for key, label in names.items():
        r = result[key]
        if r["first"] is None:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a | n/a |")
            continue
        lines.append(f"| {label} | {r['first']:.1f} | {r['last']:.1f} | {r['min']:.1f} | {r['max']:.1f} | "
                     f"{r['slope']:+.3f} |")
    lines += [
        "",
        f"Targets down per sample after warm-up: {min(downs) if downs else 0} to {max(downs) if downs else 0} "
        f"(the failing share, as expected). The exporter {'stayed up' if result['alive'] else 'DIED'} "
        "for the whole run.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval of every target (s)")
    parser.add_argument("--share", type=float, default=0.10, help="share of the meters failing at any time")
    parser.add_argument("--switch", type=float, default=30.0, help="seconds between fault reshuffles")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "bench" / "SOAK.md"))
    parser.add_argument("--fleet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fleet:
        asyncio.run(fleet_main(args.targets, args.port, args.share, args.switch, args.seed))
        return 0
    result = run(args)
    text = report(result)
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    return 0 if result["alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
