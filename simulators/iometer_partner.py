"""A simulator of the IOmeter Partner GraphQL API, on a real socket.

It implements the seed document's schema with graphql-core (no other GraphQL package): queries
and the mutation over HTTP POST/GET at `/api/v1/query`, subscriptions over WebSocket on the same
path with both subprotocols (`graphql-transport-ws` and the legacy `graphql-ws`), and over
Server-Sent Events on the same path (the seed names both protocols; GraphQL over SSE in its
distinct-connections mode: a POST with `Accept: text/event-stream` is answered with a stream of
`event: next` / `data: <execution result as JSON>` events and a final `event: complete`;
validation errors come as a `next` event with `errors`, refused credentials as HTTP 401), Basic
and WSSE authorization (header on the request or the WebSocket upgrade, or `Authorization` in the
`connection_init` payload), cursor-paged `readings`, paged `installations`, repeated
deliveries (the seed warns they happen), connections dropped on command and faulty event
streams (`sse_fault`). With `tls=True` it serves HTTPS and WSS with a certificate for 127.0.0.1
from a CA of its own (`ca_file`); `set_certificate` swaps it for one the client must refuse (of
another CA, or for another host name) and cuts every open connection, so that the next request
meets it. `authorizations` counts the requests that carried an Authorization header.

The seed leaves some things blank; the simulator fills them as follows, and the client relies
on none of them beyond what is named: `Pagination` is `{limit, offset}`; the `ObisFormat` enum
values are `hex`, `decimal`, `short` and `decimal_full`; `meterReadings(startTime)` replays what
the API received at or after `startTime` (inclusive, so the boundary reading comes twice), then
streams live readings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import shutil
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import graphql
from aiohttp import WSMsgType, web

from .iometer_auth import basic_matches, read_wsse
from .iometer_scalars import ObisCode, read_datetime, read_obis, write_datetime
from .tls import Authority, new_authority

PATH = "/api/v1/query"
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
# Certificates a client must refuse: one for the same address from another CA, and one from the
# API's own CA for another host name.
CERTIFICATE_FAULTS = ("wrong_ca", "wrong_name")

SCHEMA_SDL = """
scalar Uuid
scalar DateTime
scalar ObisCode
scalar MeterNumber

enum ConnectionStatus { connected disconnected }
enum CoreAttachmentStatus { attached detached }
enum CorePowerStatus { battery wired }
enum PinStatus { missing pending entered }
enum ObisFormat { hex decimal short decimal_full }

input Pagination { limit: Int offset: Int }

type Query {
  connectUrl(redirectUrl: String!, state: String): String!
  installation(id: Uuid!): Installation
  installations(pagination: Pagination): [Installation!]!
  partner: Partner!
  readings(startTime: DateTime, limit: Int, cursor: String): MeterReadingsResponse!
}

type Mutation {
  disableInstallation(id: Uuid!): Boolean
}

type Subscription {
  liveReadings(installationId: ID!, obisCodes: [ObisCode]): MeterReading!
  meterReadings(startTime: DateTime): MeterReading!
}

type Partner {
  id: Uuid!
  name: String!
  installations(pagination: Pagination): [Installation!]!
  installation(id: Uuid!): Installation
  meters(pagination: Pagination): [Meter!]!
  meter(id: Uuid, number: MeterNumber): Meter
  connectUrl(redirectUrl: String!, state: String): String!
  readings(startTime: DateTime, limit: Int, cursor: String): MeterReadingsResponse!
}

type Installation {
  externalId: String
  id: Uuid!
  meter(id: Uuid, number: MeterNumber): Meter
  meters: [Meter!]!
  currentMeter: Meter
  device(id: Uuid!): Device
  devices: [Device!]!
  currentDevice: Device
  readings(startTime: DateTime, limit: Int, cursor: String): MeterReadingsResponse!
}

type Meter {
  id: Uuid!
  installation: Installation!
  number: MeterNumber!
  readings(startTime: DateTime, limit: Int, cursor: String): MeterReadingsResponse!
}

type Device {
  id: Uuid!
  bridge: DeviceBridge!
  core: DeviceCore!
}

type DeviceBridge { connectionStatus: ConnectionStatus! }

