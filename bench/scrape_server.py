"""A process serving N targets' series for the /metrics latency benchmark, as one of:

- `exporter`: the exporter's own store and web handler (`exporter.web.server.make_app`), filled with
  real P1 readings through `SnapshotStore.record_success`, the path a poll takes. `POST
  /bench/update` records the next reading of every target (or of `?count=` of them), so the next
  scrape pays for whatever a round of polls leaves to render.
- `client_python`: stock prometheus_client, a custom collector yielding the same series (read
  back from the exporter's rendering of them) on every collect, behind prometheus_client's own
  HTTP server (which gzips when asked).

Prints one line `READY <port> <series>` on stdout when it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time

from aiohttp import web

from exporter.config.loader import Config
from exporter.daemon import Daemon
from exporter.model.samples import DeviceInfo
from exporter.vendors.homewizard.parse import parse_v1_data
from exporter.web.readout import target_body

from .meters import P1Meter

ROUNDS = 3  # distinct readings per target; updates cycle through them


def target_name(index: int) -> str:
    return f"p1-{index:05d}"


def build_daemon(count: int) -> tuple[Daemon, list[list]]:
    config = Config(path="bench.yaml", targets=(), state_directory=tempfile.mkdtemp(prefix="bench-state-"))
    daemon = Daemon(config)
    readings: list[list] = []
    start = time.time()
    for index in range(count):
        meter = P1Meter(index)
        rounds = []
        for step in range(ROUNDS):
            reading = parse_v1_data(meter.step(start + 10 * step))
            reading.devices.append(DeviceInfo("HWE-P1", meter.serial, "5.18"))
            rounds.append(reading)
        readings.append(rounds)
        daemon.store.add_target(target_name(index), "homewizard", stale_after=1e9)
        daemon.store.record_success(target_name(index), rounds[0], 0.012)
    return daemon, readings


async def serve_exporter(count: int) -> None:
    from exporter.exposition import cache as exposition_cache
    from exporter.web.server import make_app

    # Every scrape here renders what changed since the last one: scrapes are not let to share a
    # render (as concurrent scrapers of a big fleet do; part 5 of the benchmark measures that).
    exposition_cache.SHARE_FOR = 0.0
    daemon, readings = build_daemon(count)
    round_no = [0]

    async def update(request: web.Request) -> web.Response:
        """Every target (or `count` of them) records its next reading: one round of polls."""
        n = min(int(request.query.get("count", count)), count)
        round_no[0] += 1
        started = time.perf_counter()
        for index in range(n):
            duration = 0.010 + (index % 7 + round_no[0] % 5) / 1000  # it differs each poll
            daemon.store.record_success(target_name(index), readings[index][round_no[0] % ROUNDS], duration)
        return web.json_response({"updated": n, "seconds": time.perf_counter() - started})

    app = make_app(daemon.view())
    app.router.add_post("/bench/update", update)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    series = b"".join(daemon.store.cache.chunks(False)).count(b"\n") - 2 * len(daemon.store.cache._families)
    print(f"READY {port} {series}", flush=True)
    await asyncio.Event().wait()


def families_of(count: int) -> tuple[list[tuple[str, str, str, list]], dict[str, bytes]]:
    """The exporter's series, as (family name, type, help, [(sample name, labels, value)]),
    and each target's own text (for the Pushgateway)."""
    from prometheus_client.parser import text_string_to_metric_families

    daemon, _ = build_daemon(count)
    per_target = {target_name(i): target_body(daemon.store, target_name(i), False) for i in range(count)}
    text = b"".join(daemon.store.cache.chunks(False)).decode()
    families = [
        (f.name, f.type, f.documentation, [(s.name, dict(s.labels), s.value) for s in f.samples])
        for f in text_string_to_metric_families(text)
    ]
    return families, per_target


def serve_client_python(count: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import Metric

    families, _ = families_of(count)

    class Collector:
        """What an exporter built on prometheus_client does: families built on every scrape
        from the application's own data."""

        def collect(self):
            for name, kind, documentation, samples in families:
                metric = Metric(name, documentation, kind)
                for sample_name, labels, value in samples:
                    metric.add_sample(sample_name, labels, value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    series = sum(len(samples) for _, _, _, samples in families)
    print(f"READY {server.server_address[1]} {series}", flush=True)
    while True:
        time.sleep(3600)


def dump_pushgateway_bodies(count: int, path: str) -> None:
    """Each target's series as text, one JSON line per target, for the Pushgateway loader."""
    daemon, _ = build_daemon(count)
    with open(path, "w", encoding="utf-8") as out:
        for index in range(count):
            name = target_name(index)
            out.write(json.dumps({"name": name, "body": target_body(daemon.store, name, False).decode()}) + "\n")
    print("READY 0 0", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("exporter", "client_python", "pushgateway_bodies"))
    parser.add_argument("--targets", type=int, required=True)
    parser.add_argument("--output", help="pushgateway_bodies: file to write")
    args = parser.parse_args(argv)
    if args.mode == "exporter":
        asyncio.run(serve_exporter(args.targets))
    elif args.mode == "client_python":
        serve_client_python(args.targets)
    else:
        dump_pushgateway_bodies(args.targets, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
