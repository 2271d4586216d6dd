"""IOmeter Partner API (GraphQL): transport `partner`, one target for a whole partner account.

Discovery: the `installations` query, page by page, gives every installation with its meters
and IOmeter devices (the device state: gateway and reader connection, attachment, battery,
power source, PIN). It runs at start and every `discovery_interval`.

Readings, mode `subscription` (default): a GraphQL subscription, over WebSocket through gql
(`subscription_protocol: websocket`, the default), which speaks both `graphql-transport-ws` and
the legacy `graphql-ws` and takes what the server picks; or over Server-Sent Events
(`subscription_protocol: sse`, the GraphQL over SSE protocol in its distinct-connections mode:
one POST with `Accept: text/event-stream` per subscription, answered with `next` events whose
data is the execution result, and `complete`). Both give the same guarantees below; an SSE event
over 1 MiB drops the stream (`too_large`), one that is not JSON is skipped (`parse`), a stream
without an event for `stream_idle_timeout` is opened again (`timeout`). `meterReadings(startTime)` streams every meter of the account; `liveReadings` is opened per
installation with the configured `obis_codes`. When the connection drops, the adapter
reconnects with a growing delay and resumes `meterReadings` from the newest reading it got (the
API replays from there, so nothing received meanwhile is lost; the replayed readings come again
and are dropped as duplicates). Mode `query`: the `readings` query, from the newest reading held,
page by page with its cursor, once per interval.

What is emitted: the daemon replaces a target's snapshot whole with each emitted Reading, so
every Reading holds the newest state of ALL meters of the account (`account.AccountReadings`), plus the
device states and the counters `energy_meter_exporter_readings_received_total` /
`..._duplicate_readings_total`. A reading never replaces a newer or equal one of its meter, so a
replay cannot move a counter backwards. Emits are spaced at least `min_emit_interval` apart;
readings arriving meanwhile are all in the next one.

Queries go through the daemon's HTTP session (`exporter.transport.http`, bounded bodies); the subscription
has its own WebSocket, or its own HTTP connections (SSE). The Authorization header (Basic, or WSSE
with a fresh nonce) is sent on every request, on the WebSocket upgrade and in the
`connection_init` payload, and on every SSE request; all of them over TLS checked against the
system's CAs or `ca_file`, so a certificate not trusted fails the target (`tls`) before the
header is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportProtocolError, TransportQueryError, TransportServerError
from gql.transport.websockets import WebsocketsTransport
from graphql import print_ast

from ...config.loader import Secret, Settings, TargetConfig, setting
from ...model.catalogue import IOMETER
from ...model.errors import PollError
from ...model.jsontext import header_problem, loads
from ...model.samples import Emit, ParseError, Reading
from ...runtime.backoff import Backoff, retry_forever
from ...runtime.context import AdapterContext
from ...runtime.tasks import cancel_and_wait
from ...transport.http import Response, request, status_error
from ...transport.sse import is_event_stream, read_bounded, read_events, stream_failure
from ..registry import TransportSpec, register
from . import parse
from .account import AccountReadings
from .auth import METHODS, Credentials
from .obis import normalize

DEFAULT_ENDPOINT = "https://partner.prod.iometer.cloud/api/v1/query"
MAX_REPLAY = 24 * 3600.0  # the API replays at most 24 h
MAX_PAGES_PER_POLL = 200  # the rest of a long backlog comes with the next poll
CLOSE_TIMEOUT = 1.0  # seconds a closing subscription waits for the server (a stop must end within 5)
# A discovery walks every page of the installations: it may take this many request timeouts.
DISCOVERY_TIMEOUTS = 10

_DEVICE_FIELDS = """
fragment DeviceState on Device {
  id
  bridge { connectionStatus }
  core { connectionStatus attachmentStatus batteryLevel powerStatus pinStatus }
}
"""
_READING_FIELDS = """
fragment ReadingFields on MeterReading {
  meter { id number installation { id } }
  time
  values { obisCode value unit }
}
"""
INSTALLATIONS = gql("""
query Installations($pagination: Pagination) {
  installations(pagination: $pagination) {
    id
    meters { id number }
    devices { ...DeviceState }
    currentDevice { ...DeviceState }
  }
}
""" + _DEVICE_FIELDS)
# For a server whose Pagination input differs from {limit, offset}: one unpaged call.
INSTALLATIONS_UNPAGED = gql("""
query InstallationsUnpaged {
  installations {
    id
    meters { id number }
    devices { ...DeviceState }
    currentDevice { ...DeviceState }
  }
}
""" + _DEVICE_FIELDS)
READINGS = gql("""
query Readings($startTime: DateTime, $limit: Int, $cursor: String) {
  readings(startTime: $startTime, limit: $limit, cursor: $cursor) {
    readings { ...ReadingFields }
    cursor
  }
}
""" + _READING_FIELDS)
METER_READINGS = gql("""
subscription MeterReadings($startTime: DateTime) {
  meterReadings(startTime: $startTime) { ...ReadingFields }
}
""" + _READING_FIELDS)
LIVE_READINGS = gql("""
subscription LiveReadings($installationId: ID!, $obisCodes: [ObisCode]) {
  liveReadings(installationId: $installationId, obisCodes: $obisCodes) { ...ReadingFields }
}
""" + _READING_FIELDS)
# The queries as sent over HTTP (and the subscriptions over SSE), printed once.
_TEXTS = {doc: print_ast(doc.document)
          for doc in (INSTALLATIONS, INSTALLATIONS_UNPAGED, READINGS, METER_READINGS, LIVE_READINGS)}
# What an SSE answer that is no event stream may hold (GraphQL errors as JSON) is read up to this.
REFUSAL_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class PartnerSettings(Settings):
    partner_id: str = setting("str", required=True, help="partner id (the user name of the Partner API)")
    secret: Secret = setting("secret", required=True, help="partner secret")
    auth: str = setting("str", default="basic", choices=METHODS,
                        help="basic, or wsse (the secret itself is never sent)")
    endpoint: str = setting("str", default=DEFAULT_ENDPOINT, help="GraphQL endpoint for queries (https)")
    ws_endpoint: str | None = setting("str", help="GraphQL WebSocket endpoint (default: endpoint with wss://)")
    ca_file: str | None = setting("path", help="CA (PEM) to check the API's certificate with (default: the system's)")
    mode: str = setting("str", default="subscription", choices=("subscription", "query"),
                        help="subscription: readings pushed over WebSocket; query: `readings` every interval")
    subscription_protocol: str = setting(
        "str", default="websocket", choices=("websocket", "sse"),
        help="subscription mode: websocket (GraphQL over WebSocket) or sse (GraphQL over Server-Sent Events)")
    sse_endpoint: str | None = setting("str", help="GraphQL over SSE endpoint (default: endpoint)")
    stream_idle_timeout: float = setting("duration", default=300.0, minimum=0.1,
                                         help="sse: open a subscription stream again after this long without an event")
    subscription: str = setting("str", default="meterReadings", choices=("meterReadings", "liveReadings"),
                                help="meterReadings: all meters, resumable; liveReadings: per installation")
    installations: tuple[str, ...] = setting("list", help="installation ids to export (default: all)")
    meters: tuple[str, ...] = setting("list", help="names for meters, as 'meter number=name' entries (label meter)")
    obis_codes: tuple[str, ...] = setting("list", help="OBIS codes to export (default: all the API sends)")
    lookback: float = setting("duration", default=900.0, minimum=0.0,
                              help="how far back the first query or subscription starts (at most 24h)")
    discovery_interval: float = setting("duration", default=600.0, minimum=10.0,
                                        help="time between refreshes of installations, meters and devices")
    page_size: int = setting("int", default=100, minimum=1, help="items asked for per page")
    reconnect_delay: float = setting("duration", default=1.0, minimum=0.001,
                                     help="first delay before reconnecting a dropped subscription")
    min_emit_interval: float = setting("duration", default=1.0, minimum=0.0,
                                       help="subscription: least time between two snapshots")


OPTIONS = PartnerSettings.table()


def check_target(options: Mapping[str, Any]):
    try:
        parse.meter_names(options.get("meters") or ())
    except ValueError as exc:
        yield "meters", str(exc)
    for code in options.get("obis_codes") or ():
        try:
            normalize(code)
        except ParseError as exc:
            yield "obis_codes", str(exc)
    endpoint = str(options.get("endpoint") or DEFAULT_ENDPOINT)
    if not endpoint.startswith(("http://", "https://")):
        yield "endpoint", "must start with https:// (or http://)"
    ws = options.get("ws_endpoint")
    if ws and not str(ws).startswith(("ws://", "wss://")):
        yield "ws_endpoint", "must start with wss:// (or ws://)"
    sse = options.get("sse_endpoint")
    if sse and not str(sse).startswith(("http://", "https://")):
        yield "sse_endpoint", "must start with https:// (or http://)"
    ca = options.get("ca_file")
    if ca and not Path(ca).is_file():
        yield "ca_file", f"{ca} is not a readable file"
    lookback = options.get("lookback")
    if lookback is not None and lookback > MAX_REPLAY:
        yield "lookback", "the API goes back 24h at most"


def ws_url(endpoint: str) -> str:
    if endpoint.startswith("https://"):
        return "wss://" + endpoint[len("https://"):]
    if endpoint.startswith("http://"):
        return "ws://" + endpoint[len("http://"):]
    return endpoint


class IOmeterPartner:
    def __init__(self, target: TargetConfig, ctx: AdapterContext) -> None:
        self.target = target
        self.ctx = ctx
        self.log = ctx.log
        settings = PartnerSettings.of(target)
        self.credentials = Credentials(settings.auth, settings.partner_id, settings.secret, ctx.clock)
        self.endpoint = settings.endpoint
        self.ws_endpoint = settings.ws_endpoint or ws_url(self.endpoint)
        self.protocol = settings.subscription_protocol
        self.sse_endpoint = settings.sse_endpoint or self.endpoint
        self.stream_idle_timeout = float(settings.stream_idle_timeout)
        self._streams: aiohttp.ClientSession | None = None  # the SSE subscriptions' own connections
        self.ca_file = settings.ca_file
        self._tls: ssl.SSLContext | None = None
        self.mode = settings.mode
        self.delivery = "push" if self.mode == "subscription" else "poll"
        self.subscription = settings.subscription
        codes = settings.obis_codes
        self.obis_codes = sorted({normalize(c) for c in codes}) if codes else None
        installations = settings.installations
        self.account = AccountReadings(
            names=parse.meter_names(settings.meters),
            installations_allowed=set(installations) if installations else None,
            obis_codes=self.obis_codes,
        )
        self.lookback = min(float(settings.lookback), MAX_REPLAY)
        self.discovery_interval = float(settings.discovery_interval)
        self.page_size = settings.page_size
        reconnect_delay = float(settings.reconnect_delay)
        # Reconnections and retries of a failed discovery alike.
        self.reconnects = Backoff.for_reconnects(reconnect_delay, max(target.max_backoff, reconnect_delay))
        self.min_emit_interval = float(settings.min_emit_interval)
        self.discovered_at: float | None = None
        self.discovered = asyncio.Event()
        self._discovery_done = asyncio.Event()  # set after every discovery
        # Where failures go while `run` runs (the scheduler: up 0, reason, counter); before, to the log.
        self._emit: Emit | None = None
        self.connections = 0  # subscription connections opened (for tests and logs)
        self.last_error: PollError | None = None
        self._pending: tuple[str | None, str] | None = None  # (startTime, cursor) of a cut walk
        self._changed = asyncio.Event()
        self._paged = True

    # --- HTTP queries ---
    async def _query(self, document: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
        body = {"query": _TEXTS[document], "variables": variables}
        headers = {
            "Authorization": self.credentials.header(),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        response = await request(self.ctx.session, "POST", self.endpoint, headers=headers, json_body=body,
                                 ssl_context=self._tls_context() if self.endpoint.startswith("https://") else None)
        if response.status in (401, 403):
            raise PollError("unauthorized", f"{self.endpoint}: HTTP {response.status}: partner id or secret refused")
        try:
            result = parse.graphql_result(response.json()) if response.status == 200 else None
        except ParseError as exc:
            raise PollError("parse", f"{self.endpoint}: {exc}") from None
        if result is None:
            raise status_error(self.endpoint, response)
        if result.errors:
            if result.unauthorized():
                raise PollError("unauthorized", f"{self.endpoint}: {result.error_text()}")
            raise PollError("http_error", f"{self.endpoint}: GraphQL error: {result.error_text()}")
        if result.data is None:
            raise PollError("parse", f"{self.endpoint}: answer without data")
        return result.data

    async def discover(self) -> list[parse.InstallationInfo]:
        """Every installation (all pages), its meters and devices; the account learns them."""
        found: dict[str, parse.InstallationInfo] = {}
        offset = 0
        while True:
            if self._paged:
                try:
                    data = await self._query(INSTALLATIONS, {"pagination": {"limit": self.page_size, "offset": offset}})
                except PollError as exc:
                    if offset == 0 and exc.reason == "http_error" and "agination" in exc.message:
                        self.log.warning("installations: paging refused, asking without", error=exc.message)
                        self._paged = False
                        continue
                    raise
            else:
                data = await self._query(INSTALLATIONS_UNPAGED, {})
            page = _parsed(parse.parse_installations, data, "installations")
            fresh = [i for i in page if i.id not in found]
            found.update((i.id, i) for i in fresh)
            # Only an empty page ends the list (a server may cap pages below page_size); a page
            # of nothing new ends it too (a server that ignores the offset).
            if not self._paged or not fresh:
                break
            offset += len(page)
        installations = list(found.values())
        self.account.set_installations(installations)
        self.discovered_at = self.ctx.clock()
        self.discovered.set()
        self._discovery_done.set()
        return installations

    def _start_time(self) -> str:
        """Where a query or subscription starts: the newest reading held, else `lookback` ago;
        never further back than the API keeps."""
        now = self.ctx.clock()
        start = self.account.newest_time if self.account.newest_time is not None else now - self.lookback
        return parse.format_time(max(start, now - MAX_REPLAY + 60))

    async def query_readings(self) -> int:
        """Walk the `readings` pages from the newest reading held; returns the readings read."""
        start, cursor = self._pending if self._pending else (self._start_time(), None)
        self._pending = None
        count = 0
        for _ in range(MAX_PAGES_PER_POLL):
            variables = {"startTime": start, "limit": self.page_size, "cursor": cursor}
            data = await self._query(READINGS, variables)
            items, cursor = _parsed(parse.parse_readings_page, data, "readings")
            for item in items:
                _offer(self.account, item)
            count += len(items)
            if not cursor:
                return count
        self._pending = (start, cursor)  # a long backlog: go on from here next time
        return count

    async def poll(self) -> Reading:
        """Query mode: refresh discovery when due, read the new readings, return the account."""
        if self.discovered_at is None or self.ctx.clock() - self.discovered_at >= self.discovery_interval:
            await self.discover()
        await self.query_readings()
        return self.account.snapshot()

    # --- push ---
    async def run(self, emit: Emit) -> None:
        """Subscription mode: the subscription, reconnected after it ends or breaks, and the
        discovery every `discovery_interval` (both with the reconnection policy's delays after
        failures). Query mode is polled: the daemon never runs it."""
        if self.mode != "subscription":
            raise RuntimeError("a partner target in query mode is polled, not run")
        self._emit = emit  # failures go to the scheduler as PollErrors: up 0, reason, counter
        tasks = [
            asyncio.create_task(self._emitter(emit)),
            asyncio.create_task(retry_forever(self._discover_once, self.reconnects, self._discovery_failed,
                                              every=self.discovery_interval)),
        ]
        try:
            await retry_forever(self._subscription, self.reconnects)
        finally:
            await cancel_and_wait(*tasks)

    async def _emitter(self, emit: Emit) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            emit(self.account.snapshot())
            await asyncio.sleep(self.min_emit_interval)

    async def _discover_once(self) -> bool:
        async with asyncio.timeout(self.target.timeout * DISCOVERY_TIMEOUTS):
            await self.discover()
        self._changed.set()
        return True

    def _discovery_failed(self, exc: Exception) -> None:
        if isinstance(exc, TimeoutError):
            exc = PollError("timeout", "discovery took too long")
        elif not isinstance(exc, PollError):  # a bug: said as such, and discovery tried again
            exc = PollError("internal", f"discovery: internal error: {exc.__class__.__name__}")
        self._failed(exc)

    async def _subscription(self) -> bool:
        """One subscription connection, until it ends: True if it delivered readings (a break
        after that is routine, and the backoff starts over)."""
        before = self.account.received
        try:
            await self._subscribe_once()
            self.log.info("subscription ended by the server; reconnecting")
        except Exception as exc:  # every way a WebSocket or a stream can fail; classified for the log
            error = _classify(exc, self.sse_endpoint if self.protocol == "sse" else self.ws_endpoint)
            # A message that cannot be read breaks every connection the same way, even one
            # that delivered replayed readings first: that is the target's failure.
            if self.account.received > before and error.reason not in ("parse", "too_large"):
                # it worked and then broke: reconnecting is routine, not a failed target
                self.log.info("subscription lost; reconnecting", error=error.message)
            else:
                self._failed(error)
        return self.account.received > before

    def _transport(self) -> "_PartnerTransport":
        # (two headers: WSSE wants a fresh nonce for each use)
        authorization, init = self.credentials.header(), self.credentials.header()
        problem = header_problem(authorization)
        if problem is not None:  # the WebSocket library would fail on it in its own way
            raise PollError("config", f"{self.ws_endpoint}: the Authorization header cannot be sent: {problem} "
                                      "(check partner_id and secret)")
        context: ssl.SSLContext | bool = False
        if self.ws_endpoint.startswith("wss://"):
            context = self._tls_context() or ssl.create_default_context()
        return _PartnerTransport(
            url=self.ws_endpoint,
            headers={"Authorization": authorization},
            init_payload={"Authorization": init},
            ssl=context,
            connect_timeout=self.target.timeout,
            ack_timeout=self.target.timeout,
            # Closing waits for the server's close frame; under a flood it sits behind unread
            # messages that nobody reads any more, so the wait is cut short (default 10 s).
            close_timeout=CLOSE_TIMEOUT,
            # No per-message deflate: the readings of an account are alike, so one socket read
            # of compressed frames holds 5 to 15 times more messages, all inflated and parsed
            # before the event loop gets another turn (see _consume). More bytes on the wire
            # (about 1.5 kB per reading of 23 registers), less CPU and no long stalls.
            connect_args={"close_timeout": CLOSE_TIMEOUT, "compression": None},
        )

    async def _subscribe_once(self) -> None:
        if self.protocol == "sse":
            self.connections += 1
            await self._subscriptions(self._sse_stream)
            return
        client = Client(transport=self._transport(), fetch_schema_from_transport=False)
        async with client as session:
            self.connections += 1

            async def over_websocket(document: GraphQLRequest, variables: dict[str, Any], field: str) -> None:
                await self._consume(session, GraphQLRequest(document, variable_values=variables), field)

            await self._subscriptions(over_websocket)

    async def _subscriptions(self, stream: Callable[[GraphQLRequest, dict[str, Any], str], Awaitable[None]]) -> None:
        """The configured subscriptions, each through `stream`, until one ends or breaks."""
        if self.subscription == "meterReadings":
            await stream(METER_READINGS, {"startTime": self._start_time()}, "meterReadings")
            return
        await self.discovered.wait()
        watched = sorted(i.id for i in self.account.installations)
        tasks = [
            asyncio.create_task(stream(LIVE_READINGS, {"installationId": i, "obisCodes": self.obis_codes},
                                       "liveReadings"))
            for i in watched
        ]
        # A new or removed installation: reconnect and subscribe to the new set.
        tasks.append(asyncio.create_task(self._until_installations_change(watched)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failed subscription ends the connection
        finally:
            await cancel_and_wait(*tasks)

    # --- GraphQL over Server-Sent Events (distinct connections mode) ---
    async def _sse_stream(self, document: GraphQLRequest, variables: dict[str, Any], field: str) -> None:
        """One subscription on its own HTTP request, until the server completes it or it breaks
        (a PollError with its reason)."""
        url = self.sse_endpoint
        authorization = self.credentials.header()  # WSSE: a fresh nonce for each request
        problem = header_problem(authorization)
        if problem is not None:
            raise PollError("config", f"{url}: the Authorization header cannot be sent: {problem} "
                                      "(check partner_id and secret)")
        headers = {"Authorization": authorization, "Accept": "text/event-stream",
                   "Content-Type": "application/json"}
        body = {"query": _TEXTS[document], "variables": variables}
        idle = self.stream_idle_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.target.timeout, sock_read=idle)
        context = self._tls_context() if url.startswith("https://") else None
        tls = {"ssl": context} if context is not None else {}
        try:
            async with self._stream_session().post(url, json=body, headers=headers, timeout=timeout,
                                                   allow_redirects=False, **tls) as response:
                if response.status != 200 or not is_event_stream(response):
                    raise await _refusal(response, url)
                async for event in read_events(response.content, url, idle):
                    if event.event == "complete":
                        return
                    if event.event == "next":
                        self._next(event.data, url, field)
                    # any other event is not of this protocol: ignored, as EventSource does
        except Exception as exc:  # every way a stream breaks, as a PollError with its reason
            failure = stream_failure(exc, url, self.target.timeout, idle)
            if failure is None:
                raise
            raise failure from None

    def _next(self, data: str, url: str, field: str) -> None:
        """One `next` event: a reading is taken; an unreadable one is skipped and reported
        (`parse`); GraphQL errors end the subscription, as they do over WebSocket."""
        try:
            result = parse.graphql_result(loads(data, "event data"))
        except ParseError as exc:  # JsonError among them
            self._failed(PollError("parse", f"{url}: {exc}"))
            return
        if result.errors:
            if result.unauthorized():
                raise PollError("unauthorized", f"{url}: {result.error_text()}")
            raise PollError("http_error", f"{url}: GraphQL error: {result.error_text()}")
        try:
            _offer(self.account, parse.parse_subscription(result.data, field))
        except (ParseError, PollError) as exc:
            self._failed(PollError("parse", f"{field}: {exc}"))
            return
        self._changed.set()

    def _tls_context(self) -> ssl.SSLContext | None:
        """What every TLS connection to the API (queries, WebSocket, event streams) trusts:
        `ca_file`, or None for the system's CAs."""
        if self.ca_file and self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise PollError("config", f"cannot load ca_file {self.ca_file}: "
                                          f"{getattr(exc, 'strerror', None) or exc}") from None
        return self._tls

    def _stream_session(self) -> aiohttp.ClientSession:
        """The SSE subscriptions' own session: each holds its connection for as long as it runs
        (one per installation with liveReadings), which the daemon's shared session must not."""
        if self._streams is None or self._streams.closed:
            self._streams = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._streams

    async def _until_installations_change(self, watched: list[str]) -> None:
        while sorted(i.id for i in self.account.installations) == watched:
            self._discovery_done.clear()
            await self._discovery_done.wait()

    async def _consume(self, session: Any, request_: GraphQLRequest, field: str) -> None:
        # No yield of our own between messages. gql's queue is unbounded, and each turn of the
        # event loop lets its receiver move one more socket read (up to 256 kB, some 160
        # readings) into it: yielding every few messages under a flood lets the backlog grow
        # without end (measured: memory and full GC passes growing, ingest down to a tenth).
        # Taking what gql holds and waiting when it is empty keeps the backlog to one read, and
        # other tasks (targets, /metrics) wait at most the time it takes to parse that read.
        # aclosing: however the loop ends, the subscription is ended at once (gql's `complete`,
        # its listener gone), which the closing connection would otherwise wait for.
        async with contextlib.aclosing(session.subscribe(request_)) as messages:
            async for data in messages:
                try:
                    item = parse.parse_subscription(data, field)
                    _offer(self.account, item)
                except (ParseError, PollError) as exc:  # one bad message: skip it, keep the stream
                    self._failed(PollError("parse", f"{field}: {exc}"))
                    continue
                self._changed.set()

    def _failed(self, exc: PollError) -> None:
        self.last_error = exc
        if self._emit is not None:
            self._emit(exc)  # the scheduler records and logs it
        else:
            self.log.warning("partner api problem", reason=exc.reason, error=exc.message)

    async def close(self) -> None:
        if self._streams is not None:
            await self._streams.close()
            self._streams = None



