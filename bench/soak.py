"""`make soak`: many simulated meters, a tenth of them failing at random, for minutes; do the
exporter's memory, open file descriptors and asyncio tasks stay flat?

The meters are `bench.fleet`'s (one light process, one loopback address per meter), with a
fault layer on top: every `--switch` seconds a fresh random 10 % of the meters misbehave, each in
one of the ways a field device does (HTTP 500/503, an HTML error page, truncated JSON, a hang
past the timeout, a closed connection). The exporter runs as a real process (`python -m
exporter`); every 10 s this script samples its RSS (/proc/PID/status), its open descriptors
(/proc/PID/fd) and `energy_meter_exporter_asyncio_tasks` from /metrics, then fits a least-squares
slope per minute to each series (the first minute is warm-up and left out of the fit) and writes
the table to `bench/SOAK.md`, with the slope of each half of the run apart (a plateau shows as a
second half flatter than the first).

`--inspect` ends the run with a full garbage collection inside the exporter and reports what it
found unreachable, by type, and the resident memory before and after: with 500 targets or more
the exporter runs full collections only every 10 minutes, so garbage in reference cycles builds
up between them; what such a collection frees is not a leak. `--tracemalloc FRAMES` also runs
the exporter with Python's allocation tracing on: a snapshot at `--trace-from` seconds, one at
the end and one after that collection; the report lists the allocation sites that grew between
the first two and those still grown after the collection (live data). Tracing makes the
exporter slower and bigger, so its figures are not the plain run's.

    python -m bench.soak --targets 1000 --minutes 10
    python -m bench.soak --minutes 20 --inspect --output /tmp/soak-20.md
    python -m bench.soak --minutes 9.5 --tracemalloc 4 --output /tmp/soak-trace.md
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
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

from .common import ROOT, Child, cpu_seconds, free_port, python_child, rss_mb
from .fleet import Fleet, address, hosts

FAULTS = ("status:500", "status:503", "html", "truncated", "hang", "close")
SAMPLE_EVERY = 10.0
WARM_UP = 60.0
TRACE_DIR_ENV = "SOAK_TRACE_DIR"
TRACE_FRAMES_ENV = "SOAK_TRACE_FRAMES"
TOP_SITES = 12
DEFAULT_COMMAND = "python -m bench.soak --targets 1000 --minutes 10 --inspect"  # what `make soak` runs


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


def inspected_exporter(argv: list[str]) -> int:
    """The exporter, open to inspection by signals. SIGUSR1: an allocation snapshot (tracemalloc
    is on when SOAK_TRACE_FRAMES > 0). SIGUSR2: a full garbage collection that first keeps what
    it finds (gc.DEBUG_SAVEALL) to count it by type, then frees it; and a snapshot. Each answer
    ends with a JSON file, which the driver waits for."""
    import tracemalloc

    from exporter.cli import main as exporter_main

    directory = Path(os.environ[TRACE_DIR_ENV])
    frames = int(os.environ.get(TRACE_FRAMES_ENV, "0"))
    if frames:
        tracemalloc.start(frames)
    answered = 0

    def answer(signum: int, _frame: object) -> None:
        nonlocal answered
        info: dict = {"rss_mb": rss_mb(os.getpid())[0], "objects": len(gc.get_objects())}
        if signum == signal.SIGUSR2:
            info.update(collect_and_count())
            info["rss_after_mb"] = rss_mb(os.getpid())[0]
            info["objects_after"] = len(gc.get_objects())
        if frames:
            path = directory / f"snapshot-{answered}.trace"
            tracemalloc.take_snapshot().dump(str(path))
            info.update(path=str(path), traced_mb=tracemalloc.get_traced_memory()[0] / 1e6)
        (directory / f"answer-{answered}.json").write_text(json.dumps(info))  # last: the driver waits for it
        answered += 1

    signal.signal(signal.SIGUSR1, answer)
    signal.signal(signal.SIGUSR2, answer)
    return exporter_main(argv)


def collect_and_count(top: int = TOP_SITES) -> dict:
    """A full collection; what it found unreachable, by type (count, shallow bytes)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
    finally:
        gc.set_debug(0)
    counts: dict[str, list[int]] = {}
    for obj in gc.garbage:
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
        entry = counts.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    total = sum(size for _, size in counts.values())
    gc.garbage.clear()
    gc.collect()  # now free them
    ranked = sorted(counts.items(), key=lambda item: -item[1][1])[:top]
    return {"collected": found, "garbage_mb": total / 1e6,
            "census": [{"type": name, "count": n, "kb": size / 1e3} for name, (n, size) in ranked]}


