"""Real Prometheus and Alertmanager servers for end-to-end tests, a webhook receiver, and the
demo's simulated devices with the exporter daemon behind them."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from .conftest import LoopThread, free_port, http_get, wait_until


class PrometheusServer:
    """Prometheus scraping one exporter every second; optionally with rule files and an
    Alertmanager to send alerts to."""

    def __init__(self, binary: str, workdir: Path, scrape_port: int, rule_files: tuple[Path, ...] = (),
                 alertmanager_port: int | None = None) -> None:
        self.port = free_port()
        document: dict = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "energy", "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}]}],
        }
        if rule_files:
            document["rule_files"] = [str(p) for p in rule_files]
        if alertmanager_port is not None:
            document["alerting"] = {"alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]}
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=30, what="prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {open(self.log.name).read()[-2000:]}")
        return http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)[0] == 200

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; returns the parsed body whatever the status (callers check)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        status, _, body = http_get(url, timeout=10)
        data = json.loads(body)
        data["http_status"] = status
        return data

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["http_status"] == 200 and data["status"] == "success", data
        return data["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class AlertmanagerServer:
    """Alertmanager (Debian's prometheus-alertmanager) with a given configuration, clustering off."""

    def __init__(self, binary: str, workdir: Path, config: dict) -> None:
        self.port = free_port()
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(workdir / "alertmanager.log", "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.path={workdir / 'alertmanager-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=30, what="alertmanager ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"alertmanager exited: {open(self.log.name).read()[-2000:]}")
        return http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)[0] == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class WebhookReceiver:
    """Collects the notifications Alertmanager posts to its webhook."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        received = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict]:
        return [alert for payload in list(self.payloads) for alert in payload.get("alerts", [])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rules_with_short_for(source: Path, target: Path, duration: str = "1s") -> Path:
    """A copy of a rules file whose `for:` durations are all `duration`, so a test sees an alert
    fire within seconds."""
    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


class DemoStack:
    """The simulated devices of every vendor (`demo.PARTICIPANTS`, what `make demo`
    runs) and the exporter daemon polling them, on a background event loop so that synchronous
    tests can drive Prometheus meanwhile."""

    def __init__(self, loop_thread: LoopThread, workdir: Path, extra_targets: tuple[dict, ...] = ()) -> None:
        self.loop_thread = loop_thread
        self.workdir = workdir
        self.extra_targets = list(extra_targets)
        self.participants: list = []
        self.daemon = None
        self.port: int | None = None
        self.config = None

    def start(self) -> "DemoStack":
        from demo import PARTICIPANTS, config_document
        from exporter.daemon import Daemon
        from exporter.runtime.state import write_private_file

        from .configs import load_config

        async def up() -> None:
            for start in PARTICIPANTS:
                self.participants.append(await start(self.workdir))
            path = self.workdir / "demo.yaml"
            document = config_document(self.participants, self.workdir, self.extra_targets)
            write_private_file(path, yaml.safe_dump(document, sort_keys=False))
            self.config = load_config(path)
            self.daemon = Daemon(self.config)
            self.port = await self.daemon.start("127.0.0.1", 0)

        self.loop_thread.run(up(), timeout=90)
        return self

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.config.targets] if self.config else []

    def stop_participant(self, participant) -> None:
        async def down() -> None:
            for stop in participant.stop:
                await stop()
            participant.stop = []

        self.loop_thread.run(down())

    def stop(self) -> None:
        async def down() -> None:
            if self.daemon is not None:
                await self.daemon.stop()
            for participant in self.participants:
                for stop in participant.stop:
                    await stop()

        self.loop_thread.run(down(), timeout=60)

