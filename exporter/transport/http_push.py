"""The HTTP push receiver: one aiohttp server (the `http_push:` section) for every target whose
device POSTs its readings to the exporter.

What protects it (none of `--web.config.file` applies here: meters can do neither basic auth
nor client certificates of the web server's CA, and the listener is a port of its own):
- `path_token`: a secret the meter's upload address carries as its first path segment
  (`host:port/<token>`). A request without it is answered 404, as if nothing were there, and
  counted as `bad_token`; the comparison takes the same time whatever the guess.
- `tls_cert_file`/`tls_key_file`: HTTPS (a meter uploads over HTTPS to port 443); with
  `tls_client_ca_file`, only clients with a certificate from that CA get through the handshake.
  A handshake that fails (plain HTTP, a certificate of another CA) or is not done within
  `read_timeout` closes the connection and is counted as `tls`.
- `allowed_networks`, `max_requests_per_minute`, `max_body_bytes`, and the connection limits of
  every listener (`read_timeout` for the head and the body, `max_connections`; see serving.py).

Each request passes, in this order: the source network (`allowed_networks`, 403), a per-source
rate limit (429), the token (`path_token`, 404), the path (`path`, 404), the body size
(`max_body_bytes`, 413) and time (`read_timeout`, 408), JSON (400), the device id in the body
(only ids a target claims: 403), the vendor's parser (400). Every refused request is counted in
`energy_meter_exporter_push_rejected_total{listener="http_push"}`; a body that names a
configured device but cannot be parsed also fails that device's target with reason `parse`, so
a meter that sends garbage shows up as a target error, not only as a count.

The listener knows no vendor: the vendor's `PushFormat` says where a body names its device and
what the answer looks like (a meter may expect the shape its own cloud answers with).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from aiohttp import web

from ..config.loader import SectionSpec, Secret, Settings, setting
from ..model import catalogue as M
from ..model.errors import PollError
from ..model.jsontext import label_text
from ..model.samples import ParseError, Reading
from ..runtime.tasks import cancel_and_wait
from ..web.serving import (DEFAULT_HEAD_TIMEOUT, ConnectionGuard, GuardedSite, Limits, parse_listen_address,
                           runner_options)

LISTENER = "http_push"
DEFAULT_MAX_BODY = 64 * 1024
MAX_UNKNOWN_LOGGED = 100  # distinct unknown ids logged once each; the counter counts them all
RATE_WINDOW = 60.0  # seconds over which a per-minute limit is counted
MAX_SOURCES_HELD = 10_000  # a scan from many addresses must not grow the rate table forever


def network_allowed(remote: str, networks: Sequence[Any]) -> bool:
    """Whether a source address lies in one of `networks` (any, when there are none); an
    IPv4-mapped IPv6 address counts as its IPv4 address."""
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    candidates = (address, mapped) if mapped is not None else (address,)
    return any(a in net for a in candidates for net in networks if a.version == net.version)


@dataclass
class SourceRate:
    """Messages per source address, in fixed windows of RATE_WINDOW seconds."""

    limit: int | None  # per window; None or 0: no limit
    windows: dict[str, list] = field(default_factory=dict)  # source -> [window start, messages]

    def allow(self, remote: str) -> bool:
        """Count one more message from `remote`; whether it is within the limit."""
        if not self.limit:
            return True
        now = time.monotonic()
        if len(self.windows) > MAX_SOURCES_HELD:
            self.windows = {k: v for k, v in self.windows.items() if now - v[0] < RATE_WINDOW}
        window = self.windows.get(remote)
        if window is None or now - window[0] >= RATE_WINDOW:
            self.windows[remote] = [now, 1]
            return True
        window[1] += 1
        return window[1] <= self.limit
# Shown from the start at 0, so that rate() works from the first refusal on.
REASONS = ("unknown_sn", "malformed", "too_large", "forbidden_network", "rate_limited", "not_found",
           "bad_token", "timeout", "tls")
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_REQUESTS_PER_MINUTE = 120
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")  # characters a URL path segment carries as they are


@dataclass(frozen=True, kw_only=True, slots=True)
class PushSection(Settings):
    """The `http_push` section as written; PushSettings is what the listener runs with."""

    listen: str | None = setting("str", help="[host]:port to receive pushes on, e.g. :8088 or 192.168.1.5:8088")
    allowed_networks: tuple[str, ...] = setting("list", help="source networks (CIDR) allowed to push; default: any")
    max_body_bytes: int = setting("int", default=DEFAULT_MAX_BODY, minimum=256, help="larger bodies are refused (413)")
    path: str | None = setting(
        "str", help="the only URL path accepted, after path_token if that is set (default: any path)")
    max_requests_per_minute: int = setting(
        "int", default=DEFAULT_REQUESTS_PER_MINUTE, minimum=0,
        help="per source address; 0 = no limit (meters upload every 2 s at most)")
    path_token: Secret | None = setting("secret", help="secret first path segment of the upload address "
                                                       "(host:port/TOKEN); requests without it are refused 404")
    tls_cert_file: str | None = setting("path", help="certificate (PEM) to serve HTTPS with (with tls_key_file)")
    tls_key_file: str | None = setting("path", help="private key (PEM) of tls_cert_file")
    tls_client_ca_file: str | None = setting("path", help="require client certificates signed by this CA")
    read_timeout: float = setting("duration", default=DEFAULT_HEAD_TIMEOUT, minimum=0.1,
                                  help="a request's head, and then its body, must arrive within this")
    max_connections: int = setting("int", default=DEFAULT_MAX_CONNECTIONS, minimum=1,
                                   help="connections at once; at the limit the oldest waiting one is closed")


OPTIONS = PushSection.table()

SECTION = SectionSpec(
    name="http_push", options=OPTIONS, many=False,
    description="the listener that meters in HTTP upload mode POST to (targets with transport: push)",
)


def check_section(section: Mapping[str, Any]) -> Iterable[tuple[tuple, str]]:
    """Problems of the section's protection settings, for check-config: (key path, message)."""
    token = section.get("path_token")
    if token is not None:
        value = token.reveal() if isinstance(token, Secret) else str(token)
        # never the value in a message: a config check's output ends up in logs and tickets
        if not _TOKEN.match(value):
            yield ("http_push", "path_token"), ("may hold only letters, digits and - . _ ~ (it is a segment of "
                                                "a URL path); e.g. from `openssl rand -hex 16`")
        elif len(value) < MIN_TOKEN_LENGTH:
            yield ("http_push", "path_token"), (f"too short to be a secret: at least {MIN_TOKEN_LENGTH} characters, "
                                                "e.g. from `openssl rand -hex 16`")
    cert, key = section.get("tls_cert_file"), section.get("tls_key_file")
    if bool(cert) != bool(key):
        yield ("http_push", "tls_cert_file" if key else "tls_key_file"), "tls_cert_file and tls_key_file go together"
    elif section.get("tls_client_ca_file") and not cert:
        yield ("http_push", "tls_client_ca_file"), "needs tls_cert_file and tls_key_file (client certificates need TLS)"
    elif cert:
        try:
            tls_context(cert, key, section.get("tls_client_ca_file"))
        except ValueError as exc:
            yield ("http_push", "tls_cert_file"), str(exc)


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The server context; ValueError saying which file could not be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the certificate and key: {getattr(exc, 'strerror', None) or exc}") from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load tls_client_ca_file: {getattr(exc, 'strerror', None) or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def parse_networks(values: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDR strings -> networks; ValueError naming the bad one."""
    networks = []
    for value in values or ():
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a network such as 192.168.1.0/24 or 10.0.0.7/32") from None
    return tuple(networks)


