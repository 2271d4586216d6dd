"""An IAMMETER meter in TCP upload mode (run mode `tcp`, local integration guide 3.1): it connects
to `host:port`, or with TLS to `tls://host:port`, and writes the same JSON document as the MQTT and
HTTP uploads (`iammeter_push.PushingMeter`: the conformance capture byte for byte while the
measurement is untouched) every upload interval.

The guide does not say whether the firmware keeps its connection between uploads, so both are
here: `keep=True` writes the documents back to back on one connection (reconnecting when it is
lost), `keep=False` opens a connection per upload and closes it. Nothing is read back.

`fault` injects what a broken meter or a bad network does, besides `iammeter_push.PUSH_FAULTS`
("garbage" is written and the connection closed, as a meter that resets mid-upload):
"drip" (the document a few bytes at a time, seconds for one upload), "no_tls" (plain TCP
to a TLS listener: the meter's address lacks `tls://`), and `client_cert` may be swapped for one
the receiver does not trust.

Demo: `python -m simulators.iammeter_tcp --port 9100` (add `--tls --ca-file CA.pem` for TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path
from typing import Any

from .iammeter_push import PushingMeter
from .tls import client_context

TCP_FAULTS = ("drip", "no_tls")
DRIP_BYTES = 16
DRIP_EVERY = 0.1  # seconds between two pieces of a dripped document (160 bytes a second: seconds a document)


class TcpMeter(PushingMeter):
    """TCP upload mode: writes the document to `host:port` (TLS with `tls`) every interval."""

    def __init__(self, model: str = "WEM3080T", *, host: str = "127.0.0.1", port: int = 9100, tls: bool = False,
                 ca_file: Path | None = None, client_cert: tuple[Path, Path] | None = None, keep: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.host, self.port, self.tls = host, port, tls
        self.ca_file = ca_file
        self.client_cert = client_cert  # (certificate, key) files, PEM
        self.keep = keep
        self.errors = 0  # failed connections or writes
        self.connections = 0  # connections opened
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._connected_as: tuple | None = None  # the TLS settings of the open connection

    @property
    def address(self) -> str:
        """What the meter's address field holds."""
        return f"{'tls://' if self.tls else ''}{self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext | None:
        if not self.tls or self.fault == "no_tls":
            return None
        return client_context(self.ca_file, self.client_cert)

    def _tls_settings(self) -> tuple:
        return (self.tls and self.fault != "no_tls", self.client_cert, self.ca_file)

    async def _connect(self) -> None:
        context = self._context()
        self._connected_as = self._tls_settings()
        self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(
            self.host, self.port, ssl=context, server_hostname=self.host if context else None), 10)
        self.connections += 1

    async def _disconnect(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                pass

    async def send_once(self) -> None:
        """One upload: on the kept connection (opened if needed), or on a connection of its own.
        Raises OSError (or ssl.SSLError) when the receiver cannot be reached or drops it."""
        if self._writer is not None and self._connected_as != self._tls_settings():
            await self._disconnect()  # the meter's address or certificate changed: a new connection
        if self._writer is None:
            await self._connect()
        assert self._writer is not None and self._reader is not None
        body = self.body()
        try:
            if self.fault == "drip":
                for i in range(0, len(body), DRIP_BYTES):
                    if self._reader.at_eof():
                        raise ConnectionResetError("the receiver closed the connection")
                    self._writer.write(body[i:i + DRIP_BYTES])
                    await self._writer.drain()
                    await asyncio.sleep(DRIP_EVERY)
            else:
                self._writer.write(body)
                await self._writer.drain()
            if self._reader.at_eof():  # the receiver closed it (a refusal): the next upload reconnects
                raise ConnectionResetError("the receiver closed the connection")
            self.sent += 1
        except BaseException:
            await self._disconnect()
            raise
        if not self.keep or self.fault == "garbage":  # a cut-off document ends with the connection
            await self._disconnect()

    async def stop(self) -> None:
        await super().stop()
        await self._disconnect()

    async def _loop(self) -> None:
        while True:
            try:
                await self.send_once()
            except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
                self.errors += 1  # the receiver is not up yet, refused us, or is gone: try again
            await asyncio.sleep(self.interval)
            if self._reader is not None and self._reader.at_eof():
                await self._disconnect()


async def _demo(args: argparse.Namespace) -> None:
    meter = TcpMeter(args.model, host=args.host, port=args.port, tls=args.tls, interval=args.interval,
                     serial=args.sn, keep=not args.per_upload,
                     ca_file=Path(args.ca_file) if args.ca_file else None)
    print(f"{args.model} (SN {meter.serial}) uploading to {meter.address} every {args.interval:g}s")
    await meter.start()
    try:
        while True:
            await asyncio.sleep(1)
            meter.state.advance(1)
    finally:
        await meter.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulate an IAMMETER meter in TCP (or TLS) upload mode.")
    parser.add_argument("--model", default="WEM3080T", choices=("WEM3080", "WEM3080T", "WEM3046T", "WEM2067"))
    parser.add_argument("--sn", default=None, help="serial number (default: the model's sample)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--tls", action="store_true", help="upload over TLS (the address tls://host:port)")
    parser.add_argument("--ca-file", default=None, help="CA to check the receiver's certificate with")
    parser.add_argument("--per-upload", action="store_true", help="a connection per upload, closed after it")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_demo(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
