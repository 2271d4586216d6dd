"""The long-running process: targets, their runners, the store, the web server, reloads, signals."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
from aiohttp import web

from . import logs
from .config import Config, ConfigError, TargetConfig, load_config
from .context import AdapterContext, SharedResources
from .quota import ledger_for
from .scheduler import TargetRunner
from .state import StateDirectory
from .store import SnapshotStore
from .vendors import registry
from .web import make_app
from .webconfig import WebConfig

SHUTDOWN_GRACE = 4.0  # seconds; SIGTERM must end the process within 5


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:9896`, `0.0.0.0:9896`, `[::1]:9896` -> (host, port). ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected [host]:port, e.g. :9896")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class Daemon:
    def __init__(self, config: Config, log: Any | None = None, web_config: WebConfig | None = None) -> None:
        self.config = config
        self.web_config = web_config or WebConfig()
        self.log = log or logs.get()
        self.store = SnapshotStore()
        self.runners: dict[str, TargetRunner] = {}
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.shared = SharedResources()
        self._reload_lock = asyncio.Lock()
        self.started = time.monotonic()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "0.0.0.0", port: int = 9896) -> int:
        self.session = make_session()
        ledger = ledger_for(StateDirectory(self.config.state_directory))
        ledger.listeners.append(lambda: self.store.set_quota(ledger.windows()))
        self.store.set_quota(ledger.windows())
        await self._apply(self.config)
        middlewares = [self.web_config.middleware()] if self.web_config.users else []
        self.runner = web.AppRunner(make_app(self, middlewares), access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=self.web_config.ssl_context)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        self.log.info("listening", address=f"{host}:{self.port}", targets=len(self.config.targets),
                      tls=self.web_config.ssl_context is not None, basic_auth=bool(self.web_config.users))
        return self.port

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        self.runners.clear()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    def ready(self) -> bool:
        """Ready once every target has been tried once (or after one minute, whatever happened)."""
        if time.monotonic() - self.started > 60:
            return True
        return all(r.polled_once.is_set() for r in self.runners.values())

    # --- targets ---------------------------------------------------------------------------
    def _runner_for(self, target: TargetConfig) -> TargetRunner:
        spec = registry.get(target.vendor, target.transport)
        assert spec is not None  # the config was validated against the registry
        log = self.log.bind(target=target.name, vendor=target.vendor)
        ctx = AdapterContext(session=self.session, state=StateDirectory(self.config.state_directory), log=log,
                             shared=self.shared, sections=self.config.sections, store=self.store)
        adapter = spec.create(target, ctx)
        # A transport may poll or stream depending on the target's options (`mode: sse`).
        return TargetRunner(target, adapter, self.store, log, kind=getattr(adapter, "kind", spec.kind))

    async def _apply(self, config: Config) -> None:
        """Make the running targets match `config`: unchanged targets keep running."""
        wanted = {t.name: t for t in config.targets}
        changed_sections = {k for k in set(config.sections) | set(self.config.sections)
                            if config.sections.get(k) != self.config.sections.get(k)}

        def outdated(runner: TargetRunner) -> bool:
            spec = registry.get(runner.target.vendor, runner.target.transport)
            uses = set(spec.uses_sections) if spec else set()
            return wanted.get(runner.target.name) != runner.target or bool(uses & changed_sections)

        stale = [name for name, r in self.runners.items() if outdated(r)]
        await asyncio.gather(*(self.runners.pop(name).stop() for name in stale), return_exceptions=True)
        for name in stale:
            if name not in wanted:
                self.store.remove_target(name)
        self.config = config  # new runners read the new shared sections
        for target in config.targets:
            if target.name in self.runners:
                continue
            self.store.add_target(target.name, target.vendor, target.stale_after)
            runner = self._runner_for(target)
            self.runners[target.name] = runner
            runner.start()

    async def reload(self) -> tuple[bool, str]:
        async with self._reload_lock:
            try:
                config = load_config(self.config.path)
            except ConfigError as exc:
                self.store.set_reload_result(False)
                for problem in exc.problems:
                    self.log.error("configuration reload failed; keeping the running one", problem=problem)
                return False, "Reload failed; the previous configuration keeps running:\n" + str(exc)
            await self._apply(config)
            self.store.set_reload_result(True)
            self.log.info("configuration reloaded", targets=len(config.targets))
            return True, f"Reloaded: {len(config.targets)} targets."


def make_session() -> aiohttp.ClientSession:
    # Many devices, one connection each at most: a high total limit, one per host.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=1, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"energy-meter-exporter/{_version()}"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None),
    )


def _version() -> str:
    from . import __version__

    return __version__


async def serve(config: Config, host: str, port: int, web_config: WebConfig | None = None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit status."""
    daemon = Daemon(config, web_config=web_config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(daemon.reload()))
    try:
        await daemon.start(host, port)
    except OSError as exc:
        daemon.log.error("cannot listen", address=f"{host}:{port}", error=exc.strerror or str(exc))
        await daemon.stop()
        return 1
    await stop.wait()
    daemon.log.info("shutting down")
    try:
        await asyncio.wait_for(daemon.stop(), timeout=SHUTDOWN_GRACE)
    except asyncio.TimeoutError:
        daemon.log.warning("shutdown took too long; exiting anyway")
    return 0
