"""A simulator of the IOmeter bridge's local API, on a real socket.

`GET /v1/reading` and `GET /v1/status` answer with the conformance bodies byte for byte (falling
back to copies embedded here when the corpus is absent). With `Accept: text/event-stream` the
same paths stream Server-Sent Events, as the bridge does: `event: readingEvent` /
`event: statusEvent`, `data:` the JSON body on one line, the current state first, then every
change. Tests change the state with `set_reading` / `set_status` and cut streams with
`drop_streams`, and make `/v1/status` answer 404 with `status_missing`. `stream_fault` makes
the reading stream hostile: "endless_line" (an event whose data line never ends, sent as fast
as the client reads), or a poison of `hostile.BODY_POISONS` in the reading event (see `POISON_SPOTS`); `poisoned_reading(poison)` is the same body for
`set_reading` in poll mode.

Run `python -m simulators.iometer` for a demo: a bridge whose meter counts up, and a
Partner API simulator with a few installations receiving readings.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from . import hostile, paths

CONFORMANCE = paths.CONFORMANCE / "iometer-local"

# Copies of the conformance bodies (home-assistant/core tests, Apache-2.0), for when the corpus
# folder is not there.
EMBEDDED_READING: dict[str, Any] = {
    "__typename": "iometer.reading.v1",
    "meter": {
        "number": "1ISK0000000000",
        "reading": {
            "time": "2024-11-11T11:11:11Z",
            "registers": [
                {"obis": "01-00:01.08.00*ff", "value": 1234.5, "unit": "Wh"},
                {"obis": "01-00:02.08.00*ff", "value": 5432.1, "unit": "Wh"},
                {"obis": "01-00:10.07.00*ff", "value": 100, "unit": "W"},
            ],
        },
    },
}
EMBEDDED_STATUS: dict[str, Any] = {
    "__typename": "iometer.status.v1",
    "installationId": "658c2b34-2017-45f2-a12b-731235f8bb97",
    "meter": {"number": "1ISK0000000000"},
    "device": {
        "bridge": {"rssi": -30, "version": "build-65"},
        "id": "658c2b34-2017-45f2-a12b-731235f8bb97",
        "core": {
            "connectionStatus": "connected",
            "rssi": -30,
            "version": "build-58",
            "powerStatus": "battery",
            "batteryLevel": 100,
            "attachmentStatus": "attached",
            "pinStatus": "entered",
        },
    },
}

# Not a capture: a bridge on a three-phase meter with the PIN entered, sending every code with a
# standard meaning (IEC 62056-6-1, DSMR 5.0.2; hex notation, as the bridge writes it) plus one
# without (15.7.0, the absolute power, in kW). Used by the demo, the tests and the catalogue check
# of which metrics IOmeter emits.
THREE_PHASE_READING: dict[str, Any] = {
    "__typename": "iometer.reading.v1",
    "meter": {
        "number": "1EBZ0100000001",
        "reading": {
            "time": "2025-03-01T08:00:05Z",
            "registers": [
                {"obis": "01-00:01.08.00*ff", "value": 18123456.7, "unit": "Wh"},
                {"obis": "01-00:01.08.01*ff", "value": 10123456.7, "unit": "Wh"},
                {"obis": "01-00:01.08.02*ff", "value": 8000000.0, "unit": "Wh"},
                {"obis": "01-00:02.08.00*ff", "value": 2345678.9, "unit": "Wh"},
                {"obis": "01-00:02.08.01*ff", "value": 2345678.9, "unit": "Wh"},
                {"obis": "01-00:02.08.02*ff", "value": 0, "unit": "Wh"},
                {"obis": "01-00:10.07.00*ff", "value": -1250, "unit": "W"},
                {"obis": "01-00:01.07.00*ff", "value": 0, "unit": "kW"},
                {"obis": "01-00:02.07.00*ff", "value": 1.25, "unit": "kW"},
                {"obis": "01-00:24.07.00*ff", "value": -1500, "unit": "W"},
                {"obis": "01-00:38.07.00*ff", "value": 150, "unit": "W"},
                {"obis": "01-00:4c.07.00*ff", "value": 100, "unit": "W"},
                {"obis": "01-00:20.07.00*ff", "value": 233.1, "unit": "V"},
                {"obis": "01-00:34.07.00*ff", "value": 231.9, "unit": "V"},
                {"obis": "01-00:48.07.00*ff", "value": 232.4, "unit": "V"},
                {"obis": "01-00:1f.07.00*ff", "value": 6.52, "unit": "A"},
                {"obis": "01-00:33.07.00*ff", "value": 0.71, "unit": "A"},
                {"obis": "01-00:47.07.00*ff", "value": 0.52, "unit": "A"},
                {"obis": "01-00:0e.07.00*ff", "value": 49.98, "unit": "Hz"},
                {"obis": "01-00:0d.07.00*ff", "value": 0.92, "unit": ""},
                {"obis": "01-00:21.07.00*ff", "value": 0.99, "unit": ""},
                {"obis": "01-00:35.07.00*ff", "value": 0.88, "unit": ""},
                {"obis": "01-00:49.07.00*ff", "value": 0.85, "unit": ""},
                {"obis": "01-00:15.07.00*ff", "value": 0, "unit": "W"},
                {"obis": "01-00:29.07.00*ff", "value": 150, "unit": "W"},
                {"obis": "01-00:3d.07.00*ff", "value": 100, "unit": "W"},
                {"obis": "01-00:16.07.00*ff", "value": 1500, "unit": "W"},
                {"obis": "01-00:2a.07.00*ff", "value": 0, "unit": "W"},
                {"obis": "01-00:3e.07.00*ff", "value": 0, "unit": "W"},
                {"obis": "01-00:15.08.00*ff", "value": 6041152.2, "unit": "Wh"},
                {"obis": "01-00:29.08.00*ff", "value": 6041152.2, "unit": "Wh"},
                {"obis": "01-00:3d.08.00*ff", "value": 6041152.3, "unit": "Wh"},
                {"obis": "01-00:16.08.00*ff", "value": 2345678.9, "unit": "Wh"},
                {"obis": "01-00:2a.08.00*ff", "value": 0, "unit": "Wh"},
                {"obis": "01-00:3e.08.00*ff", "value": 0, "unit": "Wh"},
                {"obis": "01-00:03.07.00*ff", "value": 0.12, "unit": "kvar"},
                {"obis": "01-00:04.07.00*ff", "value": 0, "unit": "kvar"},
                {"obis": "01-00:03.08.00*ff", "value": 1234.5, "unit": "kvarh"},
                {"obis": "01-00:04.08.00*ff", "value": 456.7, "unit": "kvarh"},
                {"obis": "01-00:01.04.00*ff", "value": 0.35, "unit": "kW"},
                {"obis": "01-00:01.06.00*ff", "value": 4.21, "unit": "kW"},
                {"obis": "00-00:60.0e.00*ff", "value": 1, "unit": ""},
                {"obis": "00-00:60.07.15*ff", "value": 4, "unit": ""},
                {"obis": "00-00:60.07.09*ff", "value": 2, "unit": ""},
                {"obis": "01-00:20.20.00*ff", "value": 3, "unit": ""},
                {"obis": "01-00:34.20.00*ff", "value": 1, "unit": ""},
                {"obis": "01-00:48.20.00*ff", "value": 0, "unit": ""},
                {"obis": "01-00:20.24.00*ff", "value": 0, "unit": ""},
                {"obis": "01-00:34.24.00*ff", "value": 0, "unit": ""},
                {"obis": "01-00:48.24.00*ff", "value": 1, "unit": ""},
                {"obis": "01-00:0f.07.00*ff", "value": 1.25, "unit": "kW"},
            ],
        },
    },
}


# Where a hostile mode poisons a reading: the meter number (a label), the import and export
# registers, the power register.
POISON_SPOTS = hostile.Spots(("meter", "number"), ("meter", "reading", "registers", 0, "value"),
                             ("meter", "reading", "registers", 1, "value"),
                             ("meter", "reading", "registers", 2, "value"))
ENDLESS_CAP = 16 * 1024 * 1024


def load_body(name: str, root: Path | None = None) -> bytes:
    """The corpus body of `reading` or `status`, byte for byte, or the embedded copy."""
    folder = CONFORMANCE if root is None else root
    try:
        return (folder / f"{name}.json").read_bytes()
    except OSError:
        embedded = EMBEDDED_READING if name == "reading" else EMBEDDED_STATUS
        return json.dumps(embedded, indent=2).encode()


def _body(value: bytes | dict[str, Any]) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


class BridgeSimulator:
    def __init__(
        self,
        reading: bytes | dict[str, Any] | None = None,
        status: bytes | dict[str, Any] | None = None,
        *,
        conformance_root: Path | None = None,
    ) -> None:
        self._bodies = {
            "reading": _body(reading) if reading is not None else load_body("reading", conformance_root),
            "status": _body(status) if status is not None else load_body("status", conformance_root),
        }
        self._streams: dict[str, set[asyncio.Queue[bytes | None]]] = {"reading": set(), "status": set()}
        self._transports: set[Any] = set()
        self.requests: dict[str, int] = {"reading": 0, "status": 0}
        self.stream_requests: dict[str, int] = {"reading": 0, "status": 0}
        self.fail_with: int | None = None  # answer every request with this status
        # /v1/status answers 404 while /v1/reading works, as some device states make the bridge
        # do (the vendor's own client has an error type for it).
        self.status_missing = False
        self.status_404s = 0  # requests answered 404 for that
        self.stream_fault: str | None = None  # see the module's docstring
        self.endless_full = 0  # endless lines the client read to the cap (it never gave up)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/reading", self._handle_reading)
        app.router.add_get("/v1/status", self._handle_status)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        await self.drop_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    def body(self, name: str) -> bytes:
        return self._bodies[name]

    def poisoned_reading(self, poison: str) -> bytes:
        """The current reading with `poison` at its spot."""
        return hostile.poisoned(json.loads(self._bodies["reading"]), poison, POISON_SPOTS)

    def set_reading(self, reading: bytes | dict[str, Any]) -> None:
        self._set("reading", _body(reading))

    def set_status(self, status: bytes | dict[str, Any]) -> None:
        self._set("status", _body(status))

    def _set(self, name: str, body: bytes) -> None:
        self._bodies[name] = body
        for queue in list(self._streams[name]):
            queue.put_nowait(body)

    async def drop_streams(self) -> None:
        """Cut every open event stream without a goodbye (Wi-Fi trouble)."""
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        for queues in self._streams.values():
            for queue in list(queues):
                queue.put_nowait(None)
        await asyncio.sleep(0)

    def end_streams(self, name: str) -> None:
        """End the open streams of `name` properly (the client sees the stream end after its
        events, and asks again)."""
        for queue in list(self._streams[name]):
            queue.put_nowait(None)

    @property
    def open_streams(self) -> int:
        return sum(len(q) for q in self._streams.values())

    async def _handle_reading(self, request: web.Request) -> web.StreamResponse:
        return await self._serve("reading", request)

    async def _handle_status(self, request: web.Request) -> web.StreamResponse:
        return await self._serve("status", request)

    async def _serve(self, name: str, request: web.Request) -> web.StreamResponse:
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="error")
        if name == "status" and self.status_missing:
            self.status_404s += 1
            return web.Response(status=404, text="404 page not found")
        if "text/event-stream" in request.headers.get("Accept", ""):
            return await self._stream(name, request)
        self.requests[name] += 1
        return web.Response(body=self._bodies[name], content_type="application/json")

    async def _stream(self, name: str, request: web.Request) -> web.StreamResponse:
        self.stream_requests[name] += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        queue.put_nowait(self._bodies[name])
        self._streams[name].add(queue)
        self._transports.add(request.transport)
        event = b"readingEvent" if name == "reading" else b"statusEvent"
        try:
            if name == "reading" and self.stream_fault is not None:
                await self._hostile_stream(response, self.stream_fault, queue)
                while await queue.get() is not None:
                    pass  # then nothing more, until the stream is dropped
                return response
            while True:
                body = await queue.get()
                if body is None:
                    break
                data = json.dumps(json.loads(body), separators=(",", ":")).encode()
                await response.write(b"event: " + event + b"\ndata: " + data + b"\n\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._streams[name].discard(queue)
            self._transports.discard(request.transport)
        return response

    async def _hostile_stream(self, response: web.StreamResponse, fault: str, queue: asyncio.Queue) -> None:
        """What a hostile bridge streams on the reading path (see `stream_fault`)."""
        head = b"event: readingEvent\ndata: "
        if fault == "endless_line":
            body = json.dumps(json.loads(self._bodies["reading"]), separators=(",", ":")).encode()
            await response.write(head + body[: len(body) // 2])
            sent = 0
            while sent < ENDLESS_CAP:
                await response.write(b"0" * 65536)
                sent += 65536
            self.endless_full += 1
            return
        while True:  # the poisoned reading, again and again, as a meter's readings come
            await response.write(head + self.poisoned_reading(fault) + b"\n\n")
            try:
                if await asyncio.wait_for(queue.get(), 0.2) is None:
                    queue.put_nowait(None)
                    return
            except asyncio.TimeoutError:
                pass


def advance(reading: dict[str, Any], seconds: float, now: float) -> dict[str, Any]:
    """The next reading of a meter that kept drawing its current power for `seconds` (demo)."""
    out = copy.deepcopy(reading)
    current = out["meter"]["reading"]
    power = next((r["value"] for r in current["registers"] if r["obis"] == "01-00:10.07.00*ff"), 0)
    for register in current["registers"]:
        if register["obis"] == "01-00:01.08.00*ff" and power > 0:
            register["value"] = round(register["value"] + power * seconds / 3600, 3)
        if register["obis"] == "01-00:02.08.00*ff" and power < 0:
            register["value"] = round(register["value"] - power * seconds / 3600, 3)
    current["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return out


@dataclass
class Demo:
    """Both simulators with moving readings, and exporter targets (YAML mappings) for them."""

    bridge: BridgeSimulator
    partner: Any  # PartnerApiSimulator
    targets: list[dict[str, Any]]
    notes: list[str]
    ticker: asyncio.Task

    async def stop(self) -> None:
        self.ticker.cancel()
        await asyncio.gather(self.ticker, return_exceptions=True)
        await self.bridge.stop()
        await self.partner.stop()


async def start_demo(tick: float = 2.0) -> Demo:
    """For `make demo`: a bridge on a three-phase meter whose counters move every `tick`
    seconds, and a partner account of three installations receiving readings as often."""
    from .iometer_partner import PartnerApiSimulator, demo_installations, demo_values

    bridge = BridgeSimulator(reading=THREE_PHASE_READING)
    partner = PartnerApiSimulator(installations=demo_installations(3, 1))
    await bridge.start()
    await partner.start()

    async def advance_all() -> None:
        reading, energy = THREE_PHASE_READING, 1000.0
        while True:
            now = time.time()
            reading = advance(reading, tick, now)
            bridge.set_reading(reading)
            energy += 0.3
            for installation in partner.installations:
                for meter in installation.meters:
                    partner.publish(meter, now, demo_values(energy, 540.0))
            await asyncio.sleep(tick)

    first = partner.installations[0].meters[0].number
    targets = [
        {"name": "iometer-bridge", "vendor": "iometer", "host": bridge.host, "interval": "5s"},
        {"name": "iometer-bridge-sse", "vendor": "iometer", "host": bridge.host, "mode": "sse",
         "interval": "5s"},
        {"name": "iometer-partner", "vendor": "iometer", "transport": "partner",
         "partner_id": partner.partner_id, "secret": partner.secret, "auth": "wsse",
         "endpoint": partner.url, "meters": [f"{first}=house"], "interval": "60s"},
        {"name": "iometer-partner-sse", "vendor": "iometer", "transport": "partner",
         "partner_id": partner.partner_id, "secret": partner.secret, "subscription_protocol": "sse",
         "endpoint": partner.url, "interval": "60s"},
    ]
    notes = [f"IOmeter bridge at {bridge.host}; IOmeter Partner API at {partner.url} (subscriptions over "
             f"WebSocket on {partner.ws_url}, over Server-Sent Events on {partner.url})"]
    return Demo(bridge, partner, targets, notes, asyncio.create_task(advance_all()))


async def _demo() -> None:  # pragma: no cover - manual use
    demo = await start_demo()
    print("\n".join(demo.notes))
    print("exporter targets:\n" + "\n".join("  " + json.dumps(t) for t in demo.targets))
    try:
        await asyncio.Event().wait()
    finally:
        await demo.stop()


if __name__ == "__main__":  # pragma: no cover
    try:
        asyncio.run(_demo())
    except KeyboardInterrupt:
        pass
