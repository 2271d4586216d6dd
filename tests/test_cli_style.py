"""The helper commands' shared style: progress while waiting (a live line on a terminal, plain
lines otherwise), a verdict and a `Next:` line at the end, documented exit statuses; and the
tables of the documentation that document them."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.cli import build_parser
from exporter.console import NEXT_STEPS, PLAIN_EVERY, Console
from exporter.model.errors import REASONS
from exporter.vendors.homewizard.pairing import pair_command
from simulators.homewizard import HomeWizardSimulator

from .conftest import free_port

DOCS = Path(__file__).resolve().parents[1] / "docs"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_is_rate_limited_and_keeps_the_last_line():
    err, clock = io.StringIO(), FakeClock()
    console = Console(err=err, out=io.StringIO(), interactive=False, clock=clock)
    for left in (10, 9.5, 9):  # within PLAIN_EVERY of the first: one line only
        console.countdown("waiting for the button", left)
        clock.now += 0.5
    clock.now += PLAIN_EVERY
    console.countdown("waiting for the button", 3)
    for done in range(1, 11):
        console.progress("scanning", done, 10, f"{done} answered")
    console.next("do this")
    lines = err.getvalue().splitlines()
    assert lines[0] == "  waiting for the button ...   10s left"
    assert lines[1] == "  waiting for the button ...    3s left"
    assert "\r" not in err.getvalue()
    # The first progress line, then nothing until the last (which is always shown).
    assert lines[2] == "  scanning [##----------------------] 1/10, 1 answered"
    assert lines[3] == "  scanning [########################] 10/10, 10 answered"
    assert lines[4] == "Next: do this"


def test_on_a_terminal_progress_is_one_live_line_ended_before_the_verdict():
    err = io.StringIO()
    console = Console(err=err, out=io.StringIO(), interactive=True)
    for left in (3, 2, 1):
        console.countdown("waiting", left)
    console.failed("the button was not pressed")
    console.next("run it again")
    text = err.getvalue()
    assert text.count("\r\033[2K") == 3  # rewritten in place
    assert text.endswith("1s left\nFailed: the button was not pressed\nNext: run it again\n")


def test_the_product_goes_to_stdout_and_the_rest_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    console = Console(err=err, out=out, interactive=False)
    console.say("Scanning ...")
    console.product("targets: []")
    console.ok("found 0 devices")
    assert out.getvalue() == "targets: []\n"
    assert err.getvalue() == "Scanning ...\nOK: found 0 devices\n"


def test_every_reason_has_a_next_step_and_a_troubleshooting_row():
    assert set(NEXT_STEPS) == set(REASONS)
    section = (DOCS / "troubleshooting.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    missing = set(REASONS) - rows
    assert not missing, f"reasons missing from the troubleshooting table (docs/troubleshooting.md): {sorted(missing)}"


def test_every_command_is_in_the_command_table_with_its_exit_statuses():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = (DOCS / "operations.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)[^`]*` \| [^|]+ \| ([^|]+) \|$", text, re.MULTILINE))
    for command in subparsers.choices:
        assert command in rows, f"`{command}` is missing from the command table (docs/operations.md)"
        assert re.match(r"0 \w+", rows[command].strip()), f"`{command}`: exit statuses not documented"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60)


def last_line(text: str) -> str:
    return text.rstrip().splitlines()[-1]


def test_check_config_ends_with_the_next_step(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("targets:\n  - name: p1\n    vendor: homewizard\n    host: 192.0.2.1\n")
    result = run_cli("check-config", f"--config.file={good}")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"{good}: valid, 1 targets", "  p1: homewizard local, every 10s"]
    assert last_line(result.stderr).startswith("Next: run `energy-meter-exporter probe p1`")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  - name: p1\n    vendor: homewizard\n")
    result = run_cli("check-config", f"--config.file={bad}")
    assert result.returncode == 2 and result.stdout == ""
    assert "missing required key 'host'" in result.stderr
    assert last_line(result.stderr).startswith("Next: correct the lines above")


def test_probe_failure_says_what_to_do(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""
        targets:
          - name: gone
            vendor: homewizard
            host: 127.0.0.1:{free_port()}
    """))
    result = run_cli("probe", "gone", f"--config.file={config}")
    assert result.returncode == 1 and result.stdout == ""
    assert "Failed: gone: poll failed (connection)" in result.stderr
    assert last_line(result.stderr) == f"Next: {NEXT_STEPS['connection']}; then run `energy-meter-exporter probe gone` again"
    result = run_cli("probe", "ghost", f"--config.file={config}")
    assert result.returncode == 2 and "no target named 'ghost'" in result.stderr
    assert last_line(result.stderr).startswith("Next: ")


def test_probe_success_puts_metrics_on_stdout_and_the_verdict_on_stderr(tmp_path, loop_thread):
    sim = loop_thread.run(HomeWizardSimulator("HWE-SKT", v2=False).start())
    try:
        config = tmp_path / "c.yaml"
        config.write_text(f"targets:\n  - name: socket\n    vendor: homewizard\n    host: {sim.v1_host}\n")
        result = run_cli("probe", "socket", f"--config.file={config}")
    finally:
        loop_thread.run(sim.stop())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# device: model=HWE-SKT")
    assert all(line.startswith(("#", "energy_meter_")) for line in result.stdout.splitlines())
    assert re.search(r"^OK: socket answered in [0-9.]+s with \d+ samples$", result.stderr, re.MULTILINE)
    assert last_line(result.stderr).startswith("Next: start the exporter")


async def test_pairing_that_times_out_ends_with_the_next_step(capsys):
    sim = await HomeWizardSimulator("HWE-P1").start()
    try:
        args = argparse.Namespace(host=sim.v2_host, name="test", timeout=1.0, ca_file=str(sim.ca_file),
                                  insecure=False, output=None)
        status = await pair_command(args)
    finally:
        await sim.stop()
    err = capsys.readouterr().err
    assert status == 1
    assert "waiting for the button" in err
    assert "Failed: the button was not pressed within 1 seconds" in err
    assert last_line(err).startswith("Next: ")


@pytest.mark.parametrize("args, status", [
    (["discover", "--no-mdns", "--scan", "256.1.1.1/24"], 2),
    (["discover", "--no-mdns", "--ports", "eighty", "--scan", "127.0.0.1"], 2),
])
def test_discover_bad_input(args, status):
    result = run_cli(*args)
    assert result.returncode == status and result.stdout == ""
    assert last_line(result.stderr).startswith("Next: ")


def test_vendor_commands_come_from_the_registry_and_load_only_when_used():
    from exporter.vendors import registry

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    offered = registry.commands()
    assert {"pair", "token", "backfill"} <= set(offered) <= set(subparsers.choices)
    assert {name: [v.name for v, _ in entries] for name, entries in offered.items()} == {
        "pair": ["homewizard"], "backfill": ["iammeter"], "token": ["enphase"]}
    # Starting the daemon parses its flags only: no vendor's command module (nor discovery) is imported.
    code = ("import sys; from exporter.cli import build_parser; build_parser().parse_args(['--shard', '0/2']); "
            "print(sorted(m for m in sys.modules if m.startswith('exporter.vendors.') and m.count('.') > 2 "
            "or m == 'exporter.discover'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
    result = run_cli("token", "acme")
    assert result.returncode == 2 and "invalid choice: 'acme' (choose from 'enphase')" in result.stderr
    result = run_cli("pair", "homewizard", "--help")
    assert result.returncode == 0 and "--ca-file" in result.stdout
