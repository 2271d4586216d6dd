"""`make bench`: the exporter at fleet scale, side by side with its peers, in one run.

1. /metrics latency (median and p99, plain and gzip) with 100, 1,000 and 10,000 P1 meters,
   against stock prometheus_client (a custom collector) and a real Prometheus Pushgateway
   holding the same series.
2. Poll throughput: the exporter (pinned to one CPU) polling simulated HomeWizard P1 meters
   over real HTTP (simulators in other processes, on the other CPU); the lag of polls behind
   their schedule.
3. Push ingest: IOmeter Partner API subscription readings through the real WebSocket path.
4. Memory: the exporter's resident memory with 10,000 targets configured and polled.
5. Concurrency: four scrapers at one-second intervals while polling at full rate.

Prints a table and writes bench/RESULTS.md with the machine and the command. Figures only:
nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .common import (
    ROOT,
    Child,
    Timings,
    cpu_seconds,
    cpus,
    curl_time,
    free_port,
    machine,
    python_child,
    rss_mb,
)

RESULTS = ROOT / "bench" / "RESULTS.md"
PUSH_SLICES = 5
DEVICES_PER_FLEET_PROCESS = 2500  # listening sockets + connections stay well under `ulimit -n`
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def http_json(url: str, method: str = "GET", timeout: float = 600) -> dict:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


# --- 1. /metrics latency -------------------------------------------------------------------------


def series_in(url: str) -> int:
    """Sample lines of the energy_meter_ families in a (gzip) scrape: the contenders hold the same."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=600) as resp:
        body = resp.read()
        if resp.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return sum(1 for line in body.split(b"\n") if line.startswith(b"energy_meter_"))


def time_scrapes(url: str, gzip_: bool, count: int, budget: float, before=None) -> Timings:
    """Up to `count` scrapes, fewer when they take longer than `budget` seconds in all (at
    least 3). `before` runs ahead of each scrape, untimed."""
    timings = Timings()
    started = time.monotonic()
    while len(timings.values) < count:
        if len(timings.values) >= 3 and time.monotonic() - started > budget:
            break
        if before is not None:
            before()
        seconds, size, status = curl_time(url, gzip_)
        if status != 200:
            raise RuntimeError(f"{url}: HTTP {status}")
        timings.values.append(seconds)
        timings.sizes.append(size)
    return timings


def bench_scrape(sizes: list[int], scrapes: int, peer_budget: float, workdir: Path) -> list[dict]:
    from .pushgw import Pushgateway

    rows = []
    pushgateway = Pushgateway(workdir / "pushgateway.log")
    try:
        for size in sizes:
            log(f"scrape: {size} targets: starting the exporter, prometheus_client and loading the Pushgateway")
            exporter = python_child("bench.scrape_server", "exporter", "--targets", str(size),
                                    name="exporter", log=workdir / f"scrape-exporter-{size}.log").start()
            client = python_child("bench.scrape_server", "client_python", "--targets", str(size),
                                  name="client_python", log=workdir / f"scrape-client-{size}.log").start()
            bodies = workdir / f"pushgateway-{size}.jsonl"
            python_child("bench.scrape_server", "pushgateway_bodies", "--targets", str(size), "--output", str(bodies),
                         name="bodies", log=workdir / f"bodies-{size}.log").start().stop()
            pushgateway.wipe()
            load_seconds = pushgateway.load(bodies)
            try:
                base = f"http://127.0.0.1:{exporter.port}"
                update_all = lambda: http_json(f"{base}/bench/update", "POST")  # noqa: E731
                update_one = lambda: http_json(f"{base}/bench/update?count=1", "POST")  # noqa: E731
                row = {"targets": size, "series_per_target": None, "pushgateway_load_seconds": load_seconds}
                contenders = [
                    ("exporter", f"{base}/metrics", update_all, scrapes * 10, (False, True)),
                    ("exporter_one_change", f"{base}/metrics", update_one, scrapes * 10, (True,)),
                    ("client_python", f"http://127.0.0.1:{client.port}/metrics", None, peer_budget, (False, True)),
                    ("pushgateway", pushgateway.url, None, peer_budget, (False, True)),
                ]
                for name, url, before, budget, encodings in contenders:
                    row[f"{name}_series"] = series_in(url)
                    for compress in encodings:
                        timings = time_scrapes(url, compress, scrapes, budget, before)
                        key = f"{name}_{'gzip' if compress else 'plain'}"
                        row[key] = {"median": timings.median, "p99": timings.p99, "n": len(timings.values),
                                    "bytes": timings.size}
                        log(f"scrape: {size:>6} {key:<28} median {timings.median * 1e3:8.1f} ms  "
                            f"p99 {timings.p99 * 1e3:8.1f} ms  ({len(timings.values)} scrapes, {timings.size / 1e6:.2f} MB)")
                row["series_per_target"] = round(row["exporter_series"] / size)
                rows.append(row)
            finally:
                exporter.stop()
                client.stop()
                bodies.unlink(missing_ok=True)
    finally:
        pushgateway.stop()
    return rows


