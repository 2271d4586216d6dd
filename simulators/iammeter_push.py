"""IAMMETER meters in upload mode, and a Mosquitto broker for them to publish to.

`MosquittoBroker` runs the real Mosquitto (Debian's `mosquitto`) on 127.0.0.1 with a generated
configuration: an ephemeral port, optionally a password file (made with `mosquitto_passwd`) and
a TLS listener with a certificate from `tls.py`. `stop()` (a clean shutdown), `kill()` (SIGKILL,
as a crash or the OOM killer ends it), `pause()`/`resume()` (SIGSTOP/SIGCONT: a frozen broker
whose connections stay open) and `restart()` (same ports, a fresh broker that knows no
subscription) let a test take the broker away under a running exporter.

`MqttMeter` publishes the meter's document to `device/<SN>/realtime` every interval, the way
the firmware's MQTT mode does (reconnecting when the broker goes away); `HttpPushMeter` POSTs it
as text/plain to a URL, the way the HTTP upload mode does. Both render the same document as the
local API (`simulators/iammeter.py`): the captured body of `conformance/iammeter/` byte for byte
while the measurement is untouched, the firmware's format otherwise. `fault` injects what a
broken meter or a bad network sends: "garbage", "short_row", "nulls", "string_value",
"wrong_sn", "huge", the poisons of `hostile.BODY_POISONS` (invalid UTF-8, a lone surrogate,
absurd counters...), and for HTTP uploads broken framing: "chunk:-6" (a chunked upload with a
negative chunk size), "endless:chunked" (a chunked upload that never ends, as fast as the
receiver reads). Over HTTPS (an `https://` URL, with `ca_file` to check the receiver and
`client_cert` to present), "no_tls" posts plain HTTP to the HTTPS port, and "tls_stall" begins a
handshake and never finishes it (it waits until the receiver closes the connection, at most
`STALL_CAP` seconds); `client_cert` may be swapped for one of another CA.

Demo: `python -m simulators.iammeter_push mqtt --broker` starts a broker and a meter
publishing to it; `python -m simulators.iammeter_push http --url http://127.0.0.1:8088/`
posts to a push listener.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import getpass
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt

from . import hostile
from .iammeter import DEFAULT_CONFORMANCE, IammeterHttpSimulator, MeterState, meter_state, poison_spots
from .ports import free_port
from .tls import Authority, client_context, new_authority

PUSH_FAULTS = ("garbage", "short_row", "nulls", "string_value", "wrong_sn", "huge", *hostile.BODY_POISONS)
RAW_UPLOAD_FAULTS = ("chunk:-6", "endless:chunked")
TLS_UPLOAD_FAULTS = ("no_tls", "tls_stall")
ENDLESS_CAP = 16 * 1024 * 1024
STALL_CAP = 30.0  # seconds a stalled handshake waits for the receiver to give up on it
# The start of a TLS record holding a ClientHello that announces 512 bytes and sends 4 of them.
STALLED_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"
TOPIC = "device/{sn}/realtime"


def mosquitto_binary() -> str | None:
    """The broker's path, or None where Mosquitto is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def mosquitto_passwd_binary() -> str | None:
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None)


def _end_with_parent():
    """A pre-exec function that makes the child get SIGTERM when its parent dies (Linux
    prctl PR_SET_PDEATHSIG), so a killed test run leaves no broker behind; None elsewhere."""
    try:
        import ctypes
        import signal

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return set_death_signal


# --- The broker ---------------------------------------------------------------------------------