@dataclass(frozen=True)
class PushSettings:
    host: str
    port: int
    networks: tuple = ()
    max_body_bytes: int = DEFAULT_MAX_BODY
    path: str | None = None
    max_requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE
    token: Secret | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    read_timeout: float = DEFAULT_HEAD_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "PushSettings":
        written = PushSection.from_options(section)
        if not written.listen:
            raise PollError("config", "http_push.listen is not set")
        try:
            host, port = parse_listen_address(written.listen, ":8088")
            networks = parse_networks(written.allowed_networks)
        except ValueError as exc:
            raise PollError("config", f"http_push: {exc}") from None
        problems = list(check_section(section))
        if problems:
            (_, key), message = problems[0]
            raise PollError("config", f"http_push.{key}: {message}")
        path, token = written.path, written.path_token
        return cls(host=host, port=port, networks=networks, max_body_bytes=written.max_body_bytes,
                   path=("/" + path.lstrip("/")) if path else None,
                   max_requests_per_minute=written.max_requests_per_minute,
                   token=token if isinstance(token, Secret) else (Secret(str(token)) if token else None),
                   tls_cert_file=written.tls_cert_file, tls_key_file=written.tls_key_file,
                   tls_client_ca_file=written.tls_client_ca_file, read_timeout=written.read_timeout,
                   max_connections=written.max_connections)

    def key(self) -> tuple:
        return (LISTENER, self.host, self.port, self.networks, self.max_body_bytes, self.path,
                self.max_requests_per_minute, self.token, self.tls_cert_file, self.tls_key_file,
                self.tls_client_ca_file, self.read_timeout, self.max_connections)

    def limits(self) -> Limits:
        return Limits(head_timeout=self.read_timeout, max_connections=self.max_connections)


