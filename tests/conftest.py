"""Shared fixtures: the conformance corpus, free ports, running the real exporter process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from simulators.ports import free_port  # noqa: F401  (tests import it from here)

if TYPE_CHECKING:
    from exporter.daemon import Daemon
    from exporter.store import SnapshotStore
    from simulators.homewizard import HomeWizardSimulator

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "conformance"


def pytest_configure(config):
    # Whatever configuration a test gets the loader to accept must pass config.schema.json too.
    from exporter.config import loader

    from .schema_guard import guarded, jsonschema
    if jsonschema is not None:
        loader._load_config = guarded(loader._load_config)


@pytest.fixture
async def session():
    """An aiohttp client session, as the daemon gives its adapters."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def conformance() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance corpus not found at {CONFORMANCE} (it lives in shared/ beside the project)")
    return CONFORMANCE


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        pytest.skip(f"{name} is not installed (make test installs it with apt-get when run as root)")
    return path


def http_get(url: str, headers: dict | None = None, timeout: float = 5, context=None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except AssertionError:
            raise
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def async_wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    import asyncio

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class ExporterProcess:
    """The real exporter, started as a user would start it (console script, flags)."""

    def __init__(self, config: Path, port: int, extra: list[str] | None = None, scheme: str = "http",
                 ca_file: str | None = None, client_cert: tuple[str, str] | None = None) -> None:
        import ssl

        self.config = config
        self.port = port
        self.scheme = scheme
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        if client_cert and self.context:
            self.context.load_cert_chain(*client_cert)
        self.log = config.parent / f"exporter-{port}.log"
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{port}", *(extra or [])],
            stdout=self._log_file, stderr=subprocess.STDOUT, cwd=config.parent,
        )
        wait_until(self._healthy, what=f"exporter on port {port} (log {self.log})")
        # It runs, so it took the file: the schema must take it too.
        from .schema_guard import check_accepted

        check_accepted(config)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited with {self.proc.returncode}: {self.log.read_text()}")
        # 401: alive, behind basic auth
        return http_get(self.url("/-/healthy"), timeout=1, context=self.context)[0] in (200, 401)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def metrics(self) -> str:
        return http_get(self.url("/metrics"))[2].decode()

    def logs(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def exposition_text(store: "SnapshotStore", openmetrics: bool = False) -> str:
    """The store's whole exposition, as /metrics serves it uncompressed."""
    return b"".join(store.cache.chunks(openmetrics)).decode()


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in an exposition body, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


class LoopThread:
    """An asyncio loop in a background thread, for simulators that must keep answering while a
    synchronous test waits on a real exporter process."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        """Run a plain function on the loop's thread (to flip simulator switches safely)."""
        async def wrapper():
            return fn(*args)
        return self.run(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def loop_thread():
    thread = LoopThread()
    yield thread
    thread.close()


def daemon_beside_control(tmp_path: Path, targets: str, control: "HomeWizardSimulator", interval: float,
                          defaults: str = "", head: str = "") -> "Daemon":
    """A daemon (not started) polling `targets` (YAML lines, indented under `targets:`) and a healthy
    HomeWizard `control` target, every `interval` seconds with a short timeout and no jitter;
    `defaults` adds lines to the defaults, `head` top-level sections."""
    from .configs import load_config
    from exporter.daemon import Daemon

    path = tmp_path / "c.yaml"
    path.write_text(f"state_directory: {tmp_path / 'state'}\n"
                    f"defaults:\n  interval: {interval}s\n  timeout: 0.4s\n  jitter: 0\n"
                    + textwrap.indent(defaults, "  ") + head + "targets:\n" + targets
                    + f"  - name: control\n    vendor: homewizard\n    host: {control.v1_host}\n")
    return Daemon(load_config(path))


# --- the HTTP push listener ---------------------------------------------------------------------


def push_listener_config(port: int, sn: str, settings: str = "") -> str:
    """Config sections for the HTTP push listener on 127.0.0.1:`port`, without a rate limit, and
    one IAMMETER push target `pushed` for serial `sn`; `settings` adds `http_push` keys (one a
    line, unindented). More targets may follow, indented as list items."""
    return (f"http_push:\n  listen: 127.0.0.1:{port}\n  max_requests_per_minute: 0\n"
            + textwrap.indent(textwrap.dedent(settings), "  ")
            + f"targets:\n  - name: pushed\n    vendor: iammeter\n    transport: push\n    sn: {sn}\n"
            "    interval: 2s\n")


async def wait_listening(port: int) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port` (the push listener opens
    once the first push target starts)."""
    import asyncio

    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


async def start_push_daemon(tmp_path: Path, sn: str, settings: str = "") -> tuple["Daemon", int]:
    """A running daemon with the push listener of `push_listener_config` on a free port, once
    that listens; the daemon and the listener's port."""
    from .configs import load_config
    from exporter.daemon import Daemon

    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(f"state_directory: {tmp_path / 'state'}\n" + push_listener_config(port, sn, settings))
    daemon = Daemon(load_config(path))
    await daemon.start("127.0.0.1", 0)
    await wait_listening(port)
    return daemon, port


@pytest.fixture
async def broker(tmp_path):
    """A real Mosquitto broker on a free loopback port, without authentication."""
    from simulators.iammeter_push import MosquittoBroker

    require_binary("mosquitto")
    b = await MosquittoBroker(directory=tmp_path / "broker").start()
    yield b
    await b.close()
