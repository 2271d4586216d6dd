"""`backfill iammeter`: cloud history -> OpenMetrics -> promtool create-blocks -> the values back."""

from __future__ import annotations

import logging
import re
import subprocess
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import structlog

from exporter.cli import main
from exporter.runtime import quota
from exporter.runtime.state import StateDirectory
from exporter.vendors.iammeter import backfill, cloud_client
from simulators.iammeter_cloud import IammeterCloudSimulator

from .conftest import free_port, require_binary

KWH = 3.6e6
ZONE = ZoneInfo("Asia/Shanghai")  # the simulated account's zone (UTC+8)
DUMP_LINE = re.compile(r"^\{(?P<labels>.*)\} (?P<value>\S+) (?P<ms>\d+)$")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_chunks_hold_at_most_2000_points_and_cover_the_range():
    for interval in (60, 300, 900, 3600):
        parts = backfill.chunks(date(2024, 1, 1), date(2024, 3, 31), interval)
        assert parts[0][0] == date(2024, 1, 1) and parts[-1][1] == date(2024, 3, 31)
        for (first, last), (following, _) in zip(parts, parts[1:]):
            assert following == last + timedelta(days=1)
        for first, last in parts:
            assert ((last - first).days + 1) * 86400 // interval <= 2000
    assert len(backfill.chunks(date(2024, 1, 1), date(2024, 1, 3), 60)) == 3  # 1440 points a day
    assert backfill.chunks(date(2024, 1, 1), date(2024, 1, 12), 300) == [
        (date(2024, 1, 1), date(2024, 1, 6)), (date(2024, 1, 7), date(2024, 1, 12))]


def test_bad_plans_are_refused():
    plan = backfill.Plan(sns=("SN",), start=date(2024, 1, 2), end=date(2024, 1, 1), interval=45,
                         labels={"meter": "x"})
    problems = " ".join(backfill.validate(plan))
    assert "before --start" in problems and "--interval 45" in problems and "--label meter" in problems


def parse_dump(text: str) -> dict[tuple, list[tuple[float, float]]]:
    out: dict[tuple, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        match = DUMP_LINE.match(line)
        if not match:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match["labels"])))
        out.setdefault(labels, []).append((int(match["ms"]) / 1000, float(match["value"])))
    return out


def series(dump: dict, **wanted: str) -> list[tuple[float, float]]:
    found = [points for labels, points in dump.items() if all((k, v) in labels for k, v in wanted.items())]
    assert len(found) == 1, (wanted, len(found))
    return found[0]