@dataclass
class MosquittoBroker:
    """A Mosquitto process on 127.0.0.1; `port` (plain) and, with `tls`, `tls_port`."""

    username: str | None = None
    password: str | None = None
    tls: bool = False
    directory: Path | None = None
    port: int = 0
    tls_port: int = 0
    authority: Authority | None = None
    _process: asyncio.subprocess.Process | None = None
    _own_directory: bool = False
    _log_file: Any = None

    @property
    def ca_file(self) -> Path | None:
        return self.authority.ca_file if self.authority else None

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self) -> "MosquittoBroker":
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian package `mosquitto`)")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="emx-mosquitto-"))
            self._own_directory = True
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        if self.tls:
            self.tls_port = self.tls_port or free_port()
            if self.authority is None:
                self.authority = new_authority("energy-meter-exporter test MQTT CA", "energy-meter-exporter",
                                               self.directory / "tls")
                self.authority.issue("127.0.0.1", dns_names=("localhost",), ip_addresses=("127.0.0.1",),
                                     name="mosquitto")
        config = self.directory / "mosquitto.conf"
        config.write_text(self._config())
        self._log_file = open(self.log_path, "ab")
        # A session of its own, so that Ctrl-C in a terminal reaches the demo, which stops the
        # meters first and the broker last; the broker still ends with its parent (Linux).
        self._process = await asyncio.create_subprocess_exec(
            binary, "-c", str(config), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_end_with_parent())
        await self._wait_listening()
        return self

    def _config(self) -> str:
        assert self.directory is not None
        lines = [
            "# Generated by simulators/iammeter_push.py",
            # Run as whoever started it: as root, Mosquitto would switch to its own user and
            # then fail to read the files of a private temporary directory.
            f"user {getpass.getuser()}",
            "persistence false",
            "log_dest stdout",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.tls and self.authority is not None:
            tls_dir = self.authority.directory
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.authority.ca_file}",
                      f"certfile {tls_dir / 'mosquitto.pem'}", f"keyfile {tls_dir / 'mosquitto.key'}"]
        if self.username is not None:
            password_file = self.directory / "passwords"
            if not password_file.exists():
                self._write_password_file(password_file)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n"

    def _write_password_file(self, path: Path) -> None:
        tool = mosquitto_passwd_binary()
        if tool is None:
            raise RuntimeError("mosquitto_passwd is not installed; it makes the broker's password file")
        result = subprocess.run([tool, "-c", "-b", str(path), self.username or "", self.password or ""],
                                capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd failed: {result.stderr.strip() or result.stdout.strip()}")

    async def _wait_listening(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._process is not None and self._process.returncode is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: {self.log_text()[-800:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout:g}s: "
                           f"{self.log_text()[-800:]}")

    async def stop(self) -> None:
        """Stop the broker (clients see their connection closed); ports and files stay."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGCONT)  # a paused broker would not see the SIGTERM
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def kill(self) -> None:
        """End the broker with SIGKILL: no goodbye to its clients; ports and files stay."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered or delivered."""
        if self.running:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self._process.send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()  # the same ports and the same files

    async def close(self) -> None:
        """Stop, and remove the directory this broker made."""
        await self.stop()
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# --- The uploading meter --------------------------------------------------------------------------


class PushingMeter:
    """A meter in an upload mode: renders the document it sends, with optional faults."""

    def __init__(self, model: str = "WEM3080T", *, serial: str | None = None, interval: float = 2.0,
                 nem: bool = False, reactive: bool = False, conformance: Path | None = DEFAULT_CONFORMANCE) -> None:
        state, raw = meter_state(model, nem=nem, reactive=reactive, conformance=conformance)
        if serial is not None and serial != state.serial:
            state.serial = serial
            raw = None  # the capture names another meter
        self.model = model
        self.state: MeterState = state
        self.interval = interval
        self.fault: str | None = None
        self.sent = 0  # uploads delivered (published, or answered 200)
        self._raw = raw
        self._pristine = copy.deepcopy(state)
        self._renderer = IammeterHttpSimulator(model, state=state)
        self._task: asyncio.Task | None = None

    @property
    def serial(self) -> str:
        return self.state.serial

    def body(self) -> bytes:
        """What the meter uploads now."""
        pristine = self.state == self._pristine and not self.state.nem and not self.state.reactive_enabled
        if self._raw is not None and pristine and self.fault in (None, *TLS_UPLOAD_FAULTS):  # (the body is good)
            return self._raw
        if self.fault == "garbage":
            return b'{"method":"uploadsn","SN":"' + self.serial.encode() + b'","Datas":[[220.0,9.9'
        document = self._renderer.document()
        if self.fault in hostile.BODY_POISONS:  # (a reading may be 64 KiB at most: nested less deep)
            return hostile.poisoned(document, self.fault, poison_spots(document), depth=hostile.SMALL_DEPTH)
        if self.fault == "huge":
            document["padding"] = "x" * 70_000
        elif self.fault == "wrong_sn":
            document["SN"] = "0BADC0DE"
        elif self.fault and self.fault not in TLS_UPLOAD_FAULTS:
            document = _broken(document, self.fault)
        return json.dumps(document, separators=(",", ":")).encode()

    async def start(self) -> "PushingMeter":
        self._task = asyncio.create_task(self._loop(), name=f"iammeter-upload:{self.serial}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _loop(self) -> None:  # pragma: no cover - each mode has its own
        raise NotImplementedError


def _broken(document: dict[str, Any], fault: str) -> dict[str, Any]:
    key = next((k for k in ("Datas", "Data", "data") if k in document), None)
    if key is None:
        return document
    rows = copy.deepcopy(document[key] if key == "Datas" else [document[key]])
    if fault == "short_row":
        rows[0] = rows[0][:4]
    elif fault == "nulls":
        rows = [[None] * len(r) for r in rows]
    elif fault == "string_value":
        rows[0][0] = "230,1"
    document[key] = rows if key == "Datas" else rows[0]
    return document


class MqttMeter(PushingMeter):
    """MQTT mode: publishes to `device/<SN>/realtime` every interval, reconnecting as needed."""

    def __init__(self, model: str = "WEM3080T", *, host: str = "127.0.0.1", port: int = 1883,
                 username: str | None = None, password: str | None = None, ca_file: Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.host, self.port = host, port
        self.username, self.password, self.ca_file = username, password, ca_file
        self.errors = 0  # failed connections or publishes
        self.topic_sn: str | None = None  # publish under another SN than the body's

    @property
    def topic(self) -> str:
        return TOPIC.format(sn=self.topic_sn or self.serial)

    def _client(self) -> aiomqtt.Client:
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        identifier = f"iammeter-{self.serial}-{os.getpid()}-{id(self) % 10000}"
        return aiomqtt.Client(self.host, self.port, username=self.username, password=self.password,
                              tls_context=context, identifier=identifier, timeout=5)

    async def publish_once(self, retain: bool = False) -> None:
        """One upload on a connection of its own (raises aiomqtt.MqttError if refused)."""
        async with self._client() as client:
            await client.publish(self.topic, self.body(), qos=0, retain=retain)
        self.sent += 1

    async def _loop(self) -> None:
        while True:
            try:
                async with self._client() as client:
                    while True:
                        await client.publish(self.topic, self.body(), qos=0)
                        self.sent += 1
                        await asyncio.sleep(self.interval)
            except aiomqtt.MqttError:
                self.errors += 1
                await asyncio.sleep(min(self.interval, 0.5))


class HttpPushMeter(PushingMeter):
    """HTTP upload mode: POSTs the document as text/plain to `url` every interval (HTTPS for an
    https:// URL: the receiver checked against `ca_file` if given, `client_cert` presented)."""

    def __init__(self, model: str = "WEM3080T", *, url: str = "http://127.0.0.1:8088/",
                 ca_file: Path | None = None, client_cert: tuple[Path, Path] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.url = url
        self.ca_file = ca_file
        self.client_cert = client_cert  # (certificate, key) files, PEM
        self.errors = 0
        self.endless_full = 0  # endless uploads the receiver read to the cap (it never refused)
        self.stalls_closed = 0  # stalled handshakes the receiver closed
        self.stalls_held = 0  # stalled handshakes the receiver still held at STALL_CAP
        self.last_status: int | None = None
        self.last_reply: Any = None
        self._contexts: dict[tuple, ssl.SSLContext] = {}

    def _context(self) -> ssl.SSLContext | None:
        """The meter's own TLS context for an https:// URL when it has `ca_file` or
        `client_cert` (one per certificate, so connections are reused); None: the session's."""
        if not self.url.startswith("https://") or (self.ca_file is None and self.client_cert is None):
            return None
        key = (self.ca_file, self.client_cert)
        if key not in self._contexts:
            self._contexts[key] = client_context(self.ca_file, self.client_cert)
        return self._contexts[key]

    async def post_once(self, session: aiohttp.ClientSession | None = None) -> tuple[int, Any]:
        """One upload; (HTTP status, decoded JSON reply or the text)."""
        own = session is None
        session = session or aiohttp.ClientSession()
        url, context = self.url, self._context()
        if self.fault == "no_tls" and url.startswith("https://"):  # the address without https
            url, context = "http://" + url[len("https://"):], None
        extra: dict[str, Any] = {"ssl": context} if context is not None else {}
        try:
            async with session.post(url, data=self.body(), headers={"Content-Type": "text/plain"},
                                    timeout=aiohttp.ClientTimeout(total=10), **extra) as resp:
                text = await resp.text()
                try:
                    reply: Any = json.loads(text)
                except ValueError:
                    reply = text
                self.last_status, self.last_reply = resp.status, reply
                if resp.status == 200:
                    self.sent += 1
                return resp.status, reply
        finally:
            if own:
                await session.close()

    async def post_raw(self) -> int | None:
        """One upload with broken framing (`fault` in RAW_UPLOAD_FAULTS) on a socket of its own;
        the status the receiver answered, or None if it closed without one."""
        parts = urlsplit(self.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
            body = self._renderer.document()
            data = json.dumps(body, separators=(",", ":")).encode()
            if self.fault == "chunk:-6":
                writer.write(head + b"-6\r\n" + f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n0\r\n\r\n")
                await writer.drain()
            else:
                writer.write(head + f"{len(data) // 2:x}".encode() + b"\r\n" + data[: len(data) // 2] + b"\r\n")
                piece = b"10000\r\n" + b" " * 65536 + b"\r\n"
                sent = 0
                answer = asyncio.ensure_future(reader.readline())
                while sent < ENDLESS_CAP and not answer.done():
                    writer.write(piece)
                    await writer.drain()
                    sent += len(piece)
                if sent >= ENDLESS_CAP:
                    self.endless_full += 1
                return _status_of(await asyncio.wait_for(answer, 10))
            return _status_of(await asyncio.wait_for(reader.readline(), 10))
        except (ConnectionError, OSError, asyncio.TimeoutError):
            return None
        finally:
            writer.close()

    async def stall_handshake(self) -> None:
        """Begin a TLS handshake and never finish it; wait until the receiver closes the
        connection (`stalls_closed`), or STALL_CAP (`stalls_held`)."""
        parts = urlsplit(self.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 443)
        try:
            writer.write(STALLED_HELLO)
            await writer.drain()
            try:
                async with asyncio.timeout(STALL_CAP):
                    while await reader.read(65536):
                        pass  # (an alert the receiver sends before it closes)
                self.stalls_closed += 1
            except TimeoutError:
                self.stalls_held += 1
            except (ConnectionError, OSError):
                self.stalls_closed += 1
        finally:
            writer.close()

    async def _loop(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    if self.fault == "tls_stall":
                        await self.stall_handshake()
                    elif self.fault in RAW_UPLOAD_FAULTS:
                        self.last_status = await self.post_raw()
                    else:
                        await self.post_once(session)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    self.errors += 1  # the receiver is not up yet, or gone: the meter just tries again
                await asyncio.sleep(self.interval)


def _status_of(line: bytes) -> int | None:
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


# --- Demo runner ------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> None:
    broker = None
    if args.mode == "mqtt":
        host, port = args.host, args.port
        if args.broker:
            broker = await MosquittoBroker(port=args.port if args.port != 1883 else 0).start()
            host, port = "127.0.0.1", broker.port
            print(f"Mosquitto on 127.0.0.1:{broker.port} (log {broker.log_path})")
        mqtt_meter = MqttMeter(args.model, host=host, port=port, interval=args.interval, serial=args.sn)
        print(f"{args.model} publishing to mqtt://{host}:{port} topic {mqtt_meter.topic} every {args.interval:g}s")
        meter: PushingMeter = mqtt_meter
    else:
        meter = HttpPushMeter(args.model, url=args.url, interval=args.interval, serial=args.sn)
        print(f"{args.model} (SN {meter.serial}) posting to {args.url} every {args.interval:g}s")
    await meter.start()
    try:
        while True:
            await asyncio.sleep(1)
            meter.state.advance(1)
    finally:
        await meter.stop()
        if broker is not None:
            await broker.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulate an IAMMETER meter in MQTT or HTTP upload mode.")
    parser.add_argument("mode", choices=("mqtt", "http"))
    parser.add_argument("--model", default="WEM3080T", choices=("WEM3080", "WEM3080T", "WEM3046T", "WEM2067"))
    parser.add_argument("--sn", default=None, help="serial number (default: the model's sample)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--host", default="127.0.0.1", help="MQTT broker")
    parser.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    parser.add_argument("--broker", action="store_true", help="start a Mosquitto broker on 127.0.0.1 to publish to")
    parser.add_argument("--url", default="http://127.0.0.1:8088/", help="where HTTP mode posts to")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_demo(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
