"""The rest of exporter-toolkit's web configuration: cipher suites, curves, server preference and
response headers, each honoured on a real TLS listener or refused with file, line and key; none
is read and then ignored."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from exporter.config.loader import ConfigError
from exporter.config.webconfig import load_web_config
from exporter.daemon import Daemon
from simulators.tls import new_authority

from .configs import load_config


@pytest.fixture
def authority(tmp_path):
    ca = new_authority("Test CA", "energy-meter-exporter tests", tmp_path / "pki")
    ca.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    return ca


def web_yml(tmp_path, authority, tls_extra: str = "", rest: str = ""):
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n"
                    f"  cert_file: {authority.directory / 'server.pem'}\n"
                    f"  key_file: {authority.directory / 'server.key'}\n" + tls_extra + rest)
    return path


async def serving(tmp_path, web_config) -> Daemon:
    path = tmp_path / "config.yaml"
    path.write_text(f"state_directory: {tmp_path / 'state'}\ntargets: []\n")
    daemon = Daemon(load_config(path), web_config=web_config)
    await daemon.start("127.0.0.1", 0)
    return daemon


def client(authority, *, tls12_cipher: str | None = None, curve: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(authority.ca_file))
    if tls12_cipher:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_cipher)
    if curve:
        context.set_ecdh_curve(curve)
    return context


async def fetch(daemon: Daemon, context: ssl.SSLContext, path: str = "/metrics") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{daemon.port}{path}", ssl=context) as resp:
            await resp.read()
            return resp.status, dict(resp.headers)


async def test_cipher_suites_restrict_tls12(tmp_path, authority):
    daemon = await serving(tmp_path, load_web_config(str(web_yml(
        tmp_path, authority, "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"))))
    try:
        assert (await fetch(daemon, client(authority, tls12_cipher="ECDHE-ECDSA-AES256-GCM-SHA384")))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await fetch(daemon, client(authority, tls12_cipher="ECDHE-ECDSA-AES128-GCM-SHA256"))
        assert (await fetch(daemon, client(authority)))[0] == 200  # TLS 1.3 is not restricted, as in Go
    finally:
        await daemon.stop()


async def test_curve_preferences_choose_the_key_exchange(tmp_path, authority):
    daemon = await serving(tmp_path, load_web_config(str(web_yml(tmp_path, authority, "  curve_preferences: [CurveP384]\n"))))
    try:
        assert (await fetch(daemon, client(authority, curve="secp384r1")))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await fetch(daemon, client(authority, curve="X25519"))
    finally:
        await daemon.stop()


async def test_response_headers_on_every_answer(tmp_path, authority):
    hsts = "max-age=31536000; includeSubDomains"
    daemon = await serving(tmp_path, load_web_config(str(web_yml(
        tmp_path, authority, rest="http_server_config:\n  http2: false\n  headers:\n"
                                  f"    Strict-Transport-Security: {hsts}\n    X-Frame-Options: deny\n"
                                  "    X-Content-Type-Options: ''\n"))))
    try:
        for path in ("/metrics", "/", "/no-such-page"):
            status, headers = await fetch(daemon, client(authority), path)
            assert headers.get("Strict-Transport-Security") == hsts, path
            assert headers.get("X-Frame-Options") == "deny", path
            assert "X-Content-Type-Options" not in headers  # blank means unset
        assert status == 404
    finally:
        await daemon.stop()


@pytest.mark.parametrize("content,expected", [
    ("tls_server_config:\n  cert_file: CERT\n  key_file: KEY\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
     "web.yml:4: tls_server_config.cipher_suites: unknown or insecure suite TLS_RSA_WITH_RC4_128_SHA"),
    ("tls_server_config:\n  cert_file: CERT\n  key_file: KEY\n  cipher_suites: TLS_AES_128_GCM_SHA256\n",
     "web.yml:4: tls_server_config.cipher_suites: expected a list of names"),
    ("tls_server_config:\n  cert_file: CERT\n  key_file: KEY\n  curve_preferences: [X25519, CurveP256]\n",
     "web.yml:4: tls_server_config.curve_preferences: Python's TLS module can offer one curve only"),
    ("tls_server_config:\n  cert_file: CERT\n  key_file: KEY\n  curve_preferences: [P-256]\n",
     "web.yml:4: tls_server_config.curve_preferences: unknown curve P-256"),
    ("tls_server_config:\n  cert_file: CERT\n  key_file: KEY\n  prefer_server_cipher_suites: yes please\n",
     "web.yml:4: tls_server_config.prefer_server_cipher_suites: expected true or false"),
    ("http_server_config:\n  http2: true\n", "web.yml:2: http_server_config.http2: HTTP/2 is not served"),
    ("http_server_config:\n  headers:\n    Server: nginx\n", "web.yml:3: http_server_config.headers.Server: not a header"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow-from x\n",
     "web.yml:3: http_server_config.headers.X-Frame-Options: must be one of deny, sameorigin"),
    ("http_server_config:\n  keepalive: true\n", "web.yml:2: http_server_config.keepalive: unknown key"),
])
def test_unsupported_settings_are_refused_with_file_line_and_key(tmp_path, authority, content, expected):
    path = tmp_path / "web.yml"
    path.write_text(content.replace("CERT", str(authority.directory / "server.pem"))
                    .replace("KEY", str(authority.directory / "server.key")))
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