type DeviceCore {
  connectionStatus: ConnectionStatus!
  attachmentStatus: CoreAttachmentStatus!
  batteryLevel: Int!
  powerStatus: CorePowerStatus!
  pinStatus: PinStatus!
}

type MeterReading {
  meter: Meter!
  time: DateTime!
  values: [MeterReadingValue!]!
}

type MeterReadingValue {
  obisCode(format: ObisFormat): ObisCode!
  value: Float!
  unit: String!
}

type MeterReadingsResponse {
  readings: [MeterReading!]!
  cursor: String
}
"""


# --- Data ------------------------------------------------------------------------------------


@dataclass
class SimMeter:
    id: str
    number: str
    installation_id: str


@dataclass
class SimDevice:
    id: str
    bridge_status: str = "connected"
    core: dict[str, Any] = field(
        default_factory=lambda: {
            "connectionStatus": "connected",
            "attachmentStatus": "attached",
            "batteryLevel": 87,
            "powerStatus": "battery",
            "pinStatus": "entered",
        }
    )


@dataclass
class SimInstallation:
    id: str
    meters: list[SimMeter] = field(default_factory=list)
    devices: list[SimDevice] = field(default_factory=list)
    external_id: str | None = None


@dataclass
class StoredReading:
    seq: int
    meter: SimMeter
    time: str
    values: list[tuple[str, float, str]]  # (OBIS code, value, unit)
    received_at: float


def demo_installations(count: int = 2, meters_per_installation: int = 1) -> list[SimInstallation]:
    """Installations with stable ids (uuid5), meters and one device each."""
    out = []
    for i in range(count):
        inst_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"iometer-sim/installation/{i}"))
        installation = SimInstallation(inst_id)
        for m in range(meters_per_installation):
            meter_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"iometer-sim/meter/{i}/{m}"))
            installation.meters.append(SimMeter(meter_id, f"1EMH00{i:04d}{m:04d}", inst_id))
        device_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"iometer-sim/device/{i}"))
        installation.devices.append(SimDevice(device_id))
        out.append(installation)
    return out


# A three-phase reading with every code of a standard meaning (IEC 62056-6-1, DSMR 5.0.2), plus
# one without (15.7.0, the absolute power).
def demo_values(energy_wh: float, power_w: float) -> list[tuple[str, float, str]]:
    return [
        ("1-0:1.8.0", energy_wh, "Wh"),
        ("1-0:2.8.0", 1520.5, "Wh"),
        ("1-0:1.8.1", energy_wh * 0.6, "Wh"),
        ("1-0:1.8.2", energy_wh * 0.4, "Wh"),
        ("1-0:2.8.1", 1520.5, "Wh"),
        ("1-0:2.8.2", 0.0, "Wh"),
        ("1-0:16.7.0", power_w, "W"),
        ("1-0:1.7.0", max(power_w, 0.0) / 1000, "kW"),
        ("1-0:2.7.0", max(-power_w, 0.0) / 1000, "kW"),
        ("1-0:36.7.0", power_w * 0.5, "W"),
        ("1-0:56.7.0", power_w * 0.3, "W"),
        ("1-0:76.7.0", power_w * 0.2, "W"),
        ("1-0:32.7.0", 231.2, "V"),
        ("1-0:52.7.0", 229.8, "V"),
        ("1-0:72.7.0", 230.4, "V"),
        ("1-0:31.7.0", 1.52, "A"),
        ("1-0:51.7.0", 0.91, "A"),
        ("1-0:71.7.0", 0.61, "A"),
        ("1-0:14.7.0", 50.01, "Hz"),
        ("1-0:13.7.0", 0.97, ""),
        ("1-0:33.7.0", 0.98, ""),
        ("1-0:53.7.0", 0.96, ""),
        ("1-0:73.7.0", 0.95, ""),
        ("1-0:21.7.0", max(power_w * 0.5, 0.0), "W"),
        ("1-0:41.7.0", max(power_w * 0.3, 0.0), "W"),
        ("1-0:61.7.0", max(power_w * 0.2, 0.0), "W"),
        ("1-0:22.7.0", max(-power_w * 0.5, 0.0), "W"),
        ("1-0:42.7.0", max(-power_w * 0.3, 0.0), "W"),
        ("1-0:62.7.0", max(-power_w * 0.2, 0.0), "W"),
        ("1-0:21.8.0", energy_wh * 0.5, "Wh"),
        ("1-0:41.8.0", energy_wh * 0.3, "Wh"),
        ("1-0:61.8.0", energy_wh * 0.2, "Wh"),
        ("1-0:22.8.0", 760.25, "Wh"),
        ("1-0:42.8.0", 456.15, "Wh"),
        ("1-0:62.8.0", 304.1, "Wh"),
        ("1-0:3.7.0", 0.12, "kvar"),
        ("1-0:4.7.0", 0.0, "kvar"),
        ("1-0:3.8.0", 123.4, "kvarh"),
        ("1-0:4.8.0", 45.6, "kvarh"),
        ("1-0:1.4.0", 0.35, "kW"),
        ("1-0:1.6.0", 4.21, "kW"),
        ("0-0:96.14.0", 1.0, ""),
        ("0-0:96.7.21", 4.0, ""),
        ("0-0:96.7.9", 2.0, ""),
        ("1-0:32.32.0", 3.0, ""),
        ("1-0:52.32.0", 1.0, ""),
        ("1-0:72.32.0", 0.0, ""),
        ("1-0:32.36.0", 0.0, ""),
        ("1-0:52.36.0", 0.0, ""),
        ("1-0:72.36.0", 1.0, ""),
        ("1-0:15.7.0", abs(power_w) / 1000, "kW"),
    ]


def format_obis(code: str, fmt: str) -> str:
    return read_obis(code).format(fmt)


# --- The simulator ---------------------------------------------------------------------------


@dataclass(eq=False)  # kept in a set, by identity
class _Connection:
    ws: web.WebSocketResponse
    transport: Any
    protocol: str
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)


class PartnerApiSimulator:
    def __init__(
        self,
        partner_id: str = "0da56783-39b2-4b43-adaa-301d247fcd59",
        secret: str = "1NNbSclq0ULA364TZBB4Hr0EYoRK",
        installations: list[SimInstallation] | None = None,
        *,
        protocols: tuple[str, ...] = (TRANSPORT_WS, LEGACY_WS),
        auth_methods: tuple[str, ...] = ("basic", "wsse"),
        max_page: int = 100,
        obis_format: str = "decimal",
        clock: Callable[[], float] = time.time,
        wsse_max_skew: float = 300.0,
        tls: bool = False,
    ) -> None:
        self.partner_id = partner_id
        self.secret = secret
        self.installations = list(installations if installations is not None else demo_installations())
        self.protocols = protocols
        self.auth_methods = auth_methods
        self.max_page = max_page
        self.obis_format = obis_format
        self.clock = clock
        self.wsse_max_skew = wsse_max_skew
        self.history: list[StoredReading] = []
        self.max_history = 100_000
        self._seq = 0
        self.duplicate_deliveries = False  # deliver every live reading twice
        # What happened, for tests and the demo:
        self.http_requests = 0
        self.ws_connections = 0
        self.sse_connections = 0  # GraphQL over SSE requests answered with a stream
        # An SSE stream's fault, for tests: "garbage" (a `next` event whose data is no JSON),
        # "oversized" (a `next` event of 2 MiB), "drop" (the connection cut in the middle of the
        # first event), "unauthorized" (every stream request answered 401, whatever the
        # credentials: a secret revoked), "drip" (each event sent a byte at a time,
        # `SSE_DRIP_SECONDS` apart: a stream that trickles but never completes an event).
        self.sse_fault: str | None = None
        self._sse_transports: set[Any] = set()
        self.subscriptions_started: list[dict[str, Any]] = []  # variables of each subscription
        self.rejected = 0
        self._nonces: set[str] = set()
        self._listeners: set[asyncio.Queue[StoredReading]] = set()
        self._connections: set[_Connection] = set()
        self._runner: web.AppRunner | None = None
        self._site_port = 0
        self.schema = self._build_schema()
        # HTTPS: the CA clients trust, and the certificate each handshake is offered.
        self.tls = tls
        self.authority: Authority | None = None
        self._certificates: dict[str | None, ssl.SSLContext] = {}
        self.certificate_fault: str | None = None
        self.handshakes: dict[str | None, int] = {}  # handshakes begun, by the certificate offered
        self.authorizations = 0  # requests that carried an Authorization header

    # --- lifecycle ---
    async def start(self) -> None:
        app = web.Application(middlewares=[self._count_authorizations])
        app.router.add_route("*", PATH, self._handle)
        # A client that goes away ends its handler (an event stream's listener with it) at once,
        # not at the next write.
        self._runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls_context() if self.tls else None)
        await site.start()
        self._site_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _tls_context(self) -> ssl.SSLContext:
        """The server context: each handshake gets the certificate `certificate_fault` names."""
        self.authority = new_authority("IOmeter Partner CA (simulated)", "IOmeter (simulated)")
        directory = self.authority.directory
        self._certificates[None] = self.authority.issue("127.0.0.1", dns_names=("localhost",),
                                                        ip_addresses=("127.0.0.1",), name="partner")
        self._certificates["wrong_name"] = self.authority.issue("partner.example.net", dns_names=("partner.example.net",),
                                                                name="other-host")
        impostor = new_authority("IOmeter Partner CA (simulated)", "Impostor", directory / "impostor")
        self._certificates["wrong_ca"] = impostor.issue("127.0.0.1", dns_names=("localhost",),
                                                        ip_addresses=("127.0.0.1",), name="impostor")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "partner.pem", directory / "partner.key")
        context.sni_callback = self._offer_certificate
        return context

    def _offer_certificate(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        # (called for every ClientHello, with or without a server name)
        self.handshakes[self.certificate_fault] = self.handshakes.get(self.certificate_fault, 0) + 1
        connection.context = self._certificates[self.certificate_fault]

    @property
    def ca_file(self) -> Path | None:
        """The CA (PEM) a client trusts the API's certificate with (with `tls`)."""
        return self.authority.ca_file if self.authority is not None else None

    async def set_certificate(self, fault: str | None) -> None:
        """Offer a certificate of `CERTIFICATE_FAULTS` from now on (None: the good one), and cut
        every open connection, kept-alive ones too, so that the client's next request meets it."""
        if fault is not None and fault not in CERTIFICATE_FAULTS:
            raise ValueError(f"unknown certificate fault {fault!r}")
        self.certificate_fault = fault
        await self.drop_connections()
        server = self._runner.server if self._runner is not None else None
        for handler in list(server.connections if server is not None else ()):
            if handler.transport is not None:
                handler.transport.abort()
        await asyncio.sleep(0.05)  # (a client in this process sees its connections gone)

    @web.middleware
    async def _count_authorizations(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if "Authorization" in request.headers:
            self.authorizations += 1
        return await handler(request)

    async def stop(self) -> None:
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.authority is not None:  # (its own temporary directory)
            shutil.rmtree(self.authority.directory, ignore_errors=True)

    @property
    def port(self) -> int:
        return self._site_port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._site_port}{PATH}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self._site_port}{PATH}"

    # --- commands ---
    def meter(self, key: str) -> SimMeter:
        for installation in self.installations:
            for meter in installation.meters:
                if key in (meter.id, meter.number):
                    return meter
        raise KeyError(key)

    def publish(
        self,
        meter: SimMeter | str,
        taken: float,
        values: list[tuple[str, float, str]],
        received_at: float | None = None,
    ) -> StoredReading:
        """A reading reaches the cloud: stored for queries and replays, sent to subscribers."""
        sim_meter = meter if isinstance(meter, SimMeter) else self.meter(meter)
        self._seq += 1
        reading = StoredReading(
            self._seq, sim_meter, write_datetime(taken), list(values),
            taken if received_at is None else received_at,
        )
        self.history.append(reading)
        if len(self.history) > self.max_history:  # the API keeps a day; a long demo, less
            del self.history[: len(self.history) - self.max_history]
        for queue in list(self._listeners):
            queue.put_nowait(reading)
            if self.duplicate_deliveries:
                queue.put_nowait(reading)
        return reading

    async def drop_connections(self) -> int:
        """Cut every WebSocket connection and event stream without a goodbye (a network failure)."""
        dropped = 0
        for conn in list(self._connections):
            for task in conn.tasks.values():
                task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
            dropped += 1
        self._connections.clear()
        for transport in list(self._sse_transports):
            transport.abort()
            dropped += 1
        self._sse_transports.clear()
        await asyncio.sleep(0)
        return dropped

    def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a query in-process, without a socket (the answer body the API would send)."""
        return _result_json(graphql.graphql_sync(self.schema, query, variable_values=variables))

    @property
    def active_subscriptions(self) -> int:
        return len(self._listeners)

    # --- auth ---
    def authorized(self, header: str | None) -> bool:
        if not header:
            return False
        header = header.strip()
        if header.startswith("Basic ") and "basic" in self.auth_methods:
            return basic_matches(header, self.partner_id, self.secret)
        token = read_wsse(header)
        if token is None or "wsse" not in self.auth_methods:
            return False
        if token.username != self.partner_id:
            return False
        try:
            created = read_datetime(token.created)
        except ValueError:
            return False
        if abs(self.clock() - created) > self.wsse_max_skew:
            return False
        if token.nonce in self._nonces:  # a replayed header
            return False
        if not token.signed_with(self.secret):
            return False
        self._nonces.add(token.nonce)
        return True

    # --- HTTP ---
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if request.method == "POST" and "text/event-stream" in request.headers.get("Accept", ""):
            return await self._event_stream(request)
        self.http_requests += 1
        if not self.authorized(request.headers.get("Authorization")):
            self.rejected += 1
            return _unauthorized()
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"errors": [{"message": "body is not JSON"}]}, status=400)
        elif request.method == "GET":
            body = dict(request.query)
            if "variables" in body:
                try:
                    body["variables"] = json.loads(body["variables"])
                except ValueError:
                    return web.json_response({"errors": [{"message": "variables are not JSON"}]}, status=400)
        else:
            return web.json_response({"errors": [{"message": "method not allowed"}]}, status=405)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return web.json_response({"errors": [{"message": "no query"}]}, status=400)
        result = await graphql.graphql(
            self.schema, body["query"], variable_values=body.get("variables"),
            operation_name=body.get("operationName"),
        )
        return web.json_response(_result_json(result))

    # --- Server-Sent Events (GraphQL over SSE, distinct connections mode) ---
    async def _event_stream(self, request: web.Request) -> web.StreamResponse:
        if self.sse_fault == "unauthorized" or not self.authorized(request.headers.get("Authorization")):
            self.rejected += 1
            return _unauthorized()
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"errors": [{"message": "body is not JSON"}]}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return web.json_response({"errors": [{"message": "no query"}]}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.sse_connections += 1
        if self.sse_fault == "drop":  # the peer gone in the middle of an event
            await response.write(SSE_CUT)
            request.transport.abort()
            return response
        self._sse_transports.add(request.transport)
        try:
            async for result in self._results(body):
                event = _sse_next(result, self.sse_fault)
                if self.sse_fault == "drip":
                    for at in range(len(event)):
                        await response.write(event[at:at + 1])
                        await asyncio.sleep(SSE_DRIP_SECONDS)
                else:
                    await response.write(event)
            await response.write(b"event: complete\ndata:\n\n")
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._sse_transports.discard(request.transport)
        return response

    async def _results(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The execution results of one operation: one for a query, a stream for a subscription;
        parse and validation errors as one result with `errors`."""
        try:
            document = graphql.parse(payload.get("query") or "")
        except graphql.GraphQLError as exc:
            yield {"errors": [exc.formatted]}
            return
        errors = graphql.validate(self.schema, document)
        if errors:
            yield {"errors": [e.formatted for e in errors]}
            return
        variables = payload.get("variables")
        operation = graphql.get_operation_ast(document, payload.get("operationName"))
        if operation is None or operation.operation != graphql.OperationType.SUBSCRIPTION:
            result = graphql.execute(self.schema, document, variable_values=variables,
                                     operation_name=payload.get("operationName"))
            if inspect.isawaitable(result):
                result = await result
            yield _result_json(result)  # type: ignore[arg-type]
            return
        self.subscriptions_started.append(dict(variables or {}))
        stream = graphql.subscribe(self.schema, document, variable_values=variables,
                                   operation_name=payload.get("operationName"))
        if inspect.isawaitable(stream):
            stream = await stream
        if isinstance(stream, graphql.ExecutionResult):
            yield _result_json(stream)
            return
        async with contextlib.aclosing(stream) as items:  # type: ignore[type-var]
            async for item in items:
                yield _result_json(item)

    # --- WebSocket ---
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if header is not None and not self.authorized(header):
            self.rejected += 1
            return _unauthorized()
        ws = web.WebSocketResponse(protocols=self.protocols, autoping=True)
        await ws.prepare(request)
        self.ws_connections += 1
        # gql treats a missing subprotocol as the legacy one; so do we.
        conn = _Connection(ws, request.transport, ws.ws_protocol or LEGACY_WS)
        self._connections.add(conn)
        authorized = header is not None
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    await ws.close(code=4400, message=b"invalid message")
                    break
                kind = frame.get("type") if isinstance(frame, dict) else None
                if kind == "connection_init":
                    payload = frame.get("payload") or {}
                    if not authorized:
                        token = payload.get("Authorization") or payload.get("authorization")
                        headers = payload.get("headers")
                        if token is None and isinstance(headers, dict):
                            token = headers.get("Authorization")
                        authorized = self.authorized(token if isinstance(token, str) else None)
                    if not authorized:
                        self.rejected += 1
                        if conn.protocol == LEGACY_WS:
                            await ws.send_json({"type": "connection_error", "payload": {"message": "unauthorized"}})
                            await ws.close()
                        else:
                            await ws.close(code=4403, message=b"Forbidden")
                        break
                    await ws.send_json({"type": "connection_ack"})
                elif kind in ("subscribe", "start"):
                    if not authorized:
                        await ws.close(code=4401, message=b"Unauthorized")
                        break
                    op_id = str(frame.get("id"))
                    conn.tasks[op_id] = asyncio.create_task(self._operation(conn, op_id, frame.get("payload") or {}))
                elif kind in ("complete", "stop"):
                    task = conn.tasks.pop(str(frame.get("id")), None)
                    if task is not None:
                        task.cancel()
                elif kind == "ping":
                    await ws.send_json({"type": "pong"})
                elif kind == "connection_terminate":
                    await ws.close()
                    break
        finally:
            for task in conn.tasks.values():
                task.cancel()
            self._connections.discard(conn)
        return ws

    async def _operation(self, conn: _Connection, op_id: str, payload: dict[str, Any]) -> None:
        data_type = "data" if conn.protocol == LEGACY_WS else "next"
        try:
            try:
                document = graphql.parse(payload.get("query") or "")
            except graphql.GraphQLError as exc:
                await self._send_error(conn, op_id, [exc.formatted])
                return
            errors = graphql.validate(self.schema, document)
            if errors:
                await self._send_error(conn, op_id, [e.formatted for e in errors])
                return
            variables = payload.get("variables")
            operation = graphql.get_operation_ast(document, payload.get("operationName"))
            if operation is not None and operation.operation == graphql.OperationType.SUBSCRIPTION:
                self.subscriptions_started.append(dict(variables or {}))
                result = graphql.subscribe(
                    self.schema, document, variable_values=variables,
                    operation_name=payload.get("operationName"),
                )
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, graphql.ExecutionResult):
                    await self._send_error(conn, op_id, [e.formatted for e in result.errors or []])
                    return
                async with contextlib.aclosing(result) as stream:  # type: ignore[type-var]
                    async for item in stream:
                        await conn.ws.send_json({"id": op_id, "type": data_type, "payload": _result_json(item)})
            else:
                result = graphql.execute(
                    self.schema, document, variable_values=variables,
                    operation_name=payload.get("operationName"),
                )
                if inspect.isawaitable(result):
                    result = await result
                await conn.ws.send_json({"id": op_id, "type": data_type, "payload": _result_json(result)})
            await conn.ws.send_json({"id": op_id, "type": "complete"})
        except (ConnectionError, RuntimeError):
            pass  # the connection went away under us

    async def _send_error(self, conn: _Connection, op_id: str, errors: list[Any]) -> None:
        payload: Any = errors if conn.protocol == TRANSPORT_WS else errors[0]
        await conn.ws.send_json({"id": op_id, "type": "error", "payload": payload})

    # --- schema ---
    def _build_schema(self) -> graphql.GraphQLSchema:
        schema = graphql.build_schema(SCHEMA_SDL)

        def bind(type_name: str, field_name: str, fn: Callable[..., Any]) -> None:
            gql_type = schema.get_type(type_name)
            gql_type.fields[field_name].resolve = fn  # type: ignore[union-attr]

        partner = {"id": self.partner_id, "name": "Simulated Partner"}
        bind("Query", "partner", lambda *_: partner)
        for type_name in ("Query", "Partner"):
            bind(type_name, "connectUrl", self._connect_url)
            bind(type_name, "installation", lambda _s, _i, id: self._installation(id))
            bind(type_name, "installations", self._installations_page)
            bind(type_name, "readings", self._readings_all)
        bind("Partner", "meters", lambda _s, _i, pagination=None: self._page(
            [m for inst in self.installations for m in inst.meters], pagination))
        bind("Partner", "meter", lambda _s, _i, id=None, number=None: self._find_meter(
            [m for inst in self.installations for m in inst.meters], id, number))
        bind("Mutation", "disableInstallation", self._disable)
        bind("Installation", "externalId", lambda inst, _i: inst.external_id)
        bind("Installation", "meter", lambda inst, _i, id=None, number=None: self._find_meter(inst.meters, id, number))
        bind("Installation", "meters", lambda inst, _i: inst.meters)
        bind("Installation", "currentMeter", lambda inst, _i: self._current_meter(inst))
        bind("Installation", "device", lambda inst, _i, id: next((d for d in inst.devices if d.id == id), None))
        bind("Installation", "devices", lambda inst, _i: inst.devices)
        bind("Installation", "currentDevice", lambda inst, _i: inst.devices[-1] if inst.devices else None)
        bind("Installation", "readings", lambda inst, _i, **kw: self._readings(
            lambda r: r.meter.installation_id == inst.id, **kw))
        bind("Meter", "installation", lambda meter, _i: self._installation(meter.installation_id))
        bind("Meter", "readings", lambda meter, _i, **kw: self._readings(lambda r: r.meter.id == meter.id, **kw))
        bind("Device", "bridge", lambda device, _i: {"connectionStatus": device.bridge_status})
        bind("Device", "core", lambda device, _i: device.core)
        bind("MeterReading", "meter", lambda r, _i: r.meter)
        bind("MeterReading", "time", lambda r, _i: r.time)
        bind("MeterReading", "values", lambda r, _i: [
            {"code": code, "value": value, "unit": unit} for code, value, unit in r.values
            if getattr(r, "codes", None) is None or read_obis(code) in r.codes])
        bind("MeterReadingValue", "obisCode", lambda v, _i, format=None: format_obis(v["code"], format or self.obis_format))

        subscription = schema.subscription_type
        assert subscription is not None
        subscription.fields["meterReadings"].subscribe = self._meter_readings_source
        subscription.fields["meterReadings"].resolve = lambda payload, _i, **_: payload
        subscription.fields["liveReadings"].subscribe = self._live_readings_source
        subscription.fields["liveReadings"].resolve = lambda payload, _i, **_: payload
        return schema

    def _connect_url(self, _s: Any, _i: Any, redirectUrl: str, state: str | None = None) -> str:
        token = base64.urlsafe_b64encode(json.dumps([redirectUrl, state]).encode()).decode()
        return f"https://app.iometer.de/partner/connect?token={token}"

    def _installation(self, installation_id: Any) -> SimInstallation | None:
        return next((i for i in self.installations if i.id == str(installation_id)), None)

    def _installations_page(self, _s: Any, _i: Any, pagination: dict[str, Any] | None = None) -> list[SimInstallation]:
        return self._page(self.installations, pagination)

    def _page(self, items: list[Any], pagination: dict[str, Any] | None) -> list[Any]:
        pagination = pagination or {}
        offset = max(int(pagination.get("offset") or 0), 0)
        limit = pagination.get("limit")
        limit = self.max_page if limit is None else max(min(int(limit), self.max_page), 0)
        return items[offset: offset + limit]

    @staticmethod
    def _find_meter(meters: list[SimMeter], id: Any = None, number: Any = None) -> SimMeter | None:
        if id is None and number is None:
            raise graphql.GraphQLError("either id or number is required")
        return next((m for m in meters if (id is not None and m.id == str(id)) or
                     (number is not None and m.number == str(number))), None)

    def _current_meter(self, inst: SimInstallation) -> SimMeter | None:
        for reading in reversed(self.history):
            if reading.meter.installation_id == inst.id:
                return reading.meter
        return inst.meters[0] if inst.meters else None

    def _disable(self, _s: Any, _i: Any, id: Any) -> bool:
        before = len(self.installations)
        self.installations = [i for i in self.installations if i.id != str(id)]
        return len(self.installations) < before

    def _readings_all(self, _s: Any, _i: Any, **kw: Any) -> dict[str, Any]:
        return self._readings(lambda r: True, **kw)

    def _readings(
        self, keep: Callable[[StoredReading], bool], startTime: Any = None, limit: Any = None, cursor: Any = None
    ) -> dict[str, Any]:
        start = _start(startTime)
        first_seq = 0
        if cursor:  # opaque to clients: the sequence number of the next reading
            try:
                first_seq = int(base64.urlsafe_b64decode(str(cursor).encode()).decode())
            except ValueError:
                raise graphql.GraphQLError("invalid cursor") from None
        matching = [
            r for r in self.history
            if r.seq >= first_seq and keep(r) and (start is None or r.received_at >= start)
        ]
        size = self.max_page if limit is None else max(min(int(limit), self.max_page), 1)
        page, rest = matching[:size], matching[size:]
        next_cursor = base64.urlsafe_b64encode(str(rest[0].seq).encode()).decode() if rest else None
        return {"readings": page, "cursor": next_cursor}

    async def _meter_readings_source(self, _root: Any, _info: Any, startTime: Any = None) -> AsyncIterator[StoredReading]:
        start = _start(startTime)
        queue: asyncio.Queue[StoredReading] = asyncio.Queue()
        self._listeners.add(queue)  # before the replay, so nothing falls between the two
        try:
            if start is not None:
                for reading in [r for r in self.history if r.received_at >= start]:
                    yield reading
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    async def _live_readings_source(
        self, _root: Any, _info: Any, installationId: Any, obisCodes: list[Any] | None = None
    ) -> AsyncIterator[Any]:
        codes = {read_obis(c) for c in obisCodes} if obisCodes else None
        queue: asyncio.Queue[StoredReading] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            while True:
                reading = await queue.get()
                if reading.meter.installation_id != str(installationId):
                    continue
                if codes is None:
                    yield reading
                else:
                    yield _Filtered(reading, codes)
        finally:
            self._listeners.discard(queue)