# --- 2, 4, 5. Polling, memory, concurrency ----------------------------------------------------------


def fleet_config(path: Path, hosts: list[str], interval: float, state: Path) -> None:
    lines = [f"state_directory: {state}", "defaults:", f"  interval: {interval:g}s", "targets:"]
    for index, host in enumerate(hosts):
        lines.append(f"  - {{name: p1-{index:05d}, vendor: homewizard, host: \"{host}\"}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class Scrapers:
    """`count` scrapers, each asking for /metrics every `every` seconds as Prometheus does
    (OpenMetrics, gzip), until stopped."""

    def __init__(self, url: str, count: int, every: float = 1.0) -> None:
        self.url = url
        self.timings = Timings()
        self.failures = 0
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i * every / count, every), daemon=True)
                        for i in range(count)]

    def _run(self, offset: float, every: float) -> None:
        next_at = time.monotonic() + offset
        while not self.stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            next_at += every
            try:
                seconds, size, status = curl_time(self.url, True, OPENMETRICS_ACCEPT)
            except Exception:
                self.failures += 1
                continue
            if status != 200:
                self.failures += 1
                continue
            self.timings.values.append(seconds)
            self.timings.sizes.append(size)

    def __enter__(self) -> "Scrapers":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join()


def bench_polls(targets: int, interval: float, window: float, workdir: Path) -> dict:
    cpu = cpus()
    exporter_cpu, sim_cpu = (cpu[0], cpu[1]) if len(cpu) > 1 else (None, None)
    port = free_port("127.100.0.1")
    fleets: list[Child] = []
    result: dict = {"targets": targets, "interval": interval, "offered": targets / interval,
                    "pinned": exporter_cpu is not None}
    own_affinity = os.sched_getaffinity(0)
    if sim_cpu is not None:
        os.sched_setaffinity(0, {sim_cpu})  # this process and the curl scrapers stay off the exporter's CPU
    exporter: Child | None = None
    try:
        log(f"polls: starting {targets} simulated P1 meters")
        hosts = []
        for first in range(0, targets, DEVICES_PER_FLEET_PROCESS):
            count = min(DEVICES_PER_FLEET_PROCESS, targets - first)
            args = ["--first", str(first), "--count", str(count), "--port", str(port)]
            if sim_cpu is not None:
                args += ["--cpu", str(sim_cpu)]
            fleets.append(python_child("bench.fleet", *args, name=f"fleet-{first}",
                                       log=workdir / f"fleet-{first}.log").start())
            from .fleet import hosts as fleet_hosts

            hosts += fleet_hosts(first, count, port)
        config = workdir / "fleet.yaml"
        fleet_config(config, hosts, interval, workdir / "state")
        log(f"polls: starting the exporter with {targets} targets every {interval:g}s "
            f"({targets / interval:.0f} polls/s offered)")
        started = time.monotonic()
        args = [str(config)] + (["--cpu", str(exporter_cpu)] if exporter_cpu is not None else [])
        exporter = python_child("bench.exporter_proc", *args, name="exporter", log=workdir / "exporter.log").start()
        result["startup_seconds"] = time.monotonic() - started
        metrics_port, stats_port = exporter.port, int(exporter.extra)
        stats_url = f"http://127.0.0.1:{stats_port}"

        def device_requests() -> int:
            return sum(http_json(f"http://127.0.0.1:{f.port}/stats")["/api/v1/data"] for f in fleets)

        # Warm up: every target polled once (the first polls spread over the interval), then
        # one more interval so connections are open and the schedule is steady.
        deadline = time.monotonic() + max(60.0, 4 * interval)
        while time.monotonic() < deadline and http_json(f"{stats_url}/stats")["up"] < targets:
            time.sleep(1)
        time.sleep(interval)

        http_json(f"{stats_url}/mark", "POST")
        requests_before, cpu_before = device_requests(), cpu_seconds(exporter.pid)
        time.sleep(window)
        stats = http_json(f"{stats_url}/stats")
        requests_after, cpu_after = device_requests(), cpu_seconds(exporter.pid)
        rss, hwm = rss_mb(exporter.pid)
        result.update(
            polls_per_second=stats["polls"] / stats["seconds"], lag_p50=stats["lag_p50"], lag_p99=stats["lag_p99"],
            lag_max=stats["lag_max"], up=stats["up"], errors=stats["errors"], window=stats["seconds"],
            device_requests_per_second=(requests_after - requests_before) / stats["seconds"],
            cpu_share=(cpu_after - cpu_before) / stats["seconds"], rss_mb=rss, hwm_mb=hwm,
        )
        log(f"polls: {result['polls_per_second']:.0f} polls/s, lag p50 {_ms(stats['lag_p50'])} p99 "
            f"{_ms(stats['lag_p99'])} max {_ms(stats['lag_max'])}, {stats['up']}/{targets} up, errors {stats['errors']}, "
            f"exporter CPU {result['cpu_share'] * 100:.0f}%, RSS {rss:.0f} MB")

        # Concurrency: one scraper, then four, while polling goes on.
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        for count in (1, 4):
            http_json(f"{stats_url}/mark", "POST")
            before = device_requests()
            with Scrapers(url, count) as scrapers:
                time.sleep(window / 2)
            stats = http_json(f"{stats_url}/stats")
            requests = device_requests() - before
            result[f"scrapers_{count}"] = {
                "median": scrapers.timings.median, "p99": scrapers.timings.p99, "n": len(scrapers.timings.values),
                "failures": scrapers.failures, "bytes": scrapers.timings.size,
                "polls_per_second": stats["polls"] / stats["seconds"], "device_requests": requests,
                "polls": stats["polls"], "lag_p99": stats["lag_p99"],
            }
            log(f"concurrency: {count} scraper(s): median {scrapers.timings.median * 1e3:.1f} ms, p99 "
                f"{scrapers.timings.p99 * 1e3:.1f} ms ({len(scrapers.timings.values)} scrapes, "
                f"{scrapers.timings.size / 1e6:.2f} MB); {requests} device requests for {stats['polls']} polls; "
                f"poll lag p99 {_ms(stats['lag_p99'])}")
        rss, hwm = rss_mb(exporter.pid)
        result.update(rss_end_mb=rss, hwm_end_mb=hwm)
    finally:
        if exporter is not None:
            exporter.stop()
        for fleet in fleets:
            fleet.stop()
        os.sched_setaffinity(0, own_affinity)
    return result


