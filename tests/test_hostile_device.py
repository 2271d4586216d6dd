"""A hostile HomeWizard P1 meter (API v1) on a real socket, polled by a running daemon beside a
healthy one: lone surrogates in its meter ids and errors, new meter ids on every poll, negative
and absurd counters. The daemon keeps polling it on schedule, refuses what no meter means
(counted), stays bounded, its body stays one prometheus_client's OpenMetrics parser reads
whole, and the healthy target keeps its cadence."""

from __future__ import annotations

import json
import textwrap

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter.daemon import Daemon
from exporter.model import catalogue as M
from exporter.store import RETIRED_MIN
from simulators.homewizard import HomeWizardSimulator

from .configs import load_config
from .conftest import async_wait_until, free_port

INTERVAL = 0.2  # the hostile meter's
CONTROL_INTERVAL = 0.5  # the healthy one's: its polls must start within half of it
CHURN_METERS = 40  # new external meters in each answer while churning


class HostileP1:
    """Answers /api as a P1 meter does, and /api/v1/data as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.data_requests = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> "HostileP1":
        app = web.Application()
        app.router.add_get("/api", self._api)
        app.router.add_get("/api/v1/data", self._data)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _api(self, request: web.Request) -> web.Response:
        return _json({"product_type": "HWE-P1", "product_name": "P1 meter", "serial": "5c2fafabcdef",
                      "firmware_version": "5.18", "api_version": "v1"})

    async def _data(self, request: web.Request) -> web.Response:
        self.data_requests += 1
        n = self.data_requests
        body = {"active_power_w": 500 + n, "total_power_import_kwh": 1000.0 + n / 1000, "external": []}
        if self.mode == "surrogate":
            body["external"] = [{"unique_id": "\ud800G01", "type": "gas_meter", "value": 12.5 + n / 100,
                                 "unit": "m3", "timestamp": 240102120000}]
        elif self.mode == "churn":
            body["external"] = [{"unique_id": f"G{n:06d}{k:02d}", "type": "gas_meter", "value": 1.0 + k,
                                 "unit": "m3", "timestamp": 240102120000} for k in range(CHURN_METERS)]
        elif self.mode == "negative":
            body["total_power_import_kwh"] = -5
        elif self.mode == "huge":
            body["total_power_import_kwh"] = 1e300
        elif self.mode == "error_surrogate":
            return _json({"error": "request:internal\ud800"}, status=500)
        return _json(body)


def _json(document, status: int = 200) -> web.Response:
    # json.dumps writes a lone surrogate as the escape "\ud800", as a broken firmware would
    return web.Response(text=json.dumps(document), status=status, content_type="application/json")


async def get(daemon: Daemon, path: str, openmetrics: bool = False) -> tuple[int, bytes]:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{daemon.port}{path}", headers=headers) as resp:
            return resp.status, await resp.read()


async def scrape(daemon: Daemon) -> dict[tuple[str, tuple], float]:
    """/metrics as OpenMetrics over HTTP, parsed whole: {(sample name, labels): value}."""
    status, raw = await get(daemon, "/metrics", openmetrics=True)
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse_openmetrics(raw.decode()) for s in family.samples}


def find(samples: dict, name: str, **labels: str) -> float | None:
    for (sample, pairs), value in samples.items():
        if sample == name and all(dict(pairs).get(k) == v for k, v in labels.items()):
            return value
    return None


def fast_homewizard(monkeypatch) -> None:
    """HomeWizard's interval floor spares real devices; these take the test's pace."""
    import dataclasses

    from exporter.vendors import load_all, registry

    load_all()
    key, spec = next((k, s) for k, s in registry._SPECS.items() if s.vendor == "homewizard" and s.transport == "local")
    monkeypatch.setitem(registry._SPECS, key, dataclasses.replace(spec, min_interval=INTERVAL))


@pytest.fixture
async def rig(tmp_path, monkeypatch):
    fast_homewizard(monkeypatch)
    device = await HostileP1().start()
    control = await HomeWizardSimulator("HWE-KWH3", v2=False).start()
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        state_directory: {tmp_path / 'state'}
        defaults:
          interval: {INTERVAL}s
          timeout: 0.15s
          jitter: 0
        targets:
          - name: hostile
            vendor: homewizard
            host: 127.0.0.1:{device.port}
          - name: control
            vendor: homewizard
            host: {control.v1_host}
            interval: {CONTROL_INTERVAL}s
            timeout: 0.4s
        """))
    daemon = Daemon(load_config(tmp_path / "c.yaml"))
    await daemon.start("127.0.0.1", 0)
    try:
        yield daemon, device, control
    finally:
        await daemon.stop()
        await device.stop()
        await control.stop()