@dataclass
class _Filtered:
    """A reading restricted to some OBIS codes (liveReadings' obisCodes argument)."""

    reading: StoredReading
    codes: set[ObisCode]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reading, name)


def _start(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return read_datetime(value)
    except ValueError:
        raise graphql.GraphQLError(f"invalid DateTime {str(value)[:40]!r}") from None


def _result_json(result: graphql.ExecutionResult) -> dict[str, Any]:
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [e.formatted for e in result.errors]
    return body


OVERSIZED_EVENT = 2 * 1024 * 1024
SSE_CUT = b'event: next\ndata: {"data":{"meterReadings":{"meter":'  # where a dropped stream ends
SSE_DRIP_SECONDS = 0.05


def _sse_next(result: dict[str, Any], fault: str | None) -> bytes:
    """One `next` event: the result as JSON on one data line (or the stream's fault)."""
    if fault == "garbage":
        return b"event: next\ndata: <html><body><h1>502 Bad Gateway</h1></body></html>\n\n"
    if fault == "oversized":
        return b"event: next\ndata: {\"data\": \"" + b"x" * OVERSIZED_EVENT + b"\"}\n\n"
    return b"event: next\ndata: " + json.dumps(result, separators=(",", ":")).encode() + b"\n\n"


def _unauthorized() -> web.Response:
    return web.json_response(
        {"errors": [{"message": "unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}]},
        status=401,
    )
