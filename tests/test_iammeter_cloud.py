"""The IAMMETER cloud transport against the simulated cloud on a real socket: quotas, token,
"returns nothing", restarts, two simulated days without a single violation."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web

from exporter.config.loader import ConfigError, TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.runtime import quota
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.store import SnapshotStore
from exporter.vendors.iammeter import cloud, cloud_settings
from simulators import iammeter_cloud as seed
from simulators.iammeter_cloud import IammeterCloudSimulator

from .configs import load_config
from .conftest import exposition_text, sample_value

KWH = 3.6e6
T0 = seed.parse_utc("2024/2/22 3:46:20")  # every seed meter's latest upload is its seed row at this time
ZONE = "Asia/Shanghai"  # the simulator's accounts live at UTC+8


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def target(name: str = "cloud", interval: float = 300.0, timeout: float = 20.0, **raw) -> TargetConfig:
    """A target as the configuration loader builds it (options converted, defaults set)."""
    raw.setdefault("username", "test")
    raw.setdefault("password", "123456")
    raw.setdefault("timezone", ZONE)
    options = {key: cloud_settings.OPTIONS[key].convert(value) for key, value in raw.items()}
    for key, option in cloud_settings.OPTIONS.items():
        if key not in options and option.default is not None:
            options[key] = option.default
    return TargetConfig(name=name, vendor="iammeter", transport="cloud", interval=interval, timeout=timeout,
                        max_backoff=300.0, stale_after=900.0, jitter=0.0, options=options)


class Exporter:
    """What one exporter process holds: a state directory with its ledger, and adapters."""

    def __init__(self, session: aiohttp.ClientSession, directory: Path, clock: Clock, base_url: str) -> None:
        self.session = session
        self.directory = directory
        self.clock = clock
        self.base_url = base_url
        self._ledger: quota.QuotaLedger | None = None

    @property
    def state(self) -> StateDirectory:
        return StateDirectory(self.directory)

    def adapter(self, **raw) -> cloud.IammeterCloudAdapter:
        raw.setdefault("base_url", self.base_url)
        context = AdapterContext(session=self.session, state=self.state, log=structlog.get_logger(), clock=self.clock,
                                 ledger=self.ledger())
        adapter = cloud.create(target(**raw), context)

        async def sleep(seconds: float) -> None:  # waiting for a quota window moves the fake clock
            self.clock.now += seconds

        adapter.sleep = sleep
        return adapter

    def ledger(self) -> quota.QuotaLedger:
        """The process's one ledger, as the daemon hands it to each of its targets."""
        if self._ledger is None:
            self._ledger = quota.QuotaLedger(self.state, self.clock)
        return self._ledger

    def restart(self) -> None:
        """A new process: the in-memory ledger is gone, the state directory stays."""
        self._ledger = None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(clock):
    simulator = IammeterCloudSimulator(clock=clock)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def exporter(session, tmp_path, clock, sim):
    made = Exporter(session, tmp_path / "state", clock, sim.base_url)
    yield made
    made.restart()


# --- latest values -----------------------------------------------------------------------------


async def test_account_mode_gives_every_meter_labelled_by_name(exporter, sim):
    adapter = exporter.adapter(names=["DA2BED94=garage", "B384789C=solar"], installation="home", analysis=False)
    reading = await adapter.poll()
    assert {d.meter for d in reading.devices} == {"garage", "solar", "674B1E5D", "59C9AB8D", "3FE34ABE"}
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="garage", installation="home") == 225
    assert reading.value_of(M.ACCOUNT_ENERGY_IMPORTED, meter="garage") == pytest.approx(14761.03 * KWH)
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="solar") == pytest.approx(-2747, rel=0.01)  # 1 min later
    assert reading.value_of(M.ACCOUNT_PHASE_ACTIVE_POWER, meter="solar", phase="l3") is None  # a row of nulls
    assert reading.value_of(M.ACCOUNT_FREQUENCY, meter="3FE34ABE") == 49.99
    assert reading.value_of(M.ACCOUNT_MEASUREMENT_TIME, meter="674B1E5D") == seed.parse_utc("2024/2/22 3:45:50")
    assert [call.api for call in sim.calls] == ["login", "metersdata"]


async def test_account_mode_keeps_only_the_listed_sns(exporter):
    reading = await exporter.adapter(sns=["3FE34ABE"], analysis=False).poll()
    assert {d.serial for d in reading.devices} == {"3FE34ABE"}


