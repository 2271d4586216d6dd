"""A load source for the push benchmark: the IOmeter Partner API simulator
(`simulators.iometer_partner`) answering discovery as it always does, with its
`meterReadings` subscription replaced by a loop that sends readings as fast as the WebSocket
takes them.

Each message is the one the simulator sends for a reading (rendered by its GraphQL schema once
per meter), in the protocol the client chose (`next` / `data` frames), with the time and two
values moved on: the energy grows, the power moves, the other registers stay. The frame of each
meter is serialized once and only those three fields are written into it per message, so the
feed spends little CPU per message (under 10 us: it keeps up with 28,000 messages a second to a
client that only decodes them) and does not limit the rate it measures. The exporter asks for no per-message
compression; a client that does makes the feed deflate every frame, several times that cost.
Every meter's readings are one second apart (the API's resolution), so none is a duplicate
however fast they go.

Prints `READY <port> <partner id> <secret>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import signal
import sys
import time
from typing import Any

import graphql
from simulators.iometer_partner import (
    LEGACY_WS,
    PartnerApiSimulator,
    _Connection,
    demo_installations,
    demo_values,
)
from exporter.vendors.iometer.parse import format_time
from exporter.vendors.iometer.partner import _TEXTS, READINGS

class FeedSimulator(PartnerApiSimulator):
    def __init__(self, meters: int) -> None:
        super().__init__(installations=demo_installations(meters))
        self.sent = 0
        self.start_time = time.time() - 3600
        for installation in self.installations:
            for meter in installation.meters:
                self.publish(meter, self.start_time, demo_values(1_000_000.0, 500.0))
        self.templates = self._render_templates()

    def _render_templates(self) -> list[dict[str, Any]]:
        """Each meter's reading as the schema renders it for the client's own fragment."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            result = self.execute(_TEXTS[READINGS], {"startTime": None, "limit": 100, "cursor": cursor})
            page = result["data"]["readings"]
            out.extend(page["readings"])
            cursor = page["cursor"]
            if not cursor:
                return out

    async def _operation(self, conn: _Connection, op_id: str, payload: dict[str, Any]) -> None:
        try:
            document = graphql.parse(payload.get("query") or "")
            operation = graphql.get_operation_ast(document, payload.get("operationName"))
        except graphql.GraphQLError:
            operation = None
        fields = [s.name.value for s in operation.selection_set.selections] if operation else []  # type: ignore[attr-defined]
        if operation is None or operation.operation != graphql.OperationType.SUBSCRIPTION or fields != ["meterReadings"]:
            await super()._operation(conn, op_id, payload)
            return
        self.subscriptions_started.append(dict(payload.get("variables") or {}))
        await self._flood(conn, op_id)

    async def _flood(self, conn: _Connection, op_id: str) -> None:
        kind = "data" if conn.protocol == LEGACY_WS else "next"
        frames = [self._frame_parts(op_id, kind, reading) for reading in self.templates]
        energies = [float(reading["values"][0]["value"]) for reading in self.templates]
        send = conn.ws.send_str
        step = 0
        try:
            while True:
                step += 1
                moment = format_time(self.start_time + step)
                for index, (head, middle, tail, rest) in enumerate(frames):
                    energies[index] += 0.5 + index % 3  # energy grows
                    power = 400.0 + (step * 37 + index) % 900  # power moves
                    await send(f"{head}{moment}{middle}{energies[index]!r}{tail}{power!r}{rest}")
                    self.sent += 1
        except (ConnectionError, RuntimeError):
            pass

    @staticmethod
    def _frame_parts(op_id: str, kind: str, template: dict[str, Any]) -> tuple[str, str, str, str]:
        """The frame of one meter cut around its time, energy (values[0]) and power (values[6])."""
        reading = copy.deepcopy(template)
        marks = ("@TIME@", "@ENERGY@", "@POWER@")
        reading["time"] = marks[0]
        reading["values"][0]["value"] = marks[1]
        reading["values"][6]["value"] = marks[2]
        text = json.dumps({"id": op_id, "type": kind, "payload": {"data": {"meterReadings": reading}}})
        head, rest = text.split(f'"{marks[0]}"')
        middle, rest = rest.split(f'"{marks[1]}"')
        tail, rest = rest.split(f'"{marks[2]}"')
        return head + '"', '"' + middle, tail, rest


async def run(meters: int) -> None:
    feed = FeedSimulator(meters)
    await feed.start()
    print(f"READY {feed.port} {feed.partner_id} {feed.secret}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await feed.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--cpu", type=int)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(run(args.meters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
