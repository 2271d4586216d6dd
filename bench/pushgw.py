"""A real Prometheus Pushgateway (Debian's `prometheus-pushgateway`, client_golang) on a free
loopback port, loaded with the same series as the exporter: one group per target
(`job="energy_meter",instance="<target>"`), pushed with its HTTP API."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import free_port

BINARY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


class Pushgateway:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [BINARY, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file=",
             "--web.enable-admin-api",
             # Pushes are checked against everything held (each push would gather it all);
             # loading 10,000 groups with the check on takes longer than the benchmark.
             "--push.disable-consistency-check"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pushgateway did not start (log {log})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wipe(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1/admin/wipe", method="PUT")
        with urllib.request.urlopen(request, timeout=60):
            pass

    def load(self, bodies_file: Path, workers: int = 8) -> float:
        """PUT every target's group; returns the seconds it took."""
        groups = [json.loads(line) for line in bodies_file.read_text(encoding="utf-8").splitlines()]
        chunks = [groups[i::workers] for i in range(workers)]

        def push(chunk: list[dict]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            for group in chunk:
                conn.request("PUT", f"/metrics/job/energy_meter/instance/{group['name']}",
                             body=group["body"].encode(), headers={"Content-Type": "text/plain; version=0.0.4"})
                resp = conn.getresponse()
                resp.read()
                if resp.status not in (200, 202):
                    raise RuntimeError(f"pushgateway refused {group['name']}: HTTP {resp.status}")
            conn.close()

        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(push, chunks))
        return time.monotonic() - started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def temp_file(prefix: str) -> Path:
    handle = tempfile.NamedTemporaryFile(prefix=prefix, delete=False)
    handle.close()
    return Path(handle.name)
