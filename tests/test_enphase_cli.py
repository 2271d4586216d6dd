"""`energy-meter-exporter token enphase` against the gateway and Enlighten simulators."""

from __future__ import annotations

import asyncio
import io
import stat
import sys
from pathlib import Path

import pytest

from exporter.cli import build_parser
from simulators.enphase import EMBEDDED, EnlightenSimulator, GatewaySimulator, TokenIssuer
from exporter.vendors.enphase import command
from exporter.vendors.enphase.token import token_info

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "enphase"
USER, PASSWORD = "owner@example.com", "correct horse"


@pytest.fixture
async def sims():
    issuer = TokenIssuer()
    gateway = await GatewaySimulator(EMBEDDED, issuer=issuer).start()  # firmware 8.2: needs tokens
    enlighten = await EnlightenSimulator(issuer, {USER: PASSWORD}).start()
    yield gateway, enlighten
    await gateway.stop()
    await enlighten.stop()


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


def args(*argv: str):
    return build_parser().parse_args(["token", "enphase", *argv])


async def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = await command.token_command(args(*argv), out)
    return status, out.getvalue()


async def test_token_via_the_gateway_address(sims, password_file, tmp_path):
    gateway, enlighten = sims
    output = tmp_path / "gateway.token"
    status, text = await run("--host", gateway.host, "--username", USER, "--password-file", str(password_file),
                             "--output", str(output), "--enlighten-url", enlighten.url, "--token-url", enlighten.url)
    assert status == 0, text
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    token = output.read_text().strip()
    assert gateway.issuer.check(token, gateway.serial)  # the gateway accepts it
    assert token_info(token).user_type == "owner"
    assert gateway.count("/auth/check_jwt") == 0 and gateway.count("/ivp/meters") == 0  # the token never went there
    # Progress, then the next step: a target to paste, with the certificate pinned.
    fingerprint = ":".join(gateway.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    assert f"gateway {gateway.serial}" in text and "Logging in to Enlighten" in text
    assert f"token_file: {output.resolve()}" in text and f'tls_fingerprint: "{fingerprint}"' in text
    assert "check-config" in text and "openssl s_client" in text
    assert PASSWORD not in text and token not in text


async def test_token_via_the_serial_writes_the_default_file(sims, password_file, tmp_path, monkeypatch):
    gateway, enlighten = sims
    monkeypatch.chdir(tmp_path)
    status, text = await run("--serial", gateway.serial, "--username", USER, "--password-file", str(password_file),
                             "--enlighten-url", enlighten.url, "--token-url", enlighten.url)
    assert status == 0, text
    written = tmp_path / f"enphase-{gateway.serial}.token"
    assert gateway.issuer.check(written.read_text().strip(), gateway.serial)
    assert len(gateway.requests) == 0  # the gateway was not contacted at all


async def test_password_is_asked_without_echo(sims, tmp_path, monkeypatch):
    gateway, enlighten = sims
    asked = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(command.getpass, "getpass", lambda prompt, stream=None: asked.append(prompt) or PASSWORD)
    status, _ = await run("--serial", gateway.serial, "--username", USER, "--output", str(tmp_path / "t"),
                          "--enlighten-url", enlighten.url, "--token-url", enlighten.url)
    assert status == 0 and asked == [f"Enlighten password for {USER}: "]


async def test_multi_factor_account_fails_with_the_way_out(sims, password_file, tmp_path):
    gateway, enlighten = sims
    enlighten.mfa = True
    output = tmp_path / "t"
    status, text = await run("--serial", gateway.serial, "--username", USER, "--password-file", str(password_file),
                             "--output", str(output), "--enlighten-url", enlighten.url, "--token-url", enlighten.url)
    assert status == 1
    assert "multi-factor" in text and "entrez.enphaseenergy.com" in text
    assert not output.exists()


async def test_wrong_password_fails(sims, tmp_path):
    gateway, enlighten = sims
    wrong = tmp_path / "wrong"
    wrong.write_text("hunter2")
    status, text = await run("--serial", gateway.serial, "--username", USER, "--password-file", str(wrong),
                             "--output", str(tmp_path / "t"), "--enlighten-url", enlighten.url,
                             "--token-url", enlighten.url)
    assert status == 1 and "refused the login" in text and "hunter2" not in text


async def test_unreachable_gateway_fails(password_file, tmp_path):
    status, text = await run("--host", "127.0.0.1:9", "--username", USER, "--password-file", str(password_file))
    assert status == 1 and "Failed" in text


async def test_legacy_gateway_needs_no_token(password_file, tmp_path):
    if not (CORPUS / "3.9.36").is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS / '3.9.36'}")
    gateway = await GatewaySimulator("3.9.36").start()
    try:
        status, text = await run("--host", gateway.host, "--username", USER, "--password-file", str(password_file),
                                 "--output", str(tmp_path / "t"))
    finally:
        await gateway.stop()
    assert status == 0 and "does not use tokens" in text and not (tmp_path / "t").exists()


@pytest.mark.parametrize("argv, message", [
    (("--serial", "202400000001"), "--username"),
    (("--username", USER), "--serial"),
    (("--serial", "abc", "--username", USER), "not a gateway serial"),
    (("--serial", "202400000001", "--username", USER, "--password-file", "/nonexistent/pw"), "cannot read"),
])
async def test_bad_input_exits_2(argv, message, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    status, text = await run(*argv)
    assert status == 2 and message in text


async def test_without_a_terminal_the_password_file_is_required(monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    status, text = await run("--serial", "202400000001", "--username", USER)
    assert status == 2 and "--password-file" in text


async def test_the_command_line_runs_it(sims, password_file, tmp_path):
    gateway, enlighten = sims
    output = tmp_path / "cli.token"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter.cli", "token", "enphase", "--host", gateway.host, "--username", USER,
        "--password-file", str(password_file), "--output", str(output), "--enlighten-url", enlighten.url,
        "--token-url", enlighten.url, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0, stdout.decode()
    assert gateway.issuer.check(output.read_text().strip(), gateway.serial)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter.cli", "token", "enphase", "--username", USER,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1])
    await proc.communicate()
    assert proc.returncode == 2