async def test_meter_mode_reads_meterdata2_with_the_power_factor(exporter, sim):
    reading = await exporter.adapter(mode="meter", sns=["3FE34ABE", "DA2BED94"], analysis=False).poll()
    assert reading.value_of(M.ACCOUNT_PHASE_POWER_FACTOR, meter="3FE34ABE", phase="l2") == 0.94
    assert reading.value_of(M.ACCOUNT_PHASE_ENERGY_IMPORTED, meter="3FE34ABE", phase="l1") == pytest.approx(2704.35 * KWH)
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="DA2BED94") == 225
    assert reading.value_of(M.ACCOUNT_POWER_FACTOR, meter="DA2BED94") is None  # the seed's meter sends no PF
    assert Counter(call.api for call in sim.calls) == {"login": 1, "meterdata": 2}


async def test_meter_mode_basic_has_no_power_factor(exporter):
    reading = await exporter.adapter(mode="meter", sns=["3FE34ABE"], advanced=False, analysis=False).poll()
    assert reading.value_of(M.ACCOUNT_PHASE_ACTIVE_POWER, phase="l1") == 3650.1
    assert reading.value_of(M.ACCOUNT_PHASE_POWER_FACTOR) is None


async def test_values_move_on_with_time(exporter, clock):
    adapter = exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False)
    first = await adapter.poll()
    clock.now += 3600
    later = await adapter.poll()
    before = first.value_of(M.ACCOUNT_PHASE_ENERGY_IMPORTED, phase="l1")
    after = later.value_of(M.ACCOUNT_PHASE_ENERGY_IMPORTED, phase="l1")
    assert after - before == pytest.approx(3650.1 * 3600, rel=0.1)  # about one hour at 3.65 kW


# --- token -----------------------------------------------------------------------------------


async def test_the_token_is_stored_0600_and_reused_after_a_restart(exporter, sim, clock):
    adapter = exporter.adapter(analysis=False)
    await adapter.poll()
    path = exporter.directory / adapter.client.state_name
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["token"] in sim.tokens
    exporter.restart()
    clock.now += 300
    await exporter.adapter(analysis=False).poll()
    assert len(sim.calls_of("login")) == 1


async def test_an_invalid_token_means_one_new_login_then_the_call_again(exporter, sim, clock):
    adapter = exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False)
    await adapter.poll()
    sim.expire_tokens()
    clock.now += 300
    reading = await adapter.poll()
    assert reading.value_of(M.ACCOUNT_PHASE_VOLTAGE, phase="l1") == 230
    assert len(sim.calls_of("login")) == 2 and sim.violations == []


async def test_a_token_renewed_by_another_target_of_the_account_is_adopted(exporter, sim, clock):
    first = exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False)
    second = exporter.adapter(name="other", mode="meter", sns=["DA2BED94"], analysis=False)
    await first.poll()
    await second.poll()
    sim.expire_tokens()
    clock.now += 300
    await first.poll()
    await second.poll()
    assert len(sim.calls_of("login")) == 2


async def test_refused_credentials_are_not_retried_at_once(exporter, sim):
    adapter = exporter.adapter(password="wrong", analysis=False)
    for _ in range(3):
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "unauthorized"
    assert "wrong" not in err.value.message
    assert len(sim.calls_of("login")) == 1


async def test_twenty_restarts_in_an_hour_reuse_the_stored_token(exporter, sim, clock):
    for _ in range(20):
        exporter.restart()
        try:
            await exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False).poll()
        except PollError as exc:
            assert exc.reason == "quota"
        clock.now += 180
    assert len(sim.calls_of("login")) == 1
    assert sim.violations == []


async def test_twenty_restarts_in_an_hour_make_at_most_five_logins_even_without_the_token(exporter, sim, clock):
    reasons = Counter()
    for _ in range(20):
        exporter.restart()
        for stored in exporter.directory.glob("iammeter-cloud-*.json"):
            stored.unlink()  # the worst case: the token is lost every time, only the ledger survives
        try:
            await exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False).poll()
            reasons["ok"] += 1
        except PollError as exc:
            reasons[exc.reason] += 1
        clock.now += 180
    assert len(sim.calls_of("login")) == 5
    assert reasons == {"ok": 5, "quota": 15}
    assert sim.violations == []


# --- quotas ------------------------------------------------------------------------------------


async def test_a_poll_within_the_window_reuses_the_last_answer_without_a_call(exporter, sim, clock):
    adapter = exporter.adapter(analysis=False)
    first = await adapter.poll()
    clock.now += 120
    again = await adapter.poll()
    assert again.samples == first.samples
    assert len(sim.calls_of("metersdata")) == 1