# --- 3. Push ingest ----------------------------------------------------------------------------------


def bench_push(meters: int, window: float, workdir: Path) -> dict:
    cpu = cpus()
    exporter_cpu, feed_cpu = (cpu[0], cpu[1]) if len(cpu) > 1 else (None, None)
    feed = python_child("bench.iometer_feed", "--meters", str(meters),
                        *(["--cpu", str(feed_cpu)] if feed_cpu is not None else []),
                        name="iometer feed", log=workdir / "iometer-feed.log").start()
    exporter = None
    try:
        partner_id, secret = feed.extra.split()
        config = workdir / "push.yaml"
        config.write_text(
            f"state_directory: {workdir / 'state-push'}\n"
            "targets:\n"
            "  - name: partner\n"
            "    vendor: iometer\n"
            "    transport: partner\n"
            f"    endpoint: http://127.0.0.1:{feed.port}/api/v1/query\n"
            f"    partner_id: {partner_id}\n"
            f"    secret: {secret}\n",
            encoding="utf-8",
        )
        args = [str(config)] + (["--cpu", str(exporter_cpu)] if exporter_cpu is not None else [])
        exporter = python_child("bench.exporter_proc", *args, name="exporter", log=workdir / "exporter-push.log").start()
        stats_url = f"http://127.0.0.1:{int(exporter.extra)}"
        deadline = time.monotonic() + 60
        while http_json(f"{stats_url}/stats")["readings_received"] < meters and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        first = http_json(f"{stats_url}/stats")
        cpu_before = cpu_seconds(exporter.pid)
        t0 = time.monotonic()
        # The rate in PUSH_SLICES consecutive slices of the window: the median stands for the
        # run, the range shows how steady it was (a shared VM's core speed varies by minutes).
        rates, previous, at = [], first, t0
        for _ in range(PUSH_SLICES):
            time.sleep(window / PUSH_SLICES)
            now_stats, now = http_json(f"{stats_url}/stats"), time.monotonic()
            rates.append((now_stats["readings_received"] - previous["readings_received"]) / (now - at))
            previous, at = now_stats, now
        last = previous
        elapsed = time.monotonic() - t0
        result = {
            "meters": meters,
            "readings_per_second": statistics.median(rates),
            "slowest": min(rates), "fastest": max(rates),
            "average": (last["readings_received"] - first["readings_received"]) / elapsed,
            "cpu_share": (cpu_seconds(exporter.pid) - cpu_before) / elapsed,
            "errors": last["errors"], "up": last["up"],
        }
        # What Prometheus sees: the readings counter of the account, exported.
        body = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=60).read().decode()
        result["exported_series"] = sum(1 for line in body.splitlines() if line.startswith("energy_meter_") and "partner" in line)
        log(f"push: {result['readings_per_second']:.0f} readings/s from {meters} meters, exporter CPU "
            f"{result['cpu_share'] * 100:.0f}%, errors {result['errors']}")
        return result
    finally:
        if exporter is not None:
            exporter.stop()
        feed.stop()


