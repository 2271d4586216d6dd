"""`--web.config.file`: TLS, client certificates and basic auth, in the format every Prometheus
exporter built on exporter-toolkit reads, so one file and one habit serve all of them:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), ...
      client_ca_file: clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...   # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`

Relative paths are relative to the web configuration file.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import web

from .config import ConfigError, _Checker, _load_yaml, _type_name

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
            "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    # (user, sha256(password)) pairs already checked: bcrypt is slow on purpose, scrapes are frequent
    _verified: set[tuple[str, bytes]] = field(default_factory=set)

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        stored = self.users.get(user)
        digest = hashlib.sha256(password.encode()).digest()
        if stored is None:
            bcrypt.checkpw(b"timing", _DUMMY_HASH)  # same cost whether or not the user exists
            return False
        key = (user, digest)
        if key in self._verified:
            return True
        if bcrypt.checkpw(password.encode(), stored):
            self._verified.add(key)
            return True
        return False

    def middleware(self):
        @web.middleware
        async def basic_auth(request: web.Request, handler):
            if not self.check(request.headers.get("Authorization")):
                return web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="energy-meter-exporter"'})
            return await handler(request)

        return basic_auth


_DUMMY_HASH = bcrypt.hashpw(b"timing", bcrypt.gensalt(rounds=4))


def load_web_config(path: str | None) -> WebConfig:
    """Read and validate a web configuration file; ConfigError names file, line and key."""
    if not path:
        return WebConfig()
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{filename}: cannot read the web configuration: {exc.strerror or exc}"]) from None
    located = _load_yaml(text, filename)
    check = _Checker(located, filename, {})
    data = located.data or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: expected a mapping with tls_server_config and/or basic_auth_users"])
    for key in data:
        if key not in TOP_KEYS:
            check.problem((key,), f"unknown key (known keys here: {', '.join(sorted(TOP_KEYS))})")
    base = Path(filename).resolve().parent
    config = WebConfig()

    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        check.problem(("basic_auth_users",), f"expected a mapping of user: bcrypt hash, got {_type_name(users)}")
        users = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            check.problem(("basic_auth_users", user), "expected a bcrypt hash ($2y$..., e.g. from `htpasswd -nBC 10 \"\"`)")
            continue
        config.users[str(user)] = hashed.encode()

    tls = data.get("tls_server_config")
    if tls is not None:
        config.ssl_context = _tls_context(check, tls, base)
    if check.problems:
        raise ConfigError(check.problems)
    return config


def _tls_context(check: _Checker, tls: Any, base: Path) -> ssl.SSLContext | None:
    path = ("tls_server_config",)
    if not isinstance(tls, dict):
        check.problem(path, f"expected a mapping, got {_type_name(tls)}")
        return None
    for key in tls:
        if key not in TLS_KEYS:
            check.problem(path + (key,), f"unknown key (known keys here: {', '.join(sorted(TLS_KEYS))})")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        check.problem(path, "cert_file and key_file are both required")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(base / str(cert), base / str(key))
    except (OSError, ssl.SSLError) as exc:
        check.problem(path + ("cert_file",), f"cannot load the certificate and key: {getattr(exc, 'strerror', None) or exc}")
        return None
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH_TYPES:
        check.problem(path + ("client_auth_type",), f"must be one of {', '.join(CLIENT_AUTH_TYPES)}")
        return None
    context.verify_mode = CLIENT_AUTH_TYPES[auth_type]
    client_ca = tls.get("client_ca_file")
    if auth_type != "NoClientCert" and not client_ca:
        # Python's TLS verifies every certificate it asks for, so each of these needs the CA.
        check.problem(path + ("client_ca_file",), f"{auth_type} needs client_ca_file")
    if client_ca:
        try:
            context.load_verify_locations(cafile=str(base / str(client_ca)))
        except (OSError, ssl.SSLError) as exc:
            check.problem(path + ("client_ca_file",), f"cannot load: {getattr(exc, 'strerror', None) or exc}")
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if name in tls:
            version = TLS_VERSIONS.get(str(tls[name]))
            if version is None:
                check.problem(path + (name,), f"must be one of {', '.join(TLS_VERSIONS)}")
            else:
                setattr(context, attr, version)
    if "min_version" not in tls:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
