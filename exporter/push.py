"""The HTTP push receiver: one aiohttp server (the `http_push:` section) for every target whose
device POSTs its readings to the exporter.

Each request passes, in this order: the source network (`allowed_networks`, 403), a per-source
rate limit (429), the path (`path`, 404), the body size (`max_body_bytes`, 413), JSON (400),
the device id in the body (only ids a target claims: 403), the vendor's parser (400). Every
refused request is counted in `energy_meter_exporter_push_rejected_total{listener="http_push"}`;
a body that names a configured device but cannot be parsed also fails that device's target with
reason `parse`, so a meter that sends garbage shows up as a target error, not only as a count.

The reply is `{"successful":true,"message":"ok"}`: IAMMETER meters upload to their cloud's
`/api/v1/sensor/UploadSensor`, whose answer has that shape, and the push documents ask for no
other; refusals carry `"successful":false` and a message.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from aiohttp import web

from . import catalogue as M
from .config import Option
from .errors import PollError
from .samples import ParseError, Reading
from .vendors.registry import SectionSpec, register_section

LISTENER = "http_push"
DEFAULT_MAX_BODY = 64 * 1024
MAX_UNKNOWN_LOGGED = 100  # distinct unknown SNs logged once each; the counter counts them all
RATE_WINDOW = 60.0  # seconds over which max_requests_per_minute is counted
# Shown from the start at 0, so that rate() works from the first refusal on.
REASONS = ("unknown_sn", "malformed", "too_large", "forbidden_network", "rate_limited", "not_found")

OPTIONS: dict[str, Option] = {
    "listen": Option("str", help="[host]:port to receive pushes on, e.g. :8088 or 192.168.1.5:8088"),
    "allowed_networks": Option("list", help="source networks (CIDR) allowed to push; default: any"),
    "max_body_bytes": Option("int", default=DEFAULT_MAX_BODY, minimum=256, help="larger bodies are refused (413)"),
    "path": Option("str", help="the only URL path accepted (default: any path, as the meter's address has none)"),
    "max_requests_per_minute": Option("int", default=120, minimum=0,
                                      help="per source address; 0 = no limit (meters upload every 2 s at most)"),
}

SECTION = register_section(SectionSpec(
    name="http_push", options=OPTIONS, many=False,
    description="the listener that meters in HTTP upload mode POST to (targets with transport: push)",
))


def parse_listen(value: str) -> tuple[str, int]:
    """`:8088`, `0.0.0.0:8088`, `[::]:8088` -> (host, port); ValueError when malformed."""
    host, sep, port_text = str(value).rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: expected [host]:port, e.g. :8088")
    return host.strip("[]") or "0.0.0.0", int(port_text)


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
    max_requests_per_minute: int = 120

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "PushSettings":
        if not section.get("listen"):
            raise PollError("config", "http_push.listen is not set")
        try:
            host, port = parse_listen(section["listen"])
            networks = parse_networks(section.get("allowed_networks"))
        except ValueError as exc:
            raise PollError("config", f"http_push: {exc}") from None
        path = section.get("path")
        return cls(host=host, port=port, networks=networks,
                   max_body_bytes=int(section.get("max_body_bytes") or DEFAULT_MAX_BODY),
                   path=("/" + path.lstrip("/")) if path else None,
                   max_requests_per_minute=int(section.get("max_requests_per_minute") or 0))

    def key(self) -> tuple:
        return (LISTENER, self.host, self.port, self.networks, self.max_body_bytes, self.path,
                self.max_requests_per_minute)


@dataclass
class Sink:
    """Where one device's pushes go: its target's emit, and the parser of its vendor."""

    target: str
    emit: Callable[[Any], None]  # a Reading, or a PollError for a failed message
    parse: Callable[[Any], Reading]


# A device id from a body that is not valid JSON (a truncated upload still names its meter).
_ID_IN_BROKEN_JSON = re.compile(r'"SN"\s*:\s*"([^"\\]{1,64})"')


@dataclass
class PushListener:
    """One HTTP server for all push targets; `identify` finds the device id in a decoded body."""

    settings: PushSettings
    log: Any
    store: Any = None
    identify: Callable[[Any], Any] = field(default=lambda doc: doc.get("SN") if isinstance(doc, dict) else None)
    sinks: dict[str, Sink] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    accepted: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _rate: dict[str, list] = field(default_factory=dict)  # source -> [window start, requests]
    _unknown_logged: set[str] = field(default_factory=set)

    # --- users -----------------------------------------------------------------------------
    def attach(self, device_id: str, sink: Sink) -> None:
        self.sinks[normalize_id(device_id)] = sink

    def detach(self, device_id: str, sink: Sink) -> None:
        key = normalize_id(device_id)
        if self.sinks.get(key) is sink:
            del self.sinks[key]

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> "PushListener":
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise PollError("config", f"http_push: cannot listen on {self.settings.host}:{self.settings.port}: "
                                      f"{exc.strerror or exc}") from None
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else self.settings.port
        self._publish()
        self.log.info("http push listening", address=f"{self.settings.host}:{self.port}")
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.store is not None:
            self.store.set_global(LISTENER, M.PUSH_REJECTED, [])

    # --- requests --------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        remote = request.remote or ""
        if not self._network_allowed(remote):
            return self._refuse(403, "forbidden_network", f"source {remote} is not in http_push.allowed_networks")
        if not self._within_rate(remote):
            return self._refuse(429, "rate_limited", "too many requests from this address")
        if self.settings.path is not None and request.path != self.settings.path:
            return self._refuse(404, "not_found", f"nothing is received at {request.path[:80]}")
        if request.method != "POST":
            return _reply(405, False, "POST the meter's JSON here", headers={"Allow": "POST"})
        body = await self._read_body(request)
        if body is None:
            return self._refuse(413, "too_large", f"body larger than {self.settings.max_body_bytes} bytes")
        return self.receive(body)

    def receive(self, body: bytes) -> web.Response:
        """Route one body to its target (the part of the work that needs no socket)."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            match = _ID_IN_BROKEN_JSON.search(body[:4096].decode("utf-8", "replace"))
            sink = self.sinks.get(normalize_id(match.group(1))) if match else None
            message = f"body is not JSON ({exc.__class__.__name__})"
            if sink is not None:
                sink.emit(PollError("parse", f"pushed {message}"))
            return self._refuse(400, "malformed", message)
        try:
            device_id = self.identify(document)
        except Exception:
            device_id = None
        if not isinstance(device_id, (str, int)) or isinstance(device_id, bool) or not str(device_id).strip():
            return self._refuse(400, "malformed", "the body names no meter (no SN)")
        sink = self.sinks.get(normalize_id(device_id))
        if sink is None:
            if len(self._unknown_logged) < MAX_UNKNOWN_LOGGED and normalize_id(device_id) not in self._unknown_logged:
                self._unknown_logged.add(normalize_id(device_id))  # once per SN: it comes back every upload
                self.log.info("push from a meter no target reads refused", sn=str(device_id)[:64])
            return self._refuse(403, "unknown_sn", f"SN {str(device_id)[:64]!r} is not configured here")
        try:
            reading = sink.parse(document)
        except ParseError as exc:
            sink.emit(PollError("parse", f"pushed body: {exc}"))
            return self._refuse(400, "malformed", str(exc))
        sink.emit(reading)
        self.accepted += 1
        return _reply(200, True, "ok")

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

    def _network_allowed(self, remote: str) -> bool:
        if not self.settings.networks:
            return True
        try:
            address = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        candidates = (address, mapped) if mapped is not None else (address,)
        return any(a in net for a in candidates for net in self.settings.networks if a.version == net.version)

    def _within_rate(self, remote: str) -> bool:
        limit = self.settings.max_requests_per_minute
        if not limit:
            return True
        now = time.monotonic()
        if len(self._rate) > 10_000:  # a scan from many addresses must not grow this forever
            self._rate = {k: v for k, v in self._rate.items() if now - v[0] < RATE_WINDOW}
        window = self._rate.get(remote)
        if window is None or now - window[0] >= RATE_WINDOW:
            self._rate[remote] = [now, 1]
            return True
        window[1] += 1
        return window[1] <= limit

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._publish()
        return _reply(status, False, message)

    def _publish(self) -> None:
        if self.store is not None:
            self.store.set_global(LISTENER, M.PUSH_REJECTED, [
                ((("listener", LISTENER), ("reason", r)), n) for r, n in sorted(self.rejected.items())])


def normalize_id(value: Any) -> str:
    """Serial numbers compare without case or surrounding blanks (the meter prints them upper case)."""
    return str(value).strip().upper()


def _reply(status: int, ok: bool, message: str, headers: dict | None = None) -> web.Response:
    body = json.dumps({"successful": ok, "message": message}, separators=(",", ":"))
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)
