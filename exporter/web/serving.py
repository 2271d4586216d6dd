"""Protections shared by the exporter's HTTP listeners (the main one and the push one) against
clients that hold connections instead of using them, or that fill the log.

- A request head must arrive within `head_timeout`, counted from the connection's start, or from
  the first byte after a keep-alive pause: a client trickling a byte a second (slowloris) is
  closed then. aiohttp has no such timeout, so each connection's protocol is wrapped
  (`GuardedSite`) and a middleware tells the wrapper while a request is being served.
- Idle keep-alive connections are closed after `idle_timeout`.
- At most `max_connections` at once. At the limit, a connection that is not being served (still
  waiting for its head, or idle) is closed to make room: the oldest of the newcomer's own source
  address if it has one, else the oldest of all. A flood from one address thus churns through its
  own connections and cannot push Prometheus out. When every connection is being served, the new
  one is closed at once.
- Accept errors (out of file descriptors: EMFILE) are logged once a minute with a count, instead
  of a traceback for every attempt (asyncio retries every second, and many times per retry);
  malformed requests likewise (aiohttp logs a traceback for each).

With TLS, a connection counts once its handshake is done; the handshake itself must finish
within `head_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from ..runtime import logs

DEFAULT_HEAD_TIMEOUT = 10.0  # seconds
DEFAULT_MAX_CONNECTIONS = 512  # as Prometheus's own --web.max-connections
DEFAULT_IDLE_TIMEOUT = 75.0  # seconds: longer than the usual scrape intervals, so scrapes reuse connections
LOG_EVERY = 60.0  # seconds between two log lines about the same kind of trouble


def parse_listen_address(value: str, example: str = ":9896") -> tuple[str, int]:
    """`:9896`, `0.0.0.0:9896`, `[::1]:9896` -> (host, port); no host means every IPv4 address.
    ValueError, naming the value and an example, when malformed."""
    host, sep, port_text = str(value).rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: expected [host]:port, e.g. {example}")
    return host.strip("[]") or "0.0.0.0", int(port_text)


@dataclass(frozen=True)
class Limits:
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


class Throttle:
    """Lets one log line through per `every` seconds and counts the ones held back."""

    __slots__ = ("every", "_last", "held")

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: float | None = None
        self.held = 0

    def ready(self) -> int | None:
        """None: stay quiet; else the number of occurrences held back since the last line."""
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            self.held += 1
            return None
        held, self.held, self._last = self.held, 0, now
        return held


# --- connections ---------------------------------------------------------------------------------


class ConnectionGuard:
    """The connections of one listener: counts them, and closes those that overstay."""

    def __init__(self, limits: Limits, listener: str) -> None:
        self.limits = limits
        self.listener = listener
        self.connections = 0
        self.closed: dict[str, int] = {"head_timeout": 0, "idle_timeout": 0, "evicted": 0, "over_limit": 0}
        self._by_transport: dict[Any, _Guarded] = {}
        # Connections not being served, oldest first: all of them, and by source address.
        self._waiting: OrderedDict[_Guarded, None] = OrderedDict()
        self._waiting_from: dict[str, OrderedDict[_Guarded, None]] = {}
        self._full = Throttle()

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, inner)

    def middleware(self):
        """Marks a connection as being served while a request is handled (its head has come)."""

        @web.middleware
        async def guard(request: web.Request, handler):
            connection = self._by_transport.get(request.transport)
            if connection is None:
                return await handler(request)
            connection.serving(True)
            try:
                return await handler(request)
            finally:
                connection.serving(False)

        return guard

    # --- called by the connections ------------------------------------------------------------
    def admit(self, connection: "_Guarded") -> bool:
        if self.connections >= self.limits.max_connections:
            victim = self._victim(connection.source)
            if victim is None:
                self._note_full("over_limit")
                return False
            self._note_full("evicted")
            victim.close()  # gives its slot back now; its socket goes on the loop's next turn
        self.connections += 1
        self._by_transport[connection.transport] = connection
        return True

    def release(self, connection: "_Guarded") -> None:
        self.connections -= 1
        self._by_transport.pop(connection.transport, None)
        self.unpark(connection)

    def park(self, connection: "_Guarded") -> None:
        """`connection` now waits for a head or idles: it may be closed to make room."""
        self.unpark(connection)
        self._waiting[connection] = None
        self._waiting_from.setdefault(connection.source, OrderedDict())[connection] = None

    def unpark(self, connection: "_Guarded") -> None:
        if connection not in self._waiting:
            return
        del self._waiting[connection]
        own = self._waiting_from.get(connection.source)
        if own is not None:
            own.pop(connection, None)
            if not own:
                del self._waiting_from[connection.source]

    def _victim(self, source: str) -> "_Guarded | None":
        own = self._waiting_from.get(source)
        if own:
            return next(iter(own))
        return next(iter(self._waiting), None)

    def _note_full(self, reason: str) -> None:
        self.closed[reason] += 1
        held = self._full.ready()
        if held is not None:
            logs.get().warning("connection limit reached; closing connections that wait for a request head "
                               "(or new ones while all are busy)", listener=self.listener,
                               max_connections=self.limits.max_connections, since_last_line=held)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the head and idle timer around it."""

    __slots__ = ("_guard", "_factory", "_inner", "transport", "source", "_timer", "_busy", "_idle", "_closed")

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: Any = None
        self.transport: Any = None
        self.source = ""
        self._timer: asyncio.TimerHandle | None = None
        self._busy = 0
        self._idle = False  # between keep-alive requests, as opposed to waiting for the first head
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._guard.admit(self):
            self._closed = True
            transport.abort()
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)
        self._wait(self._guard.limits.head_timeout, idle=False)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._idle and not self._busy:
            self._wait(self._guard.limits.head_timeout, idle=False)  # a new head has begun
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        self.close()
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    # --- called by the guard ------------------------------------------------------------------
    def serving(self, started: bool) -> None:
        self._busy += 1 if started else -1
        if self._busy:
            self._cancel()
            self._guard.unpark(self)
        elif not self._closed:
            self._wait(self._guard.limits.idle_timeout, idle=True)

    def close(self) -> None:
        """Give the slot back and drop the connection (no goodbye: it is a slow or idle client)."""
        if self._closed:
            return
        self._closed = True
        self._cancel()
        self._guard.release(self)
        self.transport.abort()

    # --- timers -----------------------------------------------------------------------------
    def _wait(self, seconds: float, idle: bool) -> None:
        if self._closed:
            return
        self._cancel()
        self._idle = idle
        self._guard.park(self)
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._busy:
            return
        self._guard.closed["idle_timeout" if self._idle else "head_timeout"] += 1
        self.close()


