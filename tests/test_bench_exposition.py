"""The exposition at fleet scale: segmented line cache, gzip stream of separately compressed
pieces, incremental rendering of polls. A scraper must see exactly what a full render gives."""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import shutil
import subprocess
import zlib

import aiohttp
import pytest
from aiohttp import web

from exporter.config.loader import Config
from exporter.daemon import Daemon
from exporter.exposition import FamilyCache
from exporter.exposition import cache as exposition_cache
from exporter.exposition.cache import SEGMENT
from exporter.exposition.gzipframes import crc32_combine
from exporter.model import catalogue as M
from exporter.model.samples import DeviceInfo, Reading
from exporter.runtime.scheduler import LagRing
from exporter.store import COUNTER_RESET_GRACE, SnapshotStore
from exporter.web.server import make_app

from .conftest import exposition_text, require_binary, wait_until
from .prometheus import PrometheusServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def meter_reading(rng: random.Random, phases: int = 3, gas: bool = True, energy: float | None = None) -> Reading:
    r = Reading()
    r.add(M.ACTIVE_POWER, rng.choice([-543, 120.5, 0, 3000]))
    for n in range(1, phases + 1):
        r.add(M.PHASE_VOLTAGE, rng.choice([229.9, 230.1, 231]), phase=f"l{n}")
        r.add(M.PHASE_ACTIVE_POWER, rng.randint(-500, 500), phase=f"l{n}")
    r.add(M.ENERGY_IMPORTED, energy if energy is not None else rng.choice([5e6, 5.5e6, 4e6]))
    r.add(M.ACTIVE_TARIFF, rng.choice([1, 2]))
    if gas:
        r.add(M.GAS, rng.choice([100.25, 100.5, 99.0]), meter="4e47")
    r.devices.append(DeviceInfo(model="HWE-P1", serial="abc", firmware=rng.choice(["5.18", "5.19"])))
    return r


async def test_gzip_body_is_one_stream_that_decodes_to_the_plain_body(monkeypatch):
    # Every scrape gets the body of the state it sees, not one shared with a scrape just before.
    monkeypatch.setattr(exposition_cache, "SHARE_ABOVE", float("inf"))
    rng = random.Random(7)
    store = SnapshotStore(clock=Clock())
    names = [f"t{i}" for i in range(3 * SEGMENT + 5)]  # several segments per family
    for name in names:
        store.add_target(name, "homewizard", 60)
    for step in range(40):
        for name in rng.sample(names, rng.randint(1, 40)):
            store.record_success(name, meter_reading(rng, phases=rng.choice([1, 3]), gas=rng.random() < 0.7))
        if step % 7 == 3:
            store.record_failure(rng.choice(names), "timeout", "no answer")
        if step % 11 == 5:  # a target leaves, another one comes
            gone = rng.choice(names)
            store.remove_target(gone)
            names.remove(gone)
            names.append(f"new{step}")
            store.add_target(names[-1], "homewizard", 60)
        for om in (False, True):
            body = b"".join(await store.cache.gzip_chunks(om))
            plain = b"".join(store.cache.chunks(om))
            decoder = zlib.decompressobj(31)
            assert decoder.decompress(body) == plain  # the CRC and length in the trailer checked too
            assert decoder.eof and decoder.unused_data == b""  # one member, nothing after it
            assert gzip.decompress(body) == plain


def test_crc32_combine_matches_zlib():
    rng = random.Random(3)
    for _ in range(500):
        a = rng.randbytes(rng.randint(0, 5000))
        b = rng.randbytes(rng.choice([0, 1, 13, 4096, rng.randint(0, 300_000)]))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_incremental_polls_render_what_a_full_render_gives():
    """A poll re-renders only the families whose values changed; after any sequence of polls,
    failures, counter glitches and changing series the body is the one a store rendering
    everything on every poll shows."""
    rng = random.Random(11)
    clock = Clock()
    fast, full = SnapshotStore(clock=clock), SnapshotStore(clock=clock)
    for store in (fast, full):
        for name in ("a", "b", "c"):
            store.add_target(name, "homewizard", 600)
    for step in range(300):
        name = rng.choice("abc")
        clock.now += rng.choice([1, 10, COUNTER_RESET_GRACE / 2])
        kind = rng.random()
        reading = meter_reading(rng, phases=3 if kind < 0.8 else 1, gas=kind < 0.9)
        for store in (fast, full):
            if step % 13 == 0:
                store.record_failure(name, "timeout", "x")
                continue
            if store is full:
                store.targets[name].has_series = False  # forces the whole render
            store.record_success(name, reading, duration=0.01 * (step % 3))
            if step % 50 == 49:
                store.expire()
        assert exposition_text(fast) == exposition_text(full), f"step {step}"
        assert fast.targets[name].regressions == full.targets[name].regressions