async def polls_go_on(device: HostileP1, more: int = 3) -> None:
    seen = device.data_requests
    await async_wait_until(lambda: device.data_requests >= seen + more, timeout=10, what="the next polls")


async def test_a_hostile_meter_is_polled_on_refused_and_harms_no_one(rig):
    daemon, device, _ = rig
    states = daemon.store.targets
    hostile, control = states["hostile"], states["control"]
    await async_wait_until(lambda: hostile.up and control.up, timeout=10, what="both up")
    control_runner = daemon.runners["control"]
    lags_before = len(control_runner.lags)
    control_polls = control.polls

    # A lone surrogate in an external meter's id: exported as U+FFFD, the target stays up.
    device.mode = "surrogate"
    await polls_go_on(device)
    samples = await scrape(daemon)
    assert find(samples, "energy_meter_exporter_target_up", device="hostile") == 1, hostile.last_error
    assert find(samples, "energy_meter_gas_cubic_meters_total", device="hostile", meter="\ufffdG01") is not None
    assert hostile.up and hostile.errors == {}

    # ... and in an error body: a failure with a reason; the status page and its API still answer.
    device.mode = "error_surrogate"
    await async_wait_until(lambda: not hostile.up, timeout=10, what="the hostile target down")
    await polls_go_on(device)
    assert hostile.last_reason == "http_error"
    for path in ("/", "/api/v1/targets"):
        status, raw = await get(daemon, path)
        assert status == 200, path
        raw.decode()  # valid UTF-8
    samples = await scrape(daemon)
    assert find(samples, "energy_meter_exporter_target_up", device="hostile") == 0

    # New external meters on every poll: kept within bounds, polls go on.
    device.mode = "churn"
    seen = device.data_requests
    await async_wait_until(lambda: device.data_requests >= seen + 12, timeout=20, what="churning polls")
    assert hostile.up
    assert len(hostile.retired) <= max(RETIRED_MIN, CHURN_METERS + 1)
    assert len(hostile.retired) >= RETIRED_MIN // 2  # (they were held: 12 x 40 came and went)
    held = find(await scrape(daemon), "energy_meter_energy_imported_joules_total", device="hostile")
    assert held is not None

    # A negative counter and an absurd one: not exported, counted; the value held stays.
    for mode, reason in (("negative", "negative"), ("huge", "out_of_range")):
        device.mode = mode
        await polls_go_on(device)
        samples = await scrape(daemon)
        assert find(samples, "energy_meter_exporter_samples_dropped_total", device="hostile", reason=reason) >= 2
        exported = find(samples, "energy_meter_energy_imported_joules_total", device="hostile")
        assert exported is not None and held <= exported < 1001 * M.JOULES_PER_KWH
        assert find(samples, "energy_meter_active_power_watts", device="hostile") is not None
        assert find(samples, "energy_meter_exporter_target_up", device="hostile") == 1

    # The healthy target kept its cadence all along.
    assert control.up and control.polls >= control_polls + 5
    lags = list(control_runner.lags)[lags_before:]
    assert lags and max(lags) < CONTROL_INTERVAL / 2, lags

    device.mode = "ok"
    await polls_go_on(device)
    samples = await scrape(daemon)
    assert find(samples, "energy_meter_exporter_target_up", device="hostile") == 1