async def test_a_poll_a_moment_early_waits_for_the_window(exporter, sim, clock):
    adapter = exporter.adapter(analysis=False)
    await adapter.poll()
    clock.now += 298
    await adapter.poll()
    assert len(sim.calls_of("metersdata")) == 2 and sim.violations == []


async def test_after_a_restart_a_call_that_does_not_fit_fails_with_quota_and_says_when(exporter, sim, clock):
    await exporter.adapter(analysis=False).poll()
    exporter.restart()
    clock.now += 60
    with pytest.raises(PollError) as err:
        await exporter.adapter(analysis=False).poll()
    assert err.value.reason == "quota"
    assert "1 per 5m" in err.value.message and "next call in 240s" in err.value.message
    assert len(sim.calls_of("metersdata")) == 1


async def test_the_over_quota_answer_is_recognised_logged_and_backed_off(exporter, sim, clock, session, tmp_path):
    # Another exporter on the same account (its own state) has just read metersdata.
    other = Exporter(session, tmp_path / "other", clock, sim.base_url)
    await other.adapter(analysis=False).poll()
    other.restart()
    adapter = exporter.adapter(analysis=False)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(PollError) as err:
            await adapter.poll()
    assert err.value.reason == "quota"
    assert "returned nothing" in err.value.message
    assert any(entry["event"] == "iammeter_cloud_returned_nothing" for entry in logs)
    assert len(sim.violations) == 1  # the other exporter's doing; ours is held back from now on
    clock.now += 120
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "quota" and "held back" in err.value.message
    assert len(sim.calls_of("metersdata")) == 2  # no call while held back
    exporter.restart()
    clock.now += 200  # the hold-off (5 minutes) survives the restart and then ends
    reading = await exporter.adapter(analysis=False).poll()
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="DA2BED94") is not None
    assert len(sim.violations) == 1


async def test_nothing_with_status_204_in_meter_mode(session, tmp_path, clock):
    sim = IammeterCloudSimulator(clock=clock, nothing_status=204, limits=seed.CloudLimits(meterdata_per_hour=1))
    await sim.start()
    try:
        exporter = Exporter(session, tmp_path, clock, sim.base_url)
        other = Exporter(session, tmp_path / "other", clock, sim.base_url)
        await other.adapter(mode="meter", sns=["3FE34ABE"], analysis=False).poll()
        with pytest.raises(PollError) as err:
            await exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False).poll()
        assert err.value.reason == "quota" and "returned nothing" in err.value.message
        other.restart()
        exporter.restart()
    finally:
        await sim.stop()


async def test_quota_remaining_is_exported(exporter, clock):
    store = SnapshotStore()
    ledger = exporter.ledger()
    ledger.listeners.append(lambda: store.set_quota(ledger.windows()))
    adapter = exporter.adapter(mode="meter", sns=["3FE34ABE"], analysis=False)
    await adapter.poll()
    text = exposition_text(store)
    name = "energy_meter_exporter_quota_remaining"
    assert sample_value(text, name, api="iammeter_meterdata", scope="3FE34ABE", window="hour") == 11
    assert sample_value(text, name, api="iammeter_meterdata", scope="3FE34ABE", window="day") == 287
    assert sample_value(text, name, api="iammeter_login", scope=adapter.client.login_quota.scope, window="hour") == 4
    assert sample_value(text, name, api="iammeter_login", scope=adapter.client.login_quota.scope, window="day") == 29


# --- analysis ---------------------------------------------------------------------------------