class UnreadableMessage(TransportProtocolError):
    """A subscription message the JSON decoder gave up on (nested too deeply)."""


class _PartnerTransport(WebsocketsTransport):
    """gql's WebSocket transport, with a message nested past the recursion limit turned into a
    protocol error (the connection closes, the target fails with reason `parse`) instead of a
    RecursionError that ends gql's receiving task without a word."""

    def _parse_answer(self, answer: str) -> Any:
        try:
            return super()._parse_answer(answer)
        except RecursionError:
            raise UnreadableMessage("a subscription message nested too deeply to decode") from None


async def _refusal(response: aiohttp.ClientResponse, url: str) -> PollError:
    """Why a subscription request got no event stream: credentials refused, GraphQL errors
    answered as JSON (as the GraphQL over HTTP spec has it), another status, or something else."""
    if response.status in (401, 403):
        return PollError("unauthorized", f"{url}: HTTP {response.status}: partner id or secret refused")
    body = await read_bounded(response.content, REFUSAL_BYTES, url)
    try:
        result = parse.graphql_result(loads(body))
    except ParseError:
        result = None
    if result is not None and result.errors:
        if result.unauthorized():
            return PollError("unauthorized", f"{url}: {result.error_text()}")
        return PollError("http_error", f"{url}: GraphQL error: {result.error_text()}")
    if response.status != 200:
        return status_error(url, Response(response.status, body, dict(response.headers)))
    return PollError("parse", f"{url}: the answer is not an event stream "
                              f"({response.headers.get('Content-Type', 'no content type')[:60]})")


