"""`energy-meter-exporter pair homewizard HOST` against the simulator's button."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from simulators.homewizard import HomeWizardSimulator
from exporter.vendors.homewizard.pairing import PairingError, pair


async def test_pairing_waits_for_the_button_then_returns_a_working_token():
    sim = await HomeWizardSimulator("HWE-P1").start()
    try:
        ticks: list[float] = []

        def progress(left: float) -> None:
            ticks.append(left)
            if len(ticks) == 2:
                sim.press_button()

        result = await pair(sim.v2_host, "test", timeout=20, ca_file=str(sim.ca_file), progress=progress)
        assert len(ticks) == 2  # it retried while the device answered creation-not-enabled
        assert ticks[0] > ticks[1]  # countdown
        assert result.serial == sim.serial
        assert result.token in sim.tokens
        assert sim.requests.count("v2 POST /api/user") == 3
    finally:
        await sim.stop()


async def test_pairing_gives_up_cleanly_after_the_timeout():
    sim = await HomeWizardSimulator("HWE-P1").start()
    try:
        now = [0.0]

        def clock():
            return now[0]

        def progress(left):
            now[0] += 1.0  # each retry costs a simulated second

        with pytest.raises(PairingError, match="not pressed within 3 seconds"):
            await pair(sim.v2_host, "test", timeout=3, ca_file=str(sim.ca_file), progress=progress, clock=clock)
        assert not sim.tokens
    finally:
        await sim.stop()


async def test_pairing_refuses_an_untrusted_device():
    sim = await HomeWizardSimulator("HWE-P1").start()
    try:
        with pytest.raises(PairingError, match="cannot reach"):
            await pair(sim.v2_host, "test", timeout=3)  # the bundled real CA did not sign the simulator
    finally:
        await sim.stop()


def test_pair_command_writes_a_private_token_file(tmp_path, loop_thread):
    sim = loop_thread.run(HomeWizardSimulator("HWE-P1", auto_button_after=1.0).start())
    try:
        out = tmp_path / "p1.token"
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "pair", "homewizard", sim.v2_host, "--ca-file", str(sim.ca_file),
             "--output", str(out), "--timeout", "15"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Press the button" in proc.stderr
        assert "waiting for the button" in proc.stderr
        token = out.read_text().strip()
        assert token in sim.tokens
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        assert token not in proc.stderr and token not in proc.stdout  # the token goes to the file only
        assert f"token_file: {out}" in proc.stderr
    finally:
        loop_thread.run(sim.stop())


def test_pair_command_timeout_exit_status(tmp_path, loop_thread):
    sim = loop_thread.run(HomeWizardSimulator("HWE-P1").start())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "pair", "homewizard", sim.v2_host, "--ca-file", str(sim.ca_file),
             "--output", str(tmp_path / "t"), "--timeout", "2"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 1
        assert "not pressed within 2 seconds" in proc.stderr
        assert not (tmp_path / "t").exists()
    finally:
        loop_thread.run(sim.stop())