async def test_analysis_and_energy_history_within_their_quotas(exporter, sim, clock):
    # 10:00 in the account's zone, two days after the seed time; the meter was offline 1 h yesterday.
    clock.now = T0 + 2 * 86400 - 3 * 3600 - 46 * 60 - 20
    yesterday_noon = clock.now - 22 * 3600
    sim.meters["DA2BED94"].offline.append((yesterday_noon, yesterday_noon + 3600))
    sim.places["2393"].fixed.clear()
    adapter = exporter.adapter(sns=["DA2BED94"], places=["2393=home"])
    readings = [await adapter.poll()]
    for _ in range(3):
        clock.now += 300
        readings.append(await adapter.poll())
    reading = readings[-1]
    assert reading.value_of(M.ACCOUNT_OFFLINE_TIME, meter="DA2BED94") == 3600
    average = reading.value_of(M.ACCOUNT_AVERAGE_POWER, meter="DA2BED94")
    assert reading.value_of(M.ACCOUNT_MINIMUM_POWER) < average < reading.value_of(M.ACCOUNT_MAXIMUM_POWER)
    assert average == pytest.approx(225, rel=0.02)
    place = sim.places["2393"]
    from datetime import date
    today = date(2024, 2, 24)
    assert reading.value_of(M.PLACE_DAILY_YIELD, place="home", day="current") == pytest.approx(place.day(today)["yield"] * KWH)
    assert reading.value_of(M.PLACE_DAILY_GRID_IMPORT, place="home", day="previous") == pytest.approx(
        place.day(date(2024, 2, 23))["fromGrid"] * KWH)
    calls = Counter(call.api for call in sim.calls)
    assert calls == {"login": 1, "metersdata": 4, "powerAnalysis": 1, "offlineAnalysis": 1, "energyhistory": 1}
    # the history comes first, and at most two analysis calls go with one poll
    assert [c_.api for c_ in sim.calls[:4]] == ["login", "metersdata", "energyhistory", "powerAnalysis"]


async def test_a_failing_analysis_call_does_not_fail_the_poll(exporter, sim):
    reading = await exporter.adapter(sns=["DA2BED94"], places=["999"]).poll()  # no such place
    assert reading.value_of(M.ACCOUNT_ACTIVE_POWER, meter="DA2BED94") == 225


# --- two simulated days ------------------------------------------------------------------------


async def test_two_simulated_days_with_restarts_make_no_violation(exporter, sim, clock):
    sim.meters["DA2BED94"].offline.append((T0 + 5 * 3600, T0 + 6 * 3600))

    def start() -> list[cloud.IammeterCloudAdapter]:
        return [exporter.adapter(places=["2393=home", "1360"]),
                exporter.adapter(name="pv", mode="meter", sns=["3FE34ABE", "B384789C"])]

    adapters = start()
    end = T0 + 2 * 86400
    outcomes = Counter()
    step = 0
    while clock.now < end:
        for adapter in adapters:
            try:
                reading = await adapter.poll()
                outcomes["ok"] += 1
                assert reading.samples
            except PollError as exc:
                outcomes[exc.reason] += 1
        step += 1
        if step % 80 == 0 or 300 <= step < 310:  # restarts every ~7 h, and a crash loop at hour 25
            exporter.restart()
            adapters = start()
            clock.now += 20
            continue
        if step == 150:
            sim.expire_tokens()
        # The scheduler's grid, with the odd poll a few seconds early or late.
        clock.now += 300 + (-4 if step % 7 == 0 else 3 if step % 5 == 0 else 0)
    assert sim.violations == []
    polls = sum(outcomes.values())
    assert outcomes["ok"] >= 0.9 * polls, outcomes
    assert set(outcomes) <= {"ok", "quota"}, outcomes
    assert len(sim.calls_of("login")) == 2  # the first, and one after the token expired
    calls = Counter((call.api, call.scope) for call in sim.calls)
    assert calls["metersdata", "test"] >= 450  # early polls use the last answer
    for sn in ("DA2BED94", "3FE34ABE", "B384789C"):
        assert 2 <= calls["powerAnalysis", sn] <= 10 and 2 <= calls["offlineAnalysis", sn] <= 10
    assert calls["energyhistory", "2393"] >= 40


# --- configuration -----------------------------------------------------------------------------