def _offer(account: AccountReadings, item: parse.MeterReading) -> None:
    try:
        account.offer(item)
    except ParseError as exc:
        raise PollError("parse", f"reading of meter {item.number or item.key}: {exc}") from None


def _parsed(parser: Callable[[Any], Any], data: Any, what: str) -> Any:
    try:
        return parser(data)
    except ParseError as exc:
        raise PollError("parse", f"{what}: {exc}") from None


def _classify(exc: BaseException, url: str) -> PollError:
    """A PollError for whatever ended a subscription, without secrets in the message."""
    if isinstance(exc, PollError):
        return exc
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnreadableMessage):
            return PollError("parse", f"{url}: {seen}")
        status = getattr(getattr(seen, "response", None), "status_code", None)
        close_code = getattr(getattr(seen, "rcvd", None), "code", None)
        if status in (401, 403) or getattr(seen, "code", None) in (401, 403) or close_code in (4401, 4403):
            return PollError("unauthorized", f"{url}: partner id or secret refused")
        if isinstance(seen, TransportServerError) and "unauthorized" in str(seen).lower():
            return PollError("unauthorized", f"{url}: partner id or secret refused")
        if isinstance(seen, TransportQueryError):
            errors = parse.GraphQLResult(None, tuple(e for e in (seen.errors or []) if isinstance(e, dict)))
            if errors.unauthorized():
                return PollError("unauthorized", f"{url}: {errors.error_text()}")
            return PollError("http_error", f"{url}: GraphQL error: {str(seen)[:200]}")
        if isinstance(seen, TransportServerError):
            return PollError("http_error", f"{url}: {str(seen)[:200]}")
        if isinstance(seen, (asyncio.TimeoutError, TimeoutError)):
            return PollError("timeout", f"{url}: no answer in time")
        if isinstance(seen, ssl.SSLError):
            return PollError("tls", f"{url}: TLS failed: {seen.__class__.__name__}")
        seen = seen.__cause__ or seen.__context__
    return PollError("connection", f"{url}: subscription lost: {exc.__class__.__name__}: {str(exc)[:160]}")


SPEC = register(TransportSpec(
    vendor=IOMETER, transport="partner", options=OPTIONS, create=IOmeterPartner,
    delivery="push", default_interval=60.0, min_interval=10.0, check_target=check_target,
    description="IOmeter Partner API (GraphQL): every meter of a partner account, by subscription or query",
))
