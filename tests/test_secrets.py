"""Secrets never leak: one exporter process with a target of every transport holding known,
distinctive secrets, driven through successes and failures (wrong token, wrong password,
unreachable device, 401, broker down), then every place a user or an attacker could read is
searched for them: the log (debug level), /metrics in both formats, the landing page, the JSON
API, `probe` and `check-config` output, and the state directory's files other than tokens.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from simulators.enphase import EnlightenSimulator, GatewaySimulator, TokenIssuer
from simulators.homewizard import HomeWizardSimulator
from simulators.iammeter import IammeterHttpSimulator
from simulators.iammeter_cloud import IammeterCloudSimulator
from simulators.iometer_partner import PartnerApiSimulator

from .conftest import ExporterProcess, free_port, http_get, require_binary

HW_TOKEN = "aa11bb22cc33dd44ee55ff6600778899"
HW_WRONG = "99887766554433221100ffeeddccbbaa"
IAM_PASSWORD = "Iam-Legacy-Pw-7Q2x"
IAM_WRONG = "Iam-Wrong-Pw-3K9z"
CLOUD_PASSWORD = "Cloud-Pw-Zebra-4471"
CLOUD_WRONG = "Cloud-Wrong-Pw-Okapi-8812"
MQTT_PASSWORD = "Mqtt-Broker-Pw-Lynx-5530"
ENLIGHTEN_PASSWORD = "Enlighten-Pw-Heron-2290"
ENLIGHTEN_UNREACHABLE = "Enlighten-Pw-Ibis-6617"
PARTNER_SECRET = "PartnerSecretMarmot0042xyz"
PARTNER_WRONG = "PartnerSecretWrongBadger77"
ENPHASE_USER = "owner@example.com"


def forms(secret: str, users: tuple[str, ...]) -> list[str]:
    """The secret and the encodings Basic or WSSE authentication could echo."""
    out = [secret, base64.b64encode(secret.encode()).decode().rstrip("=")]
    out += [base64.b64encode(f"{user}:{secret}".encode()).decode().rstrip("=") for user in users]
    return out


def run_cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "exporter", *args, f"--config.file={config}"],
                          capture_output=True, text=True, timeout=60, cwd=config.parent)
    return done.stdout + done.stderr


def test_no_secret_leaks_anywhere(tmp_path, loop_thread):
    require_binary("mosquitto")
    from simulators.iammeter_push import MosquittoBroker

    async def start():
        hw = await HomeWizardSimulator("HWE-P1", v1=False).start()
        hw.tokens.add(HW_TOKEN)
        legacy = IammeterHttpSimulator("WEM3162", username="admin", password=IAM_PASSWORD)
        await legacy.start()
        cloud = IammeterCloudSimulator(username="cloud-user", password=CLOUD_PASSWORD)
        await cloud.start()
        broker = await MosquittoBroker(username="mqtt-user", password=MQTT_PASSWORD,
                                       directory=tmp_path / "mosquitto").start()
        issuer = TokenIssuer()
        gateway = await GatewaySimulator(issuer=issuer).start()
        enlighten = await EnlightenSimulator(issuer, {ENPHASE_USER: ENLIGHTEN_PASSWORD}).start()
        partner = PartnerApiSimulator(secret=PARTNER_SECRET)
        await partner.start()
        return hw, legacy, cloud, broker, gateway, enlighten, partner

    hw, legacy, cloud, broker, gateway, enlighten, partner = loop_thread.run(start())
    enphase_token = gateway.mint_token()
    dead_port = free_port()
    try:
        config = {
            "state_directory": str(tmp_path / "state"),
            "mqtt_brokers": [{"name": "home", "host": "127.0.0.1", "port": broker.port, "username": "mqtt-user",
                              "password": MQTT_PASSWORD, "reconnect_delay": 0.2}],
            "defaults": {"timeout": "1s"},
            "targets": [
                {"name": "hw-good", "vendor": "homewizard", "host": hw.v2_host, "token": HW_TOKEN,
                 "ca_file": str(hw.ca_file), "interval": "1s"},
                {"name": "hw-wrong-token", "vendor": "homewizard", "host": hw.v2_host, "token": HW_WRONG,
                 "ca_file": str(hw.ca_file), "interval": "1s"},
                {"name": "iam-legacy", "vendor": "iammeter", "host": legacy.host, "username": "admin",
                 "password": IAM_PASSWORD, "legacy": True, "interval": "1s"},
                {"name": "iam-legacy-401", "vendor": "iammeter", "host": legacy.host, "username": "admin",
                 "password": IAM_WRONG, "legacy": True, "interval": "1s"},
                {"name": "iam-cloud", "vendor": "iammeter", "transport": "cloud", "base_url": cloud.base_url,
                 "username": "cloud-user", "password": CLOUD_PASSWORD},
                {"name": "iam-cloud-wrong", "vendor": "iammeter", "transport": "cloud", "base_url": cloud.base_url,
                 "username": "other-user", "password": CLOUD_WRONG},
                {"name": "iam-mqtt", "vendor": "iammeter", "transport": "mqtt", "broker": "home", "sn": "3E0BAF87",
                 "interval": "2s"},
                {"name": "enphase", "vendor": "enphase", "host": gateway.host, "username": ENPHASE_USER,
                 "password": ENLIGHTEN_PASSWORD, "enlighten_url": enlighten.url, "token_url": enlighten.url,
                 "tls_fingerprint": gateway.fingerprint, "nightly_window": "off", "interval": "5s"},
                {"name": "enphase-token", "vendor": "enphase", "host": gateway.host, "token": enphase_token,
                 "tls_fingerprint": gateway.fingerprint, "nightly_window": "off", "interval": "5s"},
                {"name": "enphase-unreachable", "vendor": "enphase", "host": f"127.0.0.1:{dead_port}",
                 "username": ENPHASE_USER, "password": ENLIGHTEN_UNREACHABLE, "enlighten_url": enlighten.url,
                 "token_url": enlighten.url, "nightly_window": "off", "interval": "5s"},
                {"name": "partner", "vendor": "iometer", "transport": "partner", "partner_id": partner.partner_id,
                 "secret": PARTNER_SECRET, "endpoint": partner.url, "interval": "60s"},
                {"name": "partner-wrong", "vendor": "iometer", "transport": "partner", "partner_id": partner.partner_id,
                 "secret": PARTNER_WRONG, "auth": "wsse", "endpoint": partner.url, "interval": "60s"},
            ],
        }
        path = tmp_path / "exporter.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        port = free_port()
        exporter = ExporterProcess(path, port, extra=["--log.level=debug"])
        try:
            def states() -> dict:
                import json

                return {t["name"]: t for t in json.loads(http_get(exporter.url("/api/v1/targets"))[2])["targets"]}

            deadline = time.monotonic() + 40
            wanted = {"hw-good", "iam-legacy", "iam-cloud", "enphase", "enphase-token"}
            while time.monotonic() < deadline:
                current = states()
                if all(current[name]["state"] == "up" for name in wanted) and all(
                        current[name]["state"] == "down"
                        for name in ("hw-wrong-token", "iam-legacy-401", "enphase-unreachable", "iam-cloud-wrong")):
                    break
                time.sleep(0.5)
            current = states()
            assert all(current[name]["state"] == "up" for name in wanted), current
            # the broker goes down, then comes back; the MQTT client reconnects with the password
            loop_thread.run(broker.close())
            time.sleep(2)
            loop_thread.run(broker.start())
            time.sleep(2)

            places = {
                "metrics": exporter.metrics(),
                "openmetrics": http_get(exporter.url("/metrics"),
                                        headers={"Accept": "application/openmetrics-text; version=1.0.0"})[2].decode(),
                "landing page": http_get(exporter.url("/"))[2].decode(),
                "targets API": http_get(exporter.url("/api/v1/targets"))[2].decode(),
            }
        finally:
            exporter.stop()
        places["log"] = exporter.logs()
        for target in config["targets"]:
            places[f"probe {target['name']}"] = run_cli(path, "probe", target["name"])
        places["check-config"] = run_cli(path, "check-config")
        for file in sorted((tmp_path / "state").rglob("*")):
            if file.is_file() and "token" not in file.name:
                places[f"state file {file.name}"] = file.read_text(errors="replace")

        assert "hw-wrong-token" in places["targets API"] and "unauthorized" in places["targets API"]
        assert "probe hw-good" in places and "energy_meter" in places["probe hw-good"]
        secrets = {
            "HomeWizard token": forms(HW_TOKEN, ()), "wrong HomeWizard token": forms(HW_WRONG, ()),
            "IAMMETER password": forms(IAM_PASSWORD, ("admin",)), "wrong IAMMETER password": forms(IAM_WRONG, ("admin",)),
            "cloud password": forms(CLOUD_PASSWORD, ("cloud-user",)), "wrong cloud password": forms(CLOUD_WRONG, ("other-user",)),
            "MQTT password": forms(MQTT_PASSWORD, ("mqtt-user",)),
            "Enlighten password": forms(ENLIGHTEN_PASSWORD, (ENPHASE_USER,)),
            "Enlighten password (unreachable gateway)": forms(ENLIGHTEN_UNREACHABLE, (ENPHASE_USER,)),
            "Enphase token": [enphase_token, enphase_token.split(".")[2]],
            "partner secret": forms(PARTNER_SECRET, (partner.partner_id,)),
            "wrong partner secret": forms(PARTNER_WRONG, (partner.partner_id,)),
        }
        leaks = [f"{what} in {where}" for where, text in places.items() for what, values in secrets.items()
                 if any(value in text for value in values)]
        assert not leaks, leaks
    finally:
        async def stop():
            for sim in (hw, legacy, cloud, gateway, enlighten, partner):
                await sim.stop()
            await broker.close()
        loop_thread.run(stop())


# --- file permissions -------------------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, **fields) -> None:
        self.warnings.append(message)


def _config_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


TARGET_SECRET = "targets:\n  - name: p1\n    vendor: homewizard\n    host: 192.0.2.1\n    token: " + HW_TOKEN + "\n"
BROKER_SECRET = ("mqtt_brokers:\n  - name: home\n    host: 127.0.0.1\n    username: u\n    password: " + MQTT_PASSWORD
                 + "\ntargets:\n  - name: m\n    vendor: iammeter\n    transport: mqtt\n    broker: home\n"
                 "    sn: 3E0BAF87\n")


import pytest  # noqa: E402


@pytest.mark.parametrize("text", [TARGET_SECRET, BROKER_SECRET], ids=["target token", "broker password"])
@pytest.mark.parametrize("mode,warned", [(0o644, True), (0o640, True), (0o600, False)])
def test_a_config_with_inline_secrets_readable_by_others_draws_a_warning(tmp_path, text, mode, warned):
    from exporter.cli import warn_if_world_readable

    from .configs import load_config

    path = _config_file(tmp_path, text, mode)
    log = Log()
    warn_if_world_readable(str(path), load_config(path), log)
    assert bool(log.warnings) == warned, log.warnings
    assert not any(HW_TOKEN in w or MQTT_PASSWORD in w for w in log.warnings)


def test_the_daemon_warns_at_start_about_a_readable_config(tmp_path):
    path = _config_file(tmp_path, TARGET_SECRET.replace("192.0.2.1", "127.0.0.1:9"), 0o644)
    exporter = ExporterProcess(path, free_port())
    try:
        time.sleep(0.5)
    finally:
        exporter.stop()
    log = exporter.logs()
    assert "readable by other users" in log and HW_TOKEN not in log


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_state_directory_and_token_files_are_private(tmp_path):
    from exporter.runtime.state import StateDirectory, write_private_file

    previous = os.umask(0o022)  # a common umask: the files must be private regardless
    try:
        state = StateDirectory(tmp_path / "state")
        state.write_json("quota.json", {"x": 1})
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(tmp_path / "state" / "quota.json") == 0o600
    # the HomeWizard pair command's token file
    write_private_file(tmp_path / "homewizard-p1.token", HW_TOKEN + "\n")
    assert _mode(tmp_path / "homewizard-p1.token") == 0o600


async def test_vendor_token_stores_are_private(tmp_path):
    """The Enphase token store and the IAMMETER cloud token, written by their adapters."""
    import aiohttp
    import structlog

    from exporter.config.loader import Secret, TargetConfig
    from exporter.runtime.context import AdapterContext
    from exporter.runtime.state import StateDirectory
    from exporter.vendors.enphase.local import EnphaseLocal
    from exporter.vendors.iammeter.cloud import IammeterCloudAdapter as IammeterCloud

    issuer = TokenIssuer()
    gateway = await GatewaySimulator(issuer=issuer).start()
    enlighten = await EnlightenSimulator(issuer, {ENPHASE_USER: ENLIGHTEN_PASSWORD}).start()
    cloud = IammeterCloudSimulator(username="cloud-user", password=CLOUD_PASSWORD)
    await cloud.start()
    state_dir = tmp_path / "state"
    try:
        async with aiohttp.ClientSession() as session:
            ctx = AdapterContext(session=session, state=StateDirectory(state_dir), log=structlog.get_logger(),
                                 clock=time.time)
            enphase = EnphaseLocal(TargetConfig(
                name="roof", vendor="enphase", transport="local", interval=10, timeout=5, max_backoff=60,
                stale_after=60, jitter=0, options={
                    "host": gateway.host, "username": ENPHASE_USER, "password": Secret(ENLIGHTEN_PASSWORD),
                    "enlighten_url": enlighten.url, "token_url": enlighten.url, "tls_fingerprint": gateway.fingerprint,
                    "tls_verify": True, "nightly_window": "off"}), ctx)
            await enphase.poll()
            await enphase.close()
            iam = IammeterCloud(TargetConfig(
                name="acct", vendor="iammeter", transport="cloud", interval=300, timeout=5, max_backoff=600,
                stale_after=900, jitter=0, options={"base_url": cloud.base_url, "username": "cloud-user",
                                                    "password": Secret(CLOUD_PASSWORD)}), ctx)
            await iam.poll()
            await iam.close()
    finally:
        await gateway.stop()
        await enlighten.stop()
        await cloud.stop()
    files = [f for f in state_dir.rglob("*") if f.is_file()]
    assert _mode(state_dir) == 0o700
    assert files, "no token was stored"
    assert any("token" in f.read_text() for f in files), [f.name for f in files]
    for f in files:
        assert _mode(f) == 0o600, (f, oct(_mode(f)))
        assert ENLIGHTEN_PASSWORD not in f.read_text() and CLOUD_PASSWORD not in f.read_text()
