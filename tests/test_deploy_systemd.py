"""deploy/systemd: the unit passes systemd's own checks, and its command line runs the exporter
the way the unit promises (reload on SIGHUP, stop on SIGTERM, exit 2 on a bad configuration)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, http_get, require_binary, sample_value, wait_until

UNIT = ROOT / "deploy" / "systemd" / "energy-meter-exporter.service"
INSTALLED = "/opt/energy-meter-exporter/bin/energy-meter-exporter"
EXPORTER = Path(sys.executable).with_name("energy-meter-exporter")


def unit_settings() -> dict[str, list[str]]:
    """The unit's key=value lines by key (continuation lines joined, comments left out)."""
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's exporter instead of /opt."""
    if not EXPORTER.exists():
        pytest.skip(f"{EXPORTER} not found (the exporter installed into this virtual environment)")
    unit = tmp_path / "energy-meter-exporter.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(EXPORTER)))
    return unit


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = require_binary("systemd-analyze")
    result = subprocess.run([analyze, "verify", "--man=no", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_is_hardened(tmp_path):
    analyze = require_binary("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    # systemd's scale: 0 (locked down) to 10 (unprotected); below 2 it rates "OK".
    assert float(found.group(1)) < 2.0, result.stdout
    settings = unit_settings()
    for key, value in [("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("CapabilityBoundingSet", ""), ("StateDirectory", "energy-meter-exporter")]:
        assert settings.get(key) == [value], key


def _command(config_dir: Path, port: int) -> list[str]:
    """ExecStart as systemd runs it: ${CONFIGURATION_DIRECTORY} expanded, this checkout's exporter,
    listening on loopback only."""
    (line,) = unit_settings()["ExecStart"]
    line = line.replace("${CONFIGURATION_DIRECTORY}", str(config_dir)).replace(INSTALLED, str(EXPORTER))
    return [arg.replace("--web.listen-address=:9896", f"--web.listen-address=127.0.0.1:{port}")
            for arg in shlex.split(line)]


def test_the_units_command_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    if not EXPORTER.exists():
        pytest.skip(f"{EXPORTER} not found")
    config_dir, state = tmp_path / "etc", tmp_path / "state"
    config_dir.mkdir()
    state.mkdir(mode=0o700)
    config = config_dir / "config.yaml"
    target = "targets:\n  - {{name: meter, vendor: homewizard, host: '127.0.0.1:{port}', interval: {interval}}}\n"
    # The state directory as the unit gives it: $STATE_DIRECTORY, and the working directory.
    header = "state_directory: ${STATE_DIRECTORY}\n"
    config.write_text(header + target.format(port=free_port(), interval="30s"))
    port = free_port()
    env = dict(os.environ, STATE_DIRECTORY=str(state))
    proc = subprocess.Popen(_command(config_dir, port), cwd=state, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is None and http_get(url + "/-/healthy", timeout=1)[0] == 200,
                   what="the exporter started by the unit's command")
        config.write_text(header + target.format(port=free_port(), interval="45s"))
        proc.send_signal(signal.SIGHUP)  # ExecReload

        def reloaded() -> bool:
            text = http_get(url + "/metrics")[2].decode()
            targets = json.loads(http_get(url + "/api/v1/targets")[2])["targets"]
            return (sample_value(text, "energy_meter_exporter_config_last_reload_successful") == 1
                    and targets[0]["interval"] == 45.0)

        wait_until(reloaded, what="the configuration reloaded on SIGHUP")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # TimeoutStopSec=15s
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_configuration_exits_2_which_the_unit_does_not_restart(tmp_path):
    if not EXPORTER.exists():
        pytest.skip(f"{EXPORTER} not found")
    assert unit_settings()["RestartPreventExitStatus"] == ["2"]
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text("targets:\n  - {name: meter, vendor: acme}\n")
    result = subprocess.run(_command(config_dir, free_port()), cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "config.yaml:2" in result.stderr + result.stdout and "acme" in result.stderr + result.stdout
