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

import asyncio
import base64
import hashlib
import re
import secrets
import ssl
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import web

from .config import ConfigError, _Checker, _load_yaml, _type_name, read_config_text

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


# bcrypt is slow on purpose (tens to hundreds of ms a check): checks run in their own threads, a
# few at once so that wrong passwords cannot take every core from polls and scrapes; more
# waiting than MAX_WAITING_CHECKS are refused at once (429) instead of queueing without end.
MAX_CONCURRENT_CHECKS = 2
MAX_WAITING_CHECKS = 32
# Successful checks remembered (Prometheus scrapes every few seconds with the same password).
CACHE_SIZE = 100
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; htpasswd made the hash from those bytes
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


class TooManyChecks(Exception):
    """More password checks are waiting than MAX_WAITING_CHECKS."""


def _checkpw(password: bytes, hashed: bytes) -> bool:
    return bcrypt.checkpw(password, hashed)


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    # A hash of the users' cost that matches no password: an unknown user is checked against it,
    # so that it costs what a known user costs and user names cannot be found by timing.
    dummy_hash: bytes | None = None
    # sha256(user, hash, password) of checks that succeeded, oldest first
    _verified: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _executor: ThreadPoolExecutor | None = None
    _pending: int = 0

    async def check(self, header: str | None) -> bool:
        """Whether an Authorization header names a user and the right password; raises
        TooManyChecks when too many checks wait already."""
        if not self.users:
            return True
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self.users.get(user)
        hashed = stored if stored is not None else self._dummy()
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password))).digest()
        if stored is not None and key in self._verified:
            self._verified.move_to_end(key)
            return True
        ok = await self._bcrypt(password[:BCRYPT_MAX_BYTES], hashed) and stored is not None
        if ok:
            self._verified[key] = None
            if len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        return ok

    async def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        if self._pending >= MAX_CONCURRENT_CHECKS + MAX_WAITING_CHECKS:
            raise TooManyChecks()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(MAX_CONCURRENT_CHECKS, thread_name_prefix="bcrypt")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, _checkpw, password, hashed)
        finally:
            self._pending -= 1

    def close(self) -> None:
        """Drop the checks still waiting: at exit they would hold up the process for nothing."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _dummy(self) -> bytes:
        if self.dummy_hash is None:
            self.dummy_hash = dummy_hash(self.users.values())
        return self.dummy_hash

    def middleware(self):
        @web.middleware
        async def basic_auth(request: web.Request, handler):
            try:
                ok = await self.check(request.headers.get("Authorization"))
            except TooManyChecks:
                return web.Response(status=429, text="Too many password checks at once; try again.\n",
                                    headers={"Retry-After": "1"})
            if not ok:
                return web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="energy-meter-exporter"'})
            return await handler(request)

        return basic_auth


def _credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    if not sep:
        return None
    return user, password.encode()


def dummy_hash(hashes) -> bytes:
    """A bcrypt hash of the cost most of `hashes` have (the highest among equals)."""
    costs = Counter(int(_BCRYPT_HASH.match(h.decode()).group(1)) for h in hashes)
    cost = max(costs, key=lambda c: (costs[c], c)) if costs else 10
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


def load_web_config(path: str | None) -> WebConfig:
    """Read and validate a web configuration file; ConfigError names file, line and key."""
    if not path:
        return WebConfig()
    filename = str(path)
    located = _load_yaml(read_config_text(path, "the web configuration"), filename)
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
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed) or not 4 <= int(hashed[4:6]) <= 31:
            check.problem(("basic_auth_users", user), "expected a bcrypt hash ($2y$..., e.g. from `htpasswd -nBC 10 \"\"`)")
            continue
        config.users[str(user)] = hashed.encode()
    if config.users:
        config.dummy_hash = dummy_hash(config.users.values())

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