async def test_history_goes_through_promtool_and_reads_back(tmp_path):
    promtool = require_binary("promtool")
    clock = Clock(datetime(2024, 3, 1, 12, tzinfo=ZONE).timestamp())
    sim = IammeterCloudSimulator(clock=clock)
    meter = sim.meters["3FE34ABE"]
    meter.offline.append((datetime(2024, 2, 27, 10, tzinfo=ZONE).timestamp(),
                          datetime(2024, 2, 27, 11, tzinfo=ZONE).timestamp()))
    await sim.start()
    state = StateDirectory(tmp_path / "state")
    output = tmp_path / "history.om"
    try:
        async with aiohttp.ClientSession() as session:
            client = cloud_client.CloudClient(session, state, quota.QuotaLedger(state, clock), clock, structlog.get_logger(),
                                       sim.base_url, "test", "123456")
            plan = backfill.Plan(sns=("3FE34ABE", "DA2BED94"), start=date(2024, 2, 20), end=date(2024, 2, 28),
                                 interval=300, names={"DA2BED94": "garage"}, device="home-cloud",
                                 labels={"job": "energy-meter"}, zone=ZONE, pause=0)
            result = await backfill.run_backfill(client, plan, output)
    finally:
        await sim.stop()
    assert sim.violations == []
    assert [c.api for c in sim.calls] == ["login"] + ["meterdatalist"] * 4  # 9 days = 6 + 3 days per meter
    assert result.points == 2 * 9 * 288 - 12  # the hour offline has no points
    text = output.read_text()
    assert text.endswith("# EOF\n")
    assert "# TYPE energy_meter_account_phase_energy_imported_joules counter\n" in text

    tsdb = tmp_path / "tsdb"
    created = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
                              str(output), str(tsdb)],
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr + created.stdout
    (tsdb / "wal").mkdir(exist_ok=True)  # `tsdb dump` opens the directory like a Prometheus would
    dumped = subprocess.run([promtool, "tsdb", "dump", "--match",
                             '{__name__=~"energy_meter_account_(phase_energy_imported_joules_total|active_power_watts)"}',
                             str(tsdb)], capture_output=True, text=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr
    dump = parse_dump(dumped.stdout)

    imported = series(dump, __name__="energy_meter_account_phase_energy_imported_joules_total", meter="3FE34ABE",
                      phase="l1", device="home-cloud", vendor="iammeter", job="energy-meter", obis="1-0:21.8.0")
    assert len(imported) == 9 * 288 - 12
    for moment, value in imported[::97]:
        assert value == pytest.approx(meter.rows_at(moment)[0][3] * KWH)
    assert all(b[1] >= a[1] for a, b in zip(imported, imported[1:]))  # a counter that only grows
    first = datetime(2024, 2, 20, tzinfo=ZONE).timestamp() + meter.upload_second
    assert imported[0][0] == first

    power = series(dump, __name__="energy_meter_account_active_power_watts", meter="garage")
    garage = sim.meters["DA2BED94"]
    assert len(power) == 9 * 288
    moment, value = power[1000]
    assert value == pytest.approx(garage.rows_at(moment)[0][2])
    assert power[-1][0] < datetime(2024, 2, 29, tzinfo=ZONE).timestamp()


async def test_one_minute_points_come_one_day_per_call(tmp_path):
    clock = Clock(datetime(2024, 3, 1, 12, tzinfo=ZONE).timestamp())
    sim = IammeterCloudSimulator(clock=clock)
    await sim.start()
    state = StateDirectory(tmp_path / "state")
    try:
        async with aiohttp.ClientSession() as session:
            client = cloud_client.CloudClient(session, state, quota.QuotaLedger(state, clock), clock, structlog.get_logger(),
                                       sim.base_url, "test", "123456")
            plan = backfill.Plan(sns=("B384789C",), start=date(2024, 2, 26), end=date(2024, 2, 28), interval=60,
                                 api="meterdatalist2", zone=ZONE, pause=0)
            result = await backfill.run_backfill(client, plan, tmp_path / "out.om")
    finally:
        await sim.stop()
    assert sim.violations == [] and result.calls == 3 and result.points == 3 * 1440
    text = (tmp_path / "out.om").read_text()
    assert "energy_meter_account_phase_active_power_watts{" in text
    assert 'phase="l3"' not in text  # the seed meter's third phase is a row of nulls


@pytest.fixture(autouse=True)
def keep_logging():
    """`main()` points the log at this test's captured stderr; the tests after it need theirs."""
    saved = structlog.get_config()
    level = logging.getLogger("pymodbus").level
    yield
    structlog.configure(**saved)
    logging.getLogger("pymodbus").setLevel(level)


def run_cli(*args: str) -> int:
    try:
        return main(["backfill", "iammeter", *args])
    except SystemExit as exc:  # argparse refusals
        return int(exc.code)


def test_cli_exit_statuses(tmp_path, loop_thread, capsys):
    sim = IammeterCloudSimulator()  # real clock: the history of the last days
    loop_thread.run(sim.start())
    password = tmp_path / "password"
    password.write_text("123456\n")
    today = datetime.now(ZONE).date()
    common = ["--username", "test", "--password-file", str(password), "--base-url", sim.base_url,
              "--timezone", "Asia/Shanghai", "--state-directory", str(tmp_path / "state"), "--pause", "0"]
    output = tmp_path / "out.om"
    try:
        status = run_cli(*common, "--sn", "DA2BED94", "--start", str(today - timedelta(days=3)), "--output", str(output),
                         "--label", "instance=cloud")
        assert status == 0, capsys.readouterr().err
        assert "promtool tsdb create-blocks-from openmetrics" in capsys.readouterr().out
        assert 'instance="cloud"' in output.read_text()
        # every meter of the account, when no SN is given (found with one metersdata call)
        status = run_cli(*common, "--start", str(today - timedelta(days=1)), "--output", str(tmp_path / "all.om"))
        assert status == 0, capsys.readouterr().err
        assert 'meter="674B1E5D"' in (tmp_path / "all.om").read_text()
        assert [c.api for c in sim.calls].count("login") == 1  # the token of the first run was kept
        # bad input: 2
        assert run_cli(*common, "--sn", "DA2BED94", "--start", "2024-02-30", "--output", str(output)) == 2
        assert run_cli(*common, "--sn", "DA2BED94", "--start", str(today), "--end", str(today - timedelta(days=2)),
                       "--output", str(output)) == 2
        assert run_cli(*common, "--sn", "DA2BED94", "--start", str(today), "--interval", "90",
                       "--output", str(output)) == 2
        assert run_cli("--username", "test", "--sn", "X", "--start", str(today), "--output", str(output)) == 2
        assert run_cli("--target", "nope", "--config.file", str(tmp_path / "missing.yaml"), "--start", str(today),
                       "--output", str(output)) == 2
        # runtime failures: 1
        assert run_cli(*common, "--sn", "NOSUCHSN", "--start", str(today - timedelta(days=1)),
                       "--output", str(tmp_path / "x.om")) == 1
        assert "does not exist" in capsys.readouterr().err
        unreachable = [a if a != sim.base_url else f"http://127.0.0.1:{free_port()}" for a in common]
        assert run_cli(*unreachable, "--sn", "DA2BED94", "--start", str(today - timedelta(days=1)),
                       "--output", str(output)) == 1
        assert not (tmp_path / "x.om").exists()
    finally:
        loop_thread.run(sim.stop())


def test_cli_takes_the_account_from_a_configured_target(tmp_path, loop_thread, capsys):
    sim = IammeterCloudSimulator()
    loop_thread.run(sim.start())
    config = tmp_path / "config.yaml"
    config.write_text(f"state_directory: state\ntargets:\n  - name: home\n    vendor: iammeter\n    transport: cloud\n"
                      f"    username: test\n    password: '123456'\n    base_url: {sim.base_url}\n"
                      f"    sns: [3FE34ABE]\n    names: [3FE34ABE=house]\n    timezone: Asia/Shanghai\n")
    today = datetime.now(ZONE).date()
    try:
        status = run_cli("--config.file", str(config), "--target", "home", "--start", str(today - timedelta(days=1)),
                         "--output", str(tmp_path / "out.om"), "--pause", "0")
        assert status == 0, capsys.readouterr().err
        text = (tmp_path / "out.om").read_text()
        assert 'device="home"' in text and 'meter="house"' in text
        assert (tmp_path / "state").is_dir()  # the configuration's state directory keeps the token
    finally:
        loop_thread.run(sim.stop())