def test_a_counter_that_vanishes_is_still_held_when_it_returns():
    rng = random.Random(1)
    store = SnapshotStore(clock=Clock())
    store.add_target("a", "homewizard", 600)
    store.record_success("a", meter_reading(rng, gas=False, energy=5e6))
    store.record_success("a", meter_reading(rng, gas=False, energy=5e6))
    without_energy = Reading()
    without_energy.add(M.ACTIVE_POWER, 1)
    store.record_success("a", without_energy)
    store.record_success("a", meter_reading(rng, gas=False, energy=4e6))  # back, and lower: a glitch
    assert ("energy_meter_energy_imported_joules_total{vendor=\"homewizard\",device=\"a\",obis=\"1-0:1.8.0\"} 5000000\n"
            in exposition_text(store))
    assert store.targets["a"].regressions == 1


def test_slots_of_removed_owners_are_reused_without_stale_lines():
    cache = FamilyCache()
    for i in range(2 * SEGMENT):
        cache.set_fragments(f"o{i}", {M.ACTIVE_POWER: f"energy_meter_active_power_watts{{device=\"o{i}\"}} {i}\n"})
    for i in range(0, 2 * SEGMENT, 2):
        cache.drop_owner(f"o{i}")
    cache.set_fragments("late", {M.ACTIVE_POWER: "energy_meter_active_power_watts{device=\"late\"} 1\n"})
    body = b"".join(cache.chunks(False)).decode()
    assert body.count("energy_meter_active_power_watts{") == SEGMENT + 1
    assert 'device="o0"' not in body and 'device="o1"' in body and 'device="late"' in body
    devices = re.findall(r'device="([^"]+)"', body)  # each owner's line once, and only the owners left
    assert sorted(devices) == sorted([f"o{i}" for i in range(1, 2 * SEGMENT, 2)] + ["late"])
    assert cache.fragment(M.ACTIVE_POWER, "late") == "energy_meter_active_power_watts{device=\"late\"} 1\n"


async def test_gzip_in_worker_threads_while_polls_change_the_store(monkeypatch):
    monkeypatch.setattr(exposition_cache, "THREAD_THRESHOLD", 0)  # every gzip body leaves the event loop
    rng = random.Random(5)
    store = SnapshotStore(clock=Clock())
    names = [f"t{i}" for i in range(200)]
    for name in names:
        store.add_target(name, "homewizard", 600)
        store.record_success(name, meter_reading(rng))
    for _ in range(20):
        render = asyncio.ensure_future(store.cache.gzip_chunks(False))
        twin = asyncio.ensure_future(store.cache.gzip_chunks(False))  # a second scraper meanwhile
        snapshot = b"".join(store.cache.chunks(False))
        await asyncio.sleep(0)
        for name in rng.sample(names, 30):  # polls land while the body is compressed
            store.record_success(name, meter_reading(rng))
        body, again = await render, await twin
        assert gzip.decompress(b"".join(body)) == snapshot  # the state the scrape started from
        assert again == body
    assert gzip.decompress(b"".join(await store.cache.gzip_chunks(False))) == b"".join(store.cache.chunks(False))


def test_lag_ring_keeps_the_latest_in_order():
    ring = LagRing()
    for i in range(LagRing.LAGS + 10):
        ring.append(i / 1000)
    values = list(ring)
    assert len(ring) == LagRing.LAGS == len(values)
    assert values == pytest.approx([i / 1000 for i in range(10, LagRing.LAGS + 10)], abs=1e-6)