class GuardedSite(web.BaseSite):
    """A TCP site (as aiohttp's TCPSite) whose connections pass through a ConnectionGuard. The
    guard's middleware must be the application's first."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self.guard = host, port, guard

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self.guard.protocol_factory(server), self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=self.guard.limits.head_timeout if self._ssl_context else None,
            backlog=self._backlog, reuse_address=True)

    @property
    def port(self) -> int:
        sockets = self._server.sockets if self._server is not None else ()
        return sockets[0].getsockname()[1] if sockets else self._port


def runner_options(limits: Limits, listener: str) -> dict[str, Any]:
    """Keyword arguments of web.AppRunner for a guarded listener."""
    return {"access_log": None, "shutdown_timeout": 1.0, "keepalive_timeout": limits.idle_timeout,
            "logger": server_logger(listener)}


# --- what aiohttp logs ------------------------------------------------------------------------------


class _ThrottledServerLog(logging.Handler):
    """aiohttp's "Error handling request" lines, once a minute per kind of error: a client that
    sends malformed requests would otherwise write a traceback per request. A traceback is kept
    only for errors in the exporter's own handlers (not for bad requests or lost connections)."""

    def __init__(self, listener: str) -> None:
        super().__init__()
        self.listener = listener
        self.throttles: dict[str, Throttle] = {}

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else record.getMessage()[:80]
        held = self.throttles.setdefault(kind, Throttle()).ready()
        if held is None:
            return
        from aiohttp.http_exceptions import HttpProcessingError

        fields: dict[str, Any] = {"listener": self.listener, "since_last_line": held}
        if isinstance(exc, HttpProcessingError):
            # only the kind: the message quotes the request, and a push URL holds a secret
            logs.get().warning("bad or broken HTTP requests", error=f"{kind} ({exc.code})", **fields)
        elif isinstance(exc, ConnectionError):
            logs.get().warning("bad or broken HTTP requests", error=kind, **fields)
        else:
            logs.get().error("error in a request handler", error=record.getMessage()[:200],
                             exc_info=record.exc_info or False, **fields)


def server_logger(listener: str) -> logging.Logger:
    logger = logging.getLogger(f"energy_meter_exporter.http.{listener}")
    if not logger.handlers:
        logger.addHandler(_ThrottledServerLog(listener))
        logger.propagate = False
        logger.setLevel(logging.INFO)  # aiohttp's debug lines only in its own debug mode
    return logger


# --- accept errors ----------------------------------------------------------------------------------

ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for EMFILE, ENFILE, ...


class _QuietAcceptErrors:
    """The loop's exception handler: accept failures once a minute per listener, with a count;
    everything else to the handler that was there before."""

    def __init__(self, previous: Callable | None) -> None:
        self.previous = previous
        self.throttles: dict[str, Throttle] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        address = _address(context.get("socket"))
        held = self.throttles.setdefault(address, Throttle()).ready()
        if held is not None:
            exc = context.get("exception")
            logs.get().error("cannot accept connections (new ones wait until some close)", address=address,
                             error=getattr(exc, "strerror", None) or str(exc), since_last_line=held)


def _address(sock: Any) -> str:
    try:
        host, port = sock.getsockname()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError, TypeError, ValueError):
        return "?"


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Install the filter once per loop."""
    current = loop.get_exception_handler()
    if not isinstance(current, _QuietAcceptErrors):
        loop.set_exception_handler(_QuietAcceptErrors(current))


# --- file descriptors -------------------------------------------------------------------------------

FD_RESERVE = 64  # descriptors kept for devices, files and the listeners themselves


def open_file_limit() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def warn_if_over_file_limit(max_connections: int, log: Any, flag: str) -> None:
    """At the connection limit every connection is a file descriptor: when the process may not
    open that many, accept fails first (logged once a minute) and polls of devices next."""
    soft = open_file_limit()
    if soft is not None and max_connections > soft - FD_RESERVE:
        log.warning(f"{flag} is close to or above the open-file limit; raise the limit (ulimit -n, "
                    "LimitNOFILE=) or lower the connection limit", max_connections=max_connections,
                    open_file_limit=soft)