def write_config(tmp_path: Path, *targets: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("targets:\n" + "".join(targets))
    return path


CLOUD = "  - name: {name}\n    vendor: iammeter\n    transport: cloud\n    username: {user}\n    password: x\n"


def test_an_interval_that_breaks_a_quota_is_refused_with_the_limit(tmp_path):
    path = write_config(tmp_path, CLOUD.format(name="acct", user="me") + "    interval: 60s\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "interval 60s would exceed metersdata's quota of 1 call per 5 minutes" in str(err.value)
    assert "config.yaml:7" in str(err.value)
    path = write_config(tmp_path, CLOUD.format(name="pv", user="me") + "    mode: meter\n    sns: [3FE34ABE]\n"
                        "    interval: 4m\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "meterdata's quota of 12 calls per hour per meter" in str(err.value)


def test_targets_sharing_a_quota_are_refused_together(tmp_path):
    path = write_config(tmp_path, CLOUD.format(name="a", user="me"), CLOUD.format(name="b", user="me"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "targets a, b share metersdata's quota" in str(err.value)
    path = write_config(tmp_path, CLOUD.format(name="a", user="me"), CLOUD.format(name="b", user="you"))
    config = load_config(path)
    assert [t.interval for t in config.targets] == [300, 300]
    assert config.targets[0].jitter == 0 and config.targets[0].timeout == 20


def test_option_mistakes_are_reported(tmp_path):
    path = write_config(tmp_path, CLOUD.format(name="a", user="me") + "    mode: meter\n    names: [nameless]\n"
                        "    places: [home]\n    base_url: ftp://x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    for expected in ("mode meter reads the meters listed in sns", '"SN=name"', "place id", "not an http(s) address"):
        assert expected in text
    # A value of the wrong type is reported first, with its line.
    path = write_config(tmp_path, CLOUD.format(name="a", user="me") + "    timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "config.yaml:7: targets[0].timezone: unknown time zone 'Mars/Olympus'" in str(err.value)


# --- error paths, from a scripted server ---------------------------------------------------------


class Scripted:
    """A server answering each path with the next scripted (status, body) in turn."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, bytes]]] = {}
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    def then(self, path: str, status: int, body: bytes | dict) -> None:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        self.script.setdefault(path, []).append((status, raw))

    async def _handle(self, request: web.Request) -> web.Response:
        answers = self.script.get(request.path) or [(404, b"")]
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(status=status, body=body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_http_errors_are_classified(tmp_path, clock, session):
    server = Scripted()
    await server.start()
    exporter = Exporter(session, tmp_path, clock, server.base_url)
    path = "/api/v1/site/meterdata2/SN1"
    server.then("/api/v1/user/login", 200, {"data": {"id": 1, "token": "t1"}, "successful": True, "message": None})
    try:
        adapter = exporter.adapter(mode="meter", sns=["SN1"], analysis=False)
        server.then(path, 500, b"oops")
        server.then(path, 429, b"")
        server.then(path, 401, b"")
        server.then(path, 200, seed.SEED_METERDATA2_SINGLE)
        server.then(path, 200, b"[]")
        server.then(path, 200, {"data": None, "successful": False, "message": "The meter does not exist"})
        server.then(path, 204, b"")
        expected = ["http_error", "quota", None, "parse", "http_error", "quota"]
        for step, reason in enumerate(expected):
            clock.now += 3600 * 2  # past any hold-off
            try:
                reading = await adapter.poll()
                assert reason is None, step
                assert reading.value_of(M.ACCOUNT_POWER_FACTOR) == 0.66  # after the 401: new login, call again
            except PollError as exc:
                assert exc.reason == reason, (step, exc.message)
    finally:
        exporter.restart()
        await server.runner.cleanup()


async def test_unreachable_cloud_is_a_connection_error(tmp_path, clock, session):
    from .conftest import free_port

    exporter = Exporter(session, tmp_path, clock, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(PollError) as err:
            await exporter.adapter(analysis=False).poll()
        assert err.value.reason == "connection"
    finally:
        exporter.restart()


# --- in the daemon -----------------------------------------------------------------------------


async def test_the_daemon_exports_the_account_and_its_quota(tmp_path):
    from exporter.daemon import Daemon

    from .conftest import async_wait_until, http_get

    sim = IammeterCloudSimulator()  # real clock, like the daemon's
    await sim.start()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"state_directory: {tmp_path / 'state'}\ntargets:\n" + CLOUD.format(name="acct", user="test").replace(
            "password: x", "password: '123456'") + f"    base_url: {sim.base_url}\n    names: [DA2BED94=garage]\n")
    daemon = Daemon(load_config(config_path))
    port = await daemon.start("127.0.0.1", 0)
    try:
        def body() -> str:
            return exposition_text(daemon.store)

        await async_wait_until(lambda: "energy_meter_account_active_power_watts" in body(), timeout=20,
                               what="the first poll")
        text = await asyncio.to_thread(lambda: http_get(f"http://127.0.0.1:{port}/metrics")[2].decode())
        assert sample_value(text, "energy_meter_account_active_power_watts", device="acct", meter="garage",
                            vendor="iammeter") is not None
        assert sample_value(text, "energy_meter_exporter_quota_remaining", api="iammeter_metersdata",
                            scope="test", window="5m") == 0
        assert sample_value(text, "energy_meter_device_info", device="acct", meter="garage", serial="DA2BED94") == 1
    finally:
        await daemon.stop()
        await sim.stop()