# --- Report ------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)) else f"{seconds * 1e3:.1f} ms"


def _cell(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    note = f" ({entry['n']})" if entry.get("n") and entry["n"] < 50 else ""
    return f"{entry['median'] * 1e3:.1f} / {entry['p99'] * 1e3:.1f}{note}"


def report(info: dict, command: str, scrape: list[dict], polls: dict | None, push: dict | None) -> str:
    out = ["# Benchmark results", "",
           f"Command: `{command}`", "",
           "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    if scrape:
        out += ["## 1. /metrics latency", "",
                "Median / p99 in ms over 50 scrapes (fewer, in brackets, where a peer took longer than its "
                "time budget), measured by curl (connect to last byte; gzip bodies not decompressed). "
                "`exporter`: every target records a new poll between two scrapes, so each scrape renders "
                "what a round of polls changed; `one change`: one target polled between scrapes. "
                "The Pushgateway holds one group per target (it adds `job`, `instance` and two push "
                "timestamps per group).", "",
                "| targets | series | exporter plain | exporter gzip | one change gzip | prometheus_client plain | "
                "prometheus_client gzip | Pushgateway plain | Pushgateway gzip | vs Pushgateway (plain / gzip) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in scrape:
            speed = " / ".join(
                f"{row[f'pushgateway_{e}']['median'] / row[f'exporter_{e}']['median']:.0f}x" for e in ("plain", "gzip"))
            out.append(
                f"| {row['targets']:,} | {row['exporter_series']:,} | {_cell(row['exporter_plain'])} | "
                f"{_cell(row['exporter_gzip'])} | {_cell(row['exporter_one_change_gzip'])} | "
                f"{_cell(row['client_python_plain'])} | {_cell(row['client_python_gzip'])} | "
                f"{_cell(row['pushgateway_plain'])} | {_cell(row['pushgateway_gzip'])} | {speed} |")
        out += ["", "Body sizes (plain / gzip, MB): " + "; ".join(
            f"{row['targets']:,} targets: exporter {row['exporter_plain']['bytes'] / 1e6:.1f} / "
            f"{row['exporter_gzip']['bytes'] / 1e6:.2f}, Pushgateway {row['pushgateway_plain']['bytes'] / 1e6:.1f} / "
            f"{row['pushgateway_gzip']['bytes'] / 1e6:.2f}" for row in scrape), ""]
    if polls:
        pinned = "pinned to one CPU, the simulators to the other" if polls["pinned"] else "not pinned (one CPU)"
        out += ["## 2. Poll throughput", "",
                f"{polls['targets']:,} HomeWizard P1 targets (API v1, real HTTP, each meter its own loopback "
                f"address) polled every {polls['interval']:g}s = {polls['offered']:,.0f} polls/s offered; the "
                f"exporter {pinned}; {polls['window']:.0f} s measured after warm-up.", "",
                "| polls/s | poll lag p50 | poll lag p99 | poll lag max | exporter CPU | targets up | errors |",
                "|---:|---:|---:|---:|---:|---:|---|",
                f"| {polls['polls_per_second']:,.0f} | {_ms(polls['lag_p50'])} | {_ms(polls['lag_p99'])} | "
                f"{_ms(polls['lag_max'])} | {polls['cpu_share'] * 100:.0f}% | {polls['up']:,} | {polls['errors'] or 'none'} |",
                ""]
    if push:
        out += ["## 3. Push ingest", "",
                f"IOmeter Partner API subscription (`meterReadings`, graphql-transport-ws over a real WebSocket) "
                f"from one account of {push['meters']:,} meters, readings sent as fast as the exporter takes them.",
                "", f"**{push['readings_per_second']:,.0f} readings/s**, the median of {PUSH_SLICES} slices of the "
                f"window ({push['slowest']:,.0f} to {push['fastest']:,.0f}; {push['average']:,.0f} over the whole "
                f"window) (exporter CPU {push['cpu_share'] * 100:.0f}%, "
                f"errors {push['errors'] or 'none'}).", ""]
    if polls:
        out += ["## 4. Memory", "",
                f"Exporter resident memory (VmRSS) with {polls['targets']:,} targets configured and polled: "
                f"**{polls['rss_mb']:.0f} MB** after the throughput run, {polls['rss_end_mb']:.0f} MB after the "
                f"scrapers (peak {polls['hwm_end_mb']:.0f} MB).", ""]
        one, four = polls.get("scrapers_1"), polls.get("scrapers_4")
        if one and four:
            out += ["## 5. Concurrency", "",
                    "Scrapers at one-second intervals (OpenMetrics, gzip, as Prometheus asks) while the targets "
                    "above are polled.", "",
                    "| scrapers | scrape median | scrape p99 | scrapes | polls/s | device requests / polls | poll lag p99 |",
                    "|---:|---:|---:|---:|---:|---:|---:|"]
            for count, entry in ((1, one), (4, four)):
                out.append(f"| {count} | {_ms(entry['median'])} | {_ms(entry['p99'])} | {entry['n']} | "
                           f"{entry['polls_per_second']:,.0f} | {entry['device_requests']:,} / {entry['polls']:,} | "
                           f"{_ms(entry['lag_p99'])} |")
            out += ["", f"Four scrapers vs one: median x{four['median'] / one['median']:.2f}.", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="targets per /metrics latency run")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--peer-budget", type=float, default=15.0,
                        help="seconds each peer may spend on one size and encoding before fewer than --scrapes are taken")
    parser.add_argument("--poll-targets", type=int, default=10000)
    parser.add_argument("--poll-interval", type=float, default=6.5)
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per poll and push phase")
    parser.add_argument("--push-meters", type=int, default=1000)
    parser.add_argument("--only", default="scrape,polls,push", help="parts to run")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = command.strip()
    info = machine()
    log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    workdir = Path(tempfile.mkdtemp(prefix="emx-bench-"))
    log(f"logs in {workdir}")
    started = time.monotonic()
    scrape = bench_scrape([int(s) for s in args.sizes.split(",")], args.scrapes, args.peer_budget, workdir) \
        if "scrape" in parts else []
    polls = bench_polls(args.poll_targets, args.poll_interval, args.window, workdir) if "polls" in parts else None
    push = bench_push(args.push_meters, args.window / 2, workdir) if "push" in parts else None
    text = report(info, command, scrape, polls, push)
    text += f"\nThe whole run took {time.monotonic() - started:.0f} s.\n"
    Path(args.output).write_text(text, encoding="utf-8")
    print()
    print(text)
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
