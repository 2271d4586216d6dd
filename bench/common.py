"""What the benchmark parts share: child processes, CPU pinning, memory, timings, the machine."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from simulators.ports import free_port  # noqa: F401  (the bench's modules import it from here)

ROOT = Path(__file__).resolve().parents[1]


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin(pid: int, cpu_set: set[int]) -> None:
    """Pin a process and all its threads (Go and thread pools start several)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpu_set)
        except OSError:
            pass  # a thread that just ended
    os.sched_setaffinity(pid, cpu_set)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB (10^6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A helper process that prints `READY <port> <extra>` once it serves."""

    argv: list[str]
    name: str
    log: Path
    env: dict | None = None
    proc: subprocess.Popen | None = None
    port: int = 0
    extra: str = ""

    def start(self, timeout: float = 600.0) -> "Child":
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                 **(self.env or {})},
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                parts = line.split(maxsplit=2)
                self.port = int(parts[1])
                self.extra = parts[2].strip() if len(parts) > 2 else ""
                return self
        self.stop()
        raise RuntimeError(f"{self.name} did not start; see {self.log}: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


def python_child(module: str, *args: str, name: str, log: Path, env: dict | None = None) -> Child:
    return Child([sys.executable, "-m", module, *args], name=name, log=log, env=env)


# --- timings -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the largest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), -(-q * len(ordered) // 100)))
    return ordered[int(rank) - 1]


@dataclass
class Timings:
    values: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.values, 99)

    @property
    def size(self) -> int:
        return int(statistics.median(self.sizes)) if self.sizes else 0


CURL = shutil.which("curl")


def curl_time(url: str, gzip: bool, accept: str | None = None) -> tuple[float, int, int]:
    """(seconds from connect to the last byte, bytes received, HTTP status), measured by curl:
    the same C client for every contender. With gzip, the compressed bytes are received as
    they are (what the server did and sent, not the client's decompression)."""
    if CURL is None:
        return _python_time(url, gzip, accept)
    argv = [CURL, "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}"]
    if gzip:
        argv += ["-H", "Accept-Encoding: gzip"]
    if accept:
        argv += ["-H", f"Accept: {accept}"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=300).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def _python_time(url: str, gzip: bool, accept: str | None) -> tuple[float, int, int]:
    """curl's figures with http.client, where curl is not installed."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    headers = {"Accept-Encoding": "gzip" if gzip else "identity", "Accept": accept or "*/*"}
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    conn.request("GET", parts.path or "/", headers=headers)
    resp = conn.getresponse()
    size = len(resp.read())
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, size, resp.status


# --- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import aiohttp

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }


async def serve_control(routes: list, ready: str) -> "object":
    """A small control server on an ephemeral loopback port, for the parent process to query;
    prints `READY <ready with {port}>` and waits for SIGTERM. Returns the runner to clean up."""
    import asyncio

    from aiohttp import web

    app = web.Application()
    app.router.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print("READY " + ready.format(port=port), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    return runner