@dataclass
class Sink:
    """Where one device's pushes go: its target's emit, and the parser of its vendor."""

    target: str
    emit: Callable[[Any], None]  # a Reading, or a PollError for a failed message
    parse: Callable[[Any], Reading]


def _no_id(text: str) -> str | None:
    return None


@dataclass(frozen=True)
class PushFormat:
    """What one vendor's devices upload and expect back."""

    device_id: Callable[[Any], Any]  # the id in a decoded body, None if it names none
    reply: Callable[[bool, str], Mapping[str, Any]]  # the JSON answer: accepted or not, and why
    # The id in a body that is not valid JSON (a truncated upload still names its device).
    device_id_in_text: Callable[[str], str | None] = _no_id
    id_name: str = "id"  # what messages call the id


class DeviceRouting:
    """What a push listener does with a decoded document, whatever carried it: find the target
    that claims the device it names, refuse and count what no target claims or cannot be read,
    and publish the counts. The listener provides `name`, `format`, `sinks`, `rejected`,
    `accepted`, `store`, `log` and `_unknown_logged`."""

    name: str
    format: PushFormat
    sinks: dict[str, Sink]
    rejected: dict[str, int]
    accepted: int
    store: Any
    log: Any
    _unknown_logged: set[str]

    def attach(self, device_id: str, sink: Sink) -> None:
        self.sinks[normalize_id(device_id)] = sink

    def detach(self, device_id: str, sink: Sink) -> None:
        key = normalize_id(device_id)
        if self.sinks.get(key) is sink:
            del self.sinks[key]

    def sink_named_in(self, text: str) -> Sink | None:
        """The target of the device a broken document names, if it names one."""
        named = self.format.device_id_in_text(text)
        return self.sinks.get(normalize_id(named)) if named else None

    def route(self, document: Any, what: str) -> tuple[str, str] | None:
        """Hand the document's reading to its target; None, or the refusal (reason, message)."""
        try:
            device_id = self.format.device_id(document)
        except Exception:
            device_id = None
        if not isinstance(device_id, (str, int)) or isinstance(device_id, bool) or not str(device_id).strip():
            return "malformed", f"the {what} names no device (no {self.format.id_name})"
        key = normalize_id(device_id)
        sink = self.sinks.get(key)
        if sink is None:
            if len(self._unknown_logged) < MAX_UNKNOWN_LOGGED and key not in self._unknown_logged:
                self._unknown_logged.add(key)  # once per id: it comes back every upload
                self.log.info(f"{what} from a device no target reads refused",
                              **{self.format.id_name.lower(): label_text(str(device_id), 64)})
            return "unknown_sn", f"{self.format.id_name} {str(device_id)[:64]!r} is not configured here"
        try:
            reading = sink.parse(document)
        except ParseError as exc:
            sink.emit(PollError("parse", f"{what}: {exc}"))
            return "malformed", str(exc)
        sink.emit(reading)
        self.accepted += 1
        return None

    def count(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.publish()

    def publish(self) -> None:
        if self.store is not None:
            self.store.set_global(self.name, M.PUSH_REJECTED, [
                ((("listener", self.name), ("reason", r)), n) for r, n in sorted(self.rejected.items())])


class TlsHandshakes:
    """The HTTPS listener's TLS handshakes, done by the listener itself: asyncio's TLS server drops
    a failed one without a word, and a meter whose handshake fails (plain HTTP, a client
    certificate of another CA, a handshake left unfinished) would only go stale. Each failure is
    `failed()` (counted as `tls`, as the TCP listener counts them). Once the handshake is done the
    connection goes to the guarded HTTP protocol, where it counts towards max_connections, as
    with asyncio's TLS server."""

    def __init__(self, context: ssl.SSLContext, timeout: float, failed: Callable[[], None], limit: int) -> None:
        self.context = context
        self.timeout = timeout
        self.failed = failed
        self.limit = limit
        self._pending: dict[asyncio.Task, asyncio.Transport] = {}  # oldest first

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Handshake(self, inner)

    def begin(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        if len(self._pending) >= self.limit:
            # Connections still shaking hands are held to max_connections as well: past it the
            # oldest handshake makes room (a meter's own completes in milliseconds, a flood of
            # stalled ones would otherwise hold a file descriptor each until read_timeout).
            oldest, stalled = next(iter(self._pending.items()))
            stalled.abort()
            oldest.cancel()
            del self._pending[oldest]
        task = asyncio.get_running_loop().create_task(self._handshake(transport, protocol))
        self._pending[task] = transport
        task.add_done_callback(lambda done: self._pending.pop(done, None))

    async def _handshake(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                tls = await loop.start_tls(transport, protocol, self.context, server_side=True,
                                           ssl_handshake_timeout=self.timeout)
        except (OSError, TimeoutError, ssl.SSLError):  # (ConnectionError is an OSError)
            transport.abort()
            self.failed()
            return
        except asyncio.CancelledError:  # made room for a newer one, or the listener closes
            transport.abort()
            raise
        protocol.connection_made(tls)

    async def close(self) -> None:
        await cancel_and_wait(*list(self._pending))


class _Handshake(asyncio.Protocol):
    """A connection to the HTTPS listener until its handshake begins: holds its first bytes back
    (they are the handshake's, read by start_tls) and hands the transport over."""

    def __init__(self, handshakes: TlsHandshakes, inner: Callable[[], asyncio.Protocol]) -> None:
        self._handshakes = handshakes
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]  # start_tls resumes it
        self._handshakes.begin(transport, self._inner())  # type: ignore[arg-type]


class _TlsGuard(ConnectionGuard):
    """A ConnectionGuard whose connections do their TLS handshake first."""

    def __init__(self, limits: Limits, listener: str, handshakes: TlsHandshakes) -> None:
        super().__init__(limits, listener)
        self.handshakes = handshakes

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return self.handshakes.protocol_factory(super().protocol_factory(inner))


@dataclass
class PushListener(DeviceRouting):
    """One HTTP server for all push targets of a vendor, whose `format` it speaks."""

    name = LISTENER

    settings: PushSettings
    log: Any
    store: Any = None
    format: PushFormat = field(kw_only=True)
    sinks: dict[str, Sink] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    accepted: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _rate: SourceRate = field(init=False)
    _unknown_logged: set[str] = field(default_factory=set)
    guard: ConnectionGuard | None = None
    _handshakes: TlsHandshakes | None = None

    def __post_init__(self) -> None:
        self._rate = SourceRate(self.settings.max_requests_per_minute)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> "PushListener":
        s = self.settings
        context = None
        if s.tls_cert_file and s.tls_key_file:
            try:
                context = tls_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            except ValueError as exc:
                raise PollError("config", f"http_push: {exc}") from None
        limits = s.limits()
        if context is not None:  # (the site itself then serves plain TCP: the handshake is ours)
            self._handshakes = TlsHandshakes(context, s.read_timeout, lambda: self.count("tls"), limits.max_connections)
            self.guard = _TlsGuard(limits, LISTENER, self._handshakes)
        else:
            self.guard = ConnectionGuard(limits, LISTENER)
        app = web.Application(client_max_size=s.max_body_bytes, middlewares=[self.guard.middleware()])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, **runner_options(limits, LISTENER))
        await self._runner.setup()
        site = GuardedSite(self._runner, s.host, s.port, self.guard)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise PollError("config", f"http_push: cannot listen on {self.settings.host}:{self.settings.port}: "
                                      f"{exc.strerror or exc}") from None
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else self.settings.port
        self.publish()
        self.log.info("http push listening", address=f"{self.settings.host}:{self.port}", tls=context is not None,
                      client_certificates=bool(context and s.tls_client_ca_file), path_token=s.token is not None)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._handshakes is not None:
            await self._handshakes.close()
        if self.store is not None:
            self.store.set_global(LISTENER, M.PUSH_REJECTED, [])

    # --- requests --------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        remote = request.remote or ""
        if not network_allowed(remote, self.settings.networks):
            return self._refuse(403, "forbidden_network", f"source {remote} is not in http_push.allowed_networks")
        if not self._rate.allow(remote):
            return self._refuse(429, "rate_limited", "too many requests from this address")
        path = request.path
        if self.settings.token is not None:
            path = self._past_token(path)
            if path is None:  # the same answer as for a path that does not exist
                return self._refuse(404, "bad_token", "nothing is received here")
        if self.settings.path is not None and path != self.settings.path:
            return self._refuse(404, "not_found", f"nothing is received at {path[:80]}")
        if request.method != "POST":
            return self._reply(405, False, "POST the meter's JSON here", headers={"Allow": "POST"})
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                body = await self._read_body(request)
        except TimeoutError:
            response = self._refuse(408, "timeout", f"the body did not arrive within {self.settings.read_timeout:g}s")
            response.force_close()
            return response
        if body is None:
            return self._refuse(413, "too_large", f"body larger than {self.settings.max_body_bytes} bytes")
        return self.receive(body)

    def _past_token(self, path: str) -> str | None:
        """The path after its first segment when that segment is the token, else None. Both
        sides are hashed first, so the comparison time says nothing about the token, not even
        its length."""
        assert self.settings.token is not None
        segment, _, rest = path[1:].partition("/")
        given = hashlib.sha256(segment.encode("utf-8", "replace")).digest()
        wanted = hashlib.sha256(self.settings.token.reveal().encode()).digest()
        return "/" + rest if hmac.compare_digest(given, wanted) else None

    def receive(self, body: bytes) -> web.Response:
        """Route one body to its target (the part of the work that needs no socket)."""
        try:
            from ..model.jsontext import loads as decode_json  # one decoder for devices: depth, NaN, surrogates
            document = decode_json(body, "body")
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
            # the whole body (at most max_body_bytes): the id may follow a long poisoned field
            sink = self.sink_named_in(body.decode("utf-8", "replace"))
            message = f"body is not JSON ({exc.__class__.__name__})"
            if sink is not None:
                sink.emit(PollError("parse", f"pushed {message}"))
            return self._refuse(400, "malformed", message)
        refusal = self.route(document, "pushed body")
        if refusal is None:
            return self._reply(200, True, "ok")
        reason, message = refusal
        return self._refuse(403 if reason == "unknown_sn" else 400, reason, message)

    async def _read_body(self, request: web.Request) -> bytes | None:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        self.count(reason)
        return self._reply(status, False, message)

    def _reply(self, status: int, ok: bool, message: str, headers: dict | None = None) -> web.Response:
        body = json.dumps(self.format.reply(ok, message), separators=(",", ":"))
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)



def normalize_id(value: Any) -> str:
    """Device ids compare without case or surrounding blanks (meters print serials upper case)."""
    return str(value).strip().upper()
