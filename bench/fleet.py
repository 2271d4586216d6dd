"""Many simulated HomeWizard P1 meters (API v1 over HTTP) in one light process.

Each meter is its own host, as in the field: an address of its own in 127.0.0.0/8 (all of it is
loopback on Linux), on one port, so the exporter's one-connection-per-host limit and its
keep-alive connections behave as they do with real meters. The answers are the v1 API's: `GET
/api` (identity), `GET /api/v1/data` (the measurement body of `bench.meters`), `404` with the
device's error body elsewhere.

Prints `READY <control port> <first address>` once every meter listens; the control port serves
`GET /stats` (requests answered, per path).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys

from aiohttp import web

from .common import serve_control
from .meters import P1Meter

BASE = ipaddress.IPv4Address("127.100.0.0")


def address(index: int) -> str:
    """The loopback address of meter `index` (x.y.z.0 and .255 avoided, for tools that mind)."""
    return str(BASE + (index // 250) * 256 + index % 250 + 1)


def hosts(first: int, count: int, port: int) -> list[str]:
    return [f"{address(i)}:{port}" for i in range(first, first + count)]


NOT_FOUND = json.dumps({"error": {"id": 404, "description": "Not found"}}).encode()


class Fleet:
    def __init__(self, first: int, count: int, port: int) -> None:
        self.port = port
        self.meters = {address(i): P1Meter(i) for i in range(first, first + count)}
        self.counts = {"/api/v1/data": 0, "/api": 0, "other": 0}
        self.servers: list[asyncio.AbstractServer] = []

    async def handle(self, request: web.BaseRequest) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        meter = self.meters.get(sockname[0]) if sockname else None
        path = request.path
        if meter is None or request.method != "GET":
            self.counts["other"] += 1
            return web.Response(status=404, body=NOT_FOUND, content_type="application/json")
        if path == "/api/v1/data":
            self.counts[path] += 1
            return web.Response(body=json.dumps(meter.step()).encode(), content_type="application/json")
        if path == "/api":
            self.counts[path] += 1
            return web.Response(body=meter.device, content_type="application/json")
        self.counts["other"] += 1
        return web.Response(status=404, body=NOT_FOUND, content_type="application/json")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = web.Server(self.handle, access_log=None)
        for host in self.meters:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.port))
            sock.listen(64)
            sock.setblocking(False)
            self.servers.append(await loop.create_server(server, sock=sock))

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.counts)


async def run(first: int, count: int, port: int) -> None:
    fleet = Fleet(first, count, port)
    await fleet.start()
    runner = await serve_control([web.get("/stats", fleet.stats)], f"{{port}} {address(first)}")
    for server in fleet.servers:
        server.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, help="pin to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(run(args.first, args.count, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