def fleet_daemon(tmp_path, count: int) -> Daemon:
    daemon = Daemon(Config(path=str(tmp_path / "c.yaml"), targets=(), state_directory=str(tmp_path / "state")))
    rng = random.Random(9)
    for i in range(count):
        daemon.store.add_target(f"p1-{i:04d}", "homewizard", 1e9)
        daemon.store.record_success(f"p1-{i:04d}", meter_reading(rng))
    return daemon


async def serve(daemon: Daemon, encodings: list[str]) -> tuple[web.AppRunner, int]:
    @web.middleware
    async def record(request, handler):
        encodings.append(request.headers.get("Accept-Encoding", ""))
        return await handler(request)

    runner = web.AppRunner(make_app(daemon.view(), [record]), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def served(tmp_path):
    """A store of 300 meters (5 segments a family) behind the real /metrics handler."""
    daemon = fleet_daemon(tmp_path, 300)
    runner, port = await serve(daemon, [])
    yield daemon, port
    await runner.cleanup()


async def test_curl_reads_the_whole_gzip_body(served):
    curl = shutil.which("curl") or pytest.skip("curl is not installed")
    daemon, port = served
    plain = await asyncio.to_thread(subprocess.run, [curl, "-s", f"http://127.0.0.1:{port}/metrics"],
                                    capture_output=True, check=True)
    decoded = await asyncio.to_thread(subprocess.run, [curl, "-s", "--compressed", f"http://127.0.0.1:{port}/metrics"],
                                      capture_output=True, check=True)
    assert decoded.stdout == plain.stdout
    assert plain.stdout.count(b"energy_meter_exporter_target_up{") == 300


async def test_the_metrics_handler_streams_what_the_cache_holds(served):
    daemon, port = served
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
            om = accept.startswith("application")
            async with session.get(f"http://127.0.0.1:{port}/metrics",
                                   headers={"Accept": accept, "Accept-Encoding": "gzip"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                body = await resp.read()
                assert int(resp.headers["Content-Length"]) == len(body)
            assert gzip.decompress(body) == b"".join(daemon.store.cache.chunks(om))


def test_prometheus_reads_the_gzip_stream_of_a_fleet(loop_thread, tmp_path):
    """Prometheus (Go's gzip reader) scrapes the segmented gzip body of 300 meters."""
    prometheus = require_binary("prometheus")
    encodings: list[str] = []

    async def up():
        return await serve(fleet_daemon(tmp_path, 300), encodings)

    runner, port = loop_thread.run(up())
    prom = PrometheusServer(prometheus, tmp_path, port)
    try:
        wait_until(lambda: prom.value("count(energy_meter_exporter_target_up)") == 300, timeout=60,
                   what="300 targets in Prometheus")
        assert prom.value('up{job="energy"}') == 1
        assert prom.value("count(energy_meter_phase_voltage_volts)") == 900
        assert prom.value('count(energy_meter_device_info{model="HWE-P1"})') == 300
    finally:
        prom.stop()
        loop_thread.run(runner.cleanup())
    assert encodings and all("gzip" in e for e in encodings)  # Prometheus asked for gzip, and got it


async def test_a_big_fleet_scraped_often_shares_one_render(monkeypatch):
    rng = random.Random(2)
    store = SnapshotStore(clock=Clock())
    for i in range(50):
        store.add_target(f"t{i}", "homewizard", 600)
        store.record_success(f"t{i}", meter_reading(rng))
    monkeypatch.setattr(exposition_cache, "SHARE_ABOVE", 0)  # as if the body were a big fleet's
    first = await store.cache.gzip_chunks(False)
    store.record_success("t1", meter_reading(rng))  # a poll lands between two scrapes
    assert await store.cache.gzip_chunks(False) is first  # within SHARE_FOR: the same render
    monkeypatch.setattr(exposition_cache, "SHARE_FOR", 0.0)
    fresh = await store.cache.gzip_chunks(False)
    assert gzip.decompress(b"".join(fresh)) == b"".join(store.cache.chunks(False))
    monkeypatch.setattr(exposition_cache, "SHARE_ABOVE", 10**12)  # a small fleet: always the current state
    monkeypatch.setattr(exposition_cache, "SHARE_FOR", 1.0)
    store.record_success("t2", meter_reading(rng))
    assert gzip.decompress(b"".join(await store.cache.gzip_chunks(False))) == b"".join(store.cache.chunks(False))