def ask(pid: int, directory: Path, index: int, collect: bool, timeout: float = 300.0) -> dict:
    """Signal the inspected exporter; its answer `index` once written."""
    os.kill(pid, signal.SIGUSR2 if collect else signal.SIGUSR1)
    done = directory / f"answer-{index}.json"
    deadline = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the exporter gave no answer {index} within {timeout:g}s")
        time.sleep(0.5)
    time.sleep(0.2)
    return json.loads(done.read_text())


def growing_sites(first: str, second: str, limit: int = TOP_SITES) -> list[dict]:
    """The allocation sites (file:line of the allocating frame) that grew most from one
    snapshot to the other, with the frames leading to it of the biggest traceback."""
    import tracemalloc

    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    old = tracemalloc.Snapshot.load(first).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(second).filter_traces(ignore)
    by_line = new.compare_to(old, "lineno")
    by_trace = new.compare_to(old, "traceback")
    out = []
    for stat in by_line[:limit]:
        frame = stat.traceback[-1]  # tracebacks run from the oldest frame to the allocating one
        where = f"{_short(frame.filename)}:{frame.lineno}"
        path = next((s.traceback for s in by_trace if s.traceback[-1] == frame), stat.traceback)
        out.append({"site": where, "size_diff_kb": stat.size_diff / 1e3, "size_kb": stat.size / 1e3,
                    "count_diff": stat.count_diff,
                    "path": " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in list(path)[::-1][:6])})
    return out


def total_growth(first: str, second: str) -> float:
    """MB of traced memory gained from one snapshot to the other."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(first), tracemalloc.Snapshot.load(second)
    return sum(s.size_diff for s in new.compare_to(old, "filename")) / 1e6


def _short(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", filename).replace(str(ROOT) + "/", "")


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


def command_line(args: argparse.Namespace) -> str:
    """How this run was started, as a user would type it."""
    words = ["python -m bench.soak", f"--targets {args.targets}", f"--minutes {args.minutes:g}"]
    if args.share != 0.10:
        words.append(f"--share {args.share:g}")
    if args.inspect and not args.tracemalloc:
        words.append("--inspect")
    if args.tracemalloc:
        words += [f"--tracemalloc {args.tracemalloc}", f"--trace-from {args.trace_from:g}"]
    return " ".join(words)


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
    trace_dir = workdir / "trace"
    inspect = args.inspect or args.tracemalloc > 0
    answers: list[dict] = []
    stalls: list[dict] = []
    try:
        config = workdir / "soak.yaml"
        write_config(config, hosts(0, args.targets, port), args.interval, workdir / "state")
        metrics_port = free_port()
        exporter_args = ["--config.file", str(config), "--web.listen-address", f"127.0.0.1:{metrics_port}",
                         "--log.level", "warn"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if inspect:
            trace_dir.mkdir()
            env.update({TRACE_DIR_ENV: str(trace_dir), TRACE_FRAMES_ENV: str(args.tracemalloc)})
            argv = [sys.executable, "-m", "bench.soak", "--inspected-exporter", "--", *exporter_args]
        else:
            argv = [sys.executable, "-m", "exporter", *exporter_args]
        exporter = Child(argv, name="exporter", log=workdir / "exporter.log")
        # `python -m exporter` prints no READY line: start it and wait for /metrics instead
        import subprocess

        exporter._log = open(exporter.log, "w")
        exporter.proc = subprocess.Popen(exporter.argv, cwd=ROOT, stdout=exporter._log, stderr=subprocess.STDOUT,
                                         env=env)
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
            if args.tracemalloc and not answers and time.monotonic() - started >= args.trace_from:
                answers.append({"t": time.monotonic() - started, **ask(exporter.pid, trace_dir, 0, collect=False)})
            if exporter.proc.poll() is not None:
                raise RuntimeError(f"the exporter died: {exporter.log.read_text()[-2000:]}")
            asked = time.monotonic()
            try:
                tasks, up, down = scrape(metrics_port)
            except OSError as exc:  # no answer within 30 s: say so, and go on watching
                tasks, up, down = None, None, None
                stalls.append({"t": asked - started, "error": f"{exc.__class__.__name__}: {exc}"[:120]})
            rss, _ = rss_mb(exporter.pid)
            sample = {"t": time.monotonic() - started, "rss_mb": rss, "fds": open_fds(exporter.pid),
                      "tasks": tasks, "up": up, "down": down, "scrape_s": time.monotonic() - asked,
                      "cpu_s": cpu_seconds(exporter.pid)}
            samples.append(sample)
            print(f"{sample['t']:6.0f}s rss {rss:6.1f} MB  fds {sample['fds']:5d}  tasks {tasks}  up {up} down {down}"
                  f"  scrape {sample['scrape_s']:.2f}s  cpu {sample['cpu_s']:.0f}s", flush=True)
            time.sleep(max(0.0, next_at - time.monotonic()))
        alive = exporter.proc.poll() is None
        if inspect and alive:
            if args.tracemalloc:
                answers.append({"t": time.monotonic() - started,
                                **ask(exporter.pid, trace_dir, len(answers), collect=False)})
            answers.append({"t": time.monotonic() - started, **ask(exporter.pid, trace_dir, len(answers), collect=True)})
    finally:
        if exporter is not None:
            exporter.stop()
        fleet.stop()
    steady = [s for s in samples if s["t"] >= WARM_UP] or samples
    result = {"stalls": stalls, "command": command_line(args), "targets": args.targets, "minutes": args.minutes,
              "interval": args.interval, "share": args.share,
              "switch": args.switch, "samples": samples, "alive": alive, "workdir": str(workdir)}
    middle = (steady[0]["t"] + steady[-1]["t"]) / 2 if steady else 0.0
    for key in ("rss_mb", "fds", "tasks"):
        points = [(s["t"], float(s[key])) for s in steady if s[key] is not None]
        values = [v for _, v in points]
        result[key] = {"first": values[0] if values else None, "last": values[-1] if values else None,
                       "min": min(values) if values else None, "max": max(values) if values else None,
                       "slope": slope_per_minute(points),
                       "slope_first_half": slope_per_minute([p for p in points if p[0] <= middle]),
                       "slope_second_half": slope_per_minute([p for p in points if p[0] >= middle])}
    if answers:
        result["collection"] = answers[-1]
    if args.tracemalloc and len(answers) == 3:
        first, last, collected = (a["path"] for a in answers)
        result["trace"] = {"frames": args.tracemalloc, "snapshots": answers,
                           "growth_mb": total_growth(first, last), "kept_mb": total_growth(first, collected),
                           "growing": growing_sites(first, last), "kept": growing_sites(first, collected)}
    return result


def report(result: dict) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    downs = [s["down"] for s in result["samples"] if s["t"] >= WARM_UP and s["down"] is not None] or [
        s["down"] for s in result["samples"] if s["down"] is not None]
    command = result["command"]
    started_by = f"`make soak` (`{command}`)" if command == DEFAULT_COMMAND else f"`{command}`"
    lines = [
        "# Soak run",
        "",
        f"{started_by}, "
        f"{date}: {result['targets']} simulated HomeWizard P1 meters polled every {result['interval']:g} s, "
        f"{result['share']:.0%} of them failing at random (a new random set every {result['switch']:g} s; "
        f"faults: {', '.join(FAULTS)}), for {result['minutes']:g} minutes. Samples every {SAMPLE_EVERY:g} s; "
        f"slopes are least-squares fits after the first {WARM_UP:g} s of warm-up.",
        "",
        "| series | after warm-up | at the end | min | max | slope per minute | first half | second half |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"rss_mb": "resident memory (MB)", "fds": "open file descriptors", "tasks": "asyncio tasks"}
    for key, label in names.items():
        r = result[key]
        if r["first"] is None:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        lines.append(f"| {label} | {r['first']:.1f} | {r['last']:.1f} | {r['min']:.1f} | {r['max']:.1f} | "
                     f"{r['slope']:+.3f} | {r['slope_first_half']:+.3f} | {r['slope_second_half']:+.3f} |")
    lines += [
        "",
        f"Targets down per sample after warm-up: {min(downs) if downs else 0} to {max(downs) if downs else 0} "
        f"(the failing share, as expected). The exporter {'stayed up' if result['alive'] else 'DIED'} "
        "for the whole run.",
        "",
    ]
    scrapes = sorted(s["scrape_s"] for s in result["samples"])
    if scrapes:
        lines += [f"Scrapes of /metrics by this script: median {scrapes[len(scrapes) // 2]:.2f} s, slowest "
                  f"{scrapes[-1]:.2f} s; {len(result['stalls'])} without an answer within 30 s"
                  + ("" if not result["stalls"] else " (at " + ", ".join(f"{s['t']:.0f} s" for s in result["stalls"])
                     + ")") + ".", ""]
    collection = result.get("collection")
    if collection:
        lines += [
            f"At the end ({collection['t']:.0f} s), a full garbage collection found {collection['collected']} "
            f"unreachable objects ({collection['garbage_mb']:.1f} MB, shallow sizes) of "
            f"{collection['objects']} tracked; resident memory {collection['rss_mb']:.1f} MB before it, "
            f"{collection['rss_after_mb']:.1f} MB after. What it found, by type:",
            "",
            "| type | objects | kB |",
            "|---|---:|---:|",
            *(f"| `{c['type']}` | {c['count']} | {c['kb']:.0f} |" for c in collection["census"]),
            "",
        ]
    trace = result.get("trace")
    if trace:
        first, last, collected = trace["snapshots"]
        lines += [
            f"Allocation tracing (tracemalloc, {trace['frames']} frames): snapshots at {first['t']:.0f} s and "
            f"{last['t']:.0f} s, then after that collection. Traced Python memory "
            f"{first['traced_mb']:.1f} -> {last['traced_mb']:.1f} MB ({trace['growth_mb']:+.2f} MB), after the "
            f"collection {collected['traced_mb']:.1f} MB ({trace['kept_mb']:+.2f} MB since the first snapshot).",
            "",
            "Sites that grew most between the first two snapshots:",
            "",
            "| allocation site | growth (kB) | blocks | path (innermost first) |",
            "|---|---:|---:|---|",
            *(f"| `{g['site']}` | {g['size_diff_kb']:+.0f} | {g['count_diff']:+d} | {g['path']} |" for g in trace["growing"]),
            "",
            "The same after the forced collection (what stays is live data):",
            "",
            "| allocation site | growth (kB) | blocks | path (innermost first) |",
            "|---|---:|---:|---|",
            *(f"| `{g['site']}` | {g['size_diff_kb']:+.0f} | {g['count_diff']:+d} | {g['path']} |" for g in trace["kept"]),
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
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace the exporter's allocations (frames per traceback; 0: off)")
    parser.add_argument("--trace-from", type=float, default=120.0,
                        help="seconds into the run of the first allocation snapshot")
    parser.add_argument("--inspect", action="store_true",
                        help="at the end, a full garbage collection in the exporter: what it frees, by type")
    parser.add_argument("--inspected-exporter", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("exporter_args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--fleet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inspected_exporter:
        return inspected_exporter(args.exporter_args)
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
