"""`--web.config.file`: TLS, client certificates and basic auth, in the format every Prometheus
exporter built on exporter-toolkit reads, so one file and one habit serve all of them:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), ...
      client_ca_file: clients-ca.crt
      min_version: TLS12
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 and older only
      curve_preferences: [X25519]
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2y$10$...   # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`

Relative paths are relative to the web configuration file. Every key of that format is either
honoured or refused with a message; none is read and then ignored. Two differ from the Go
implementation, for want of support in Python's TLS module: `curve_preferences` takes one curve
(the module can set no list), and `http_server_config.http2: true` is refused (no HTTP/2 here).
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

from .loader import Checker, ConfigError, load_yaml, read_config_text, type_name

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
HTTP_SERVER_KEYS = {"http2", "headers"}
# The Go names of the suites crypto/tls offers for TLS 1.2 and older, with OpenSSL's names.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
# TLS 1.3's suites, which neither Go nor OpenSSL let this list choose: accepted, always on.
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The response headers exporter-toolkit lets http_server_config set, with the values it accepts
# (None: any text).
RESPONSE_HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}


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
    headers: dict[str, str] = field(default_factory=dict)  # added to every response
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

    def install(self, app: web.Application) -> None:
        """Add this file's response headers and basic auth to the application; call before the
        application's own middlewares are frozen (before it starts)."""
        if self.headers:
            # A signal, not a middleware: streamed answers (/metrics) send their headers before
            # a middleware would see the response.
            headers = dict(self.headers)

            async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
                response.headers.update(headers)

            app.on_response_prepare.append(add_headers)
        if self.users:
            app.middlewares.append(self._basic_auth_middleware())

    def _basic_auth_middleware(self):
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
    located = load_yaml(read_config_text(path, "the web configuration"), filename)
    check = Checker(located, filename, {})
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
        check.problem(("basic_auth_users",), f"expected a mapping of user: bcrypt hash, got {type_name(users)}")
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
    server = data.get("http_server_config")
    if server is not None:
        config.headers = _http_server(check, server)
    if check.problems:
        raise ConfigError(check.problems)
    return config


def _tls_context(check: Checker, tls: Any, base: Path) -> ssl.SSLContext | None:
    path = ("tls_server_config",)
    if not isinstance(tls, dict):
        check.problem(path, f"expected a mapping, got {type_name(tls)}")
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
    _cipher_suites(check, tls, context)
    _curves(check, tls, context)
    return context


def _names(check: Checker, tls: dict, key: str) -> list[str]:
    value = tls.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        check.problem(("tls_server_config", key), f"expected a list of names, got {type_name(value)}")
        return []
    return value


def _cipher_suites(check: Checker, tls: dict, context: ssl.SSLContext) -> None:
    path = ("tls_server_config", "cipher_suites")
    suites = _names(check, tls, "cipher_suites")
    unknown = [s for s in suites if s not in CIPHER_SUITES and s not in TLS13_SUITES]
    if unknown:
        check.problem(path, f"unknown or insecure suite {', '.join(unknown)} (known: {', '.join(sorted(CIPHER_SUITES))}, "
                            f"and TLS 1.3's {', '.join(sorted(TLS13_SUITES))}, which are always on)")
        return
    chosen = [CIPHER_SUITES[s] for s in suites if s in CIPHER_SUITES]
    if suites and not chosen:
        context.minimum_version = max(context.minimum_version, ssl.TLSVersion.TLSv1_3)
    elif chosen:
        # OpenSSL keeps TLS 1.3's suites apart, so this list restricts TLS 1.2 and older only,
        # as cipher_suites does in Go.
        context.set_ciphers(":".join(dict.fromkeys(chosen)))
    if tls.get("prefer_server_cipher_suites") is not None:
        prefer = tls["prefer_server_cipher_suites"]
        if not isinstance(prefer, bool):
            check.problem(("tls_server_config", "prefer_server_cipher_suites"), "expected true or false")
        elif prefer:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE


def _curves(check: Checker, tls: dict, context: ssl.SSLContext) -> None:
    path = ("tls_server_config", "curve_preferences")
    curves = _names(check, tls, "curve_preferences")
    unknown = [c for c in curves if c not in CURVES]
    if unknown:
        check.problem(path, f"unknown curve {', '.join(unknown)} (known: {', '.join(CURVES)})")
    elif len(curves) > 1:
        check.problem(path, "Python's TLS module can offer one curve only: give a list of one "
                            "(or leave the key out for OpenSSL's defaults)")
    elif curves:
        context.set_ecdh_curve(CURVES[curves[0]])


def _http_server(check: Checker, server: Any) -> dict[str, str]:
    path = ("http_server_config",)
    if not isinstance(server, dict):
        check.problem(path, f"expected a mapping, got {type_name(server)}")
        return {}
    for key in server:
        if key not in HTTP_SERVER_KEYS:
            check.problem(path + (key,), f"unknown key (known keys here: {', '.join(sorted(HTTP_SERVER_KEYS))})")
    http2 = server.get("http2")
    if http2 is not None and http2 is not False:
        check.problem(path + ("http2",), "HTTP/2 is not served by this exporter (HTTP/1.1 only): "
                                         "set false or leave the key out")
    raw = server.get("headers")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        check.problem(path + ("headers",), f"expected a mapping of header: value, got {type_name(raw)}")
        return {}
    headers = {}
    for name, value in raw.items():
        where = path + ("headers", name)
        if name not in RESPONSE_HEADERS:
            check.problem(where, f"not a header this file may set (known: {', '.join(RESPONSE_HEADERS)})")
        elif not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            check.problem(where, "expected one line of text")
        elif value:  # blank: unset, as in exporter-toolkit
            allowed = RESPONSE_HEADERS[name]
            if allowed is not None and value.lower() not in allowed:
                check.problem(where, f"must be one of {', '.join(sorted(allowed))}")
            else:
                headers[name] = value
    return headers
