"""`--web.config.file`: TLS, client certificates and bcrypt basic auth, with real TLS clients."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import bcrypt
import pytest

from exporter.simulators.tls import new_authority

from .conftest import ExporterProcess, free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
def pki(tmp_path):
    authority = new_authority("Test CA", "energy-meter-exporter tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    authority.issue("prometheus", name="client")
    other = new_authority("Other CA", "someone else", tmp_path / "other")
    other.issue("intruder", name="client")
    return authority, other


def write_web_config(tmp_path, pki, client_auth: bool = False, users: bool = True):
    authority, _ = pki
    lines = ["tls_server_config:", f"  cert_file: {authority.directory / 'server.pem'}",
             f"  key_file: {authority.directory / 'server.key'}"]
    if client_auth:
        lines += ["  client_auth_type: RequireAndVerifyClientCert", f"  client_ca_file: {authority.ca_file}"]
    if users:
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
        lines += ["basic_auth_users:", f"  prometheus: '{hashed}'"]
    path = tmp_path / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(tmp_path, web_config) -> ExporterProcess:
    config = tmp_path / "config.yaml"
    config.write_text("targets: []\n")
    pki = tmp_path / "pki"
    return ExporterProcess(config, free_port(), extra=[f"--web.config.file={web_config}"], scheme="https",
                           ca_file=str(pki / "ca.pem"), client_cert=(str(pki / "client.pem"), str(pki / "client.key")))


def get(url, ca_file, user=None, password=None, client=None):
    context = ssl.create_default_context(cafile=str(ca_file))
    if client:
        context.load_cert_chain(client / "client.pem", client / "client.key")
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_tls_and_basic_auth(tmp_path, pki):
    authority, _ = pki
    proc = start(tmp_path, write_web_config(tmp_path, pki))
    try:
        url = proc.url("/metrics")
        assert url.startswith("https://")
        status, body = get(url, authority.ca_file, "prometheus", PASSWORD)
        assert status == 200 and b"energy_meter_exporter_build_info" in body
        assert get(url, authority.ca_file, "prometheus", "wrong")[0] == 401
        assert get(url, authority.ca_file, "nobody", PASSWORD)[0] == 401
        assert get(url, authority.ca_file)[0] == 401
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            # plain HTTP to the TLS port gets nowhere
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=5)
        assert PASSWORD not in proc.logs()
    finally:
        proc.stop()


def test_client_certificates(tmp_path, pki):
    authority, other = pki
    proc = start(tmp_path, write_web_config(tmp_path, pki, client_auth=True, users=False))
    try:
        url = proc.url("/metrics")
        assert get(url, authority.ca_file, client=authority.directory)[0] == 200
        for client in (None, other.directory):  # no certificate, or one from another CA
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                get(url, authority.ca_file, client=client)
    finally:
        proc.stop()


@pytest.mark.parametrize("content,expected", [
    ("basic_auth_users:\n  alice: plaintext\n", "web.yml:2: basic_auth_users.alice: expected a bcrypt hash"),
    ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n", "cannot load the certificate"),
    ("tls_config:\n  x: 1\n", "web.yml:1: tls_config: unknown key"),
])
def test_bad_web_config_exits_2_with_file_and_line(tmp_path, content, expected):
    (tmp_path / "web.yml").write_text(content)
    (tmp_path / "c.yaml").write_text("targets: []\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={tmp_path / 'c.yaml'}",
                           f"--web.config.file={tmp_path / 'web.yml'}"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert expected in proc.stderr
