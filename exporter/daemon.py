"""The long-running process: targets, their runners, the store, the web server, reloads, signals."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .config.loader import Config, ConfigError, TargetConfig, load_config
from .config.webconfig import WebConfig
from .runtime import logs
from .runtime.context import AdapterContext, SharedResources
from .runtime.gcpolicy import ManagedCollector
from .runtime.quota import QuotaLedger
from .runtime.scheduler import TargetRunner
from .runtime.shard import Shard
from .runtime.state import StateDirectory
from .store import SnapshotStore
from .vendors import registry
from .web.readout import status, target_body
from .web.server import make_app
from .web.serving import ConnectionGuard, GuardedSite, Limits, runner_options, warn_if_over_file_limit
from .web.view import WebView

SHUTDOWN_GRACE = 4.0  # seconds; SIGTERM must end the process within 5


class Daemon:
    def __init__(self, config: Config, log: Any | None = None, web_config: WebConfig | None = None,
                 shard: Shard | None = None) -> None:
        self.config = config
        self.shard = shard or Shard()
        self.web_config = web_config or WebConfig()
        self.log = log or logs.get()
        self.store = SnapshotStore()
        self.runners: dict[str, TargetRunner] = {}
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.shared = SharedResources()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task] = set()  # SIGHUP's reloads, held until done
        self.started = time.monotonic()
        self.collector = ManagedCollector(lambda: len(self.runners), lambda: self.store.cache.text_size())
        self._state = StateDirectory(config.state_directory)  # one for all targets
        # One ledger of rate-limited calls, handed to every target (targets sharing an account
        # share its quota); built before start so that a quota can be registered early.
        self.ledger = self._new_ledger()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "0.0.0.0", port: int = 9896, limits: Limits | None = None,
                    lifecycle: bool = False) -> int:
        """Start polling and serving; `limits` bound the web server's connections, `lifecycle`
        allows `POST /-/reload` (`--web.enable-lifecycle`)."""
        self.session = make_session()
        self._publish_quota()
        await self._apply(self.config)
        self.collector.update()
        limits = limits or Limits()
        warn_if_over_file_limit(limits.max_connections, self.log, "--web.max-connections")
        guard = ConnectionGuard(limits, "web")
        app = make_app(self.view(lifecycle), [guard.middleware()])
        self.web_config.install(app)
        self.runner = web.AppRunner(app, **runner_options(limits, "web"))
        await self.runner.setup()
        site = GuardedSite(self.runner, host, port, guard, ssl_context=self.web_config.ssl_context)
        await site.start()
        self.port = site.port
        sharded = {"shard": str(self.shard), "of_targets": len(self.config.targets)} if self.shard.count > 1 else {}
        self.log.info("listening", address=f"{host}:{self.port}", targets=len(self.runners), **sharded,
                      tls=self.web_config.ssl_context is not None, basic_auth=bool(self.web_config.users))
        return self.port

    async def stop(self) -> None:
        self.collector.stop()
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

    def view(self, lifecycle: bool = False) -> WebView:
        """What the web layer may see: scrapes, each target's status (no secrets), readiness; and
        reload, when `lifecycle` (`--web.enable-lifecycle`) allows it over HTTP."""
        store = self.store

        def fresh() -> SnapshotStore:
            store.expire()
            store.refresh_process()
            return store

        def one_target(name: str, openmetrics: bool) -> bytes | None:
            fresh()
            return target_body(store, name, openmetrics) if name in store.targets else None

        def delivery(name: str) -> str:
            runner = self.runners.get(name)
            return runner.delivery if runner is not None else "poll"

        # self.config and self.ledger are read at each call: a reload replaces them.
        return WebView(
            metrics=lambda openmetrics: fresh().cache.chunks(openmetrics),
            metrics_gzip=lambda openmetrics: fresh().cache.gzip_chunks(openmetrics),
            target_metrics=one_target,
            ready=self.ready,
            status=lambda: status(self.config.targets, store, self.ledger.windows(), delivery),
            reload=self.reload if lifecycle else None,
        )

    # --- targets ---------------------------------------------------------------------------
    def _new_ledger(self) -> QuotaLedger:
        ledger = QuotaLedger(self._state)
        ledger.listeners.append(self._publish_quota)
        return ledger

    def _publish_quota(self) -> None:
        self.store.set_quota(self.ledger.windows())

    def _runner_for(self, target: TargetConfig) -> TargetRunner:
        if self._state.path != Path(self.config.state_directory):  # a reload moved it
            self._state = StateDirectory(self.config.state_directory)
            self.ledger = self._new_ledger()
            self._publish_quota()
        ctx = AdapterContext(session=self.session, state=self._state,
                             log=_TargetLog(self.log, target.name, target.vendor), shared=self.shared,
                             sections=self.config.sections, store=self.store, ledger=self.ledger)
        return new_runner(target, ctx)

    async def _apply(self, config: Config) -> None:
        """Make the running targets match `config` (this replica's share of it, under
        `--shard`): unchanged targets keep running."""
        owned = [t for t in config.targets if self.shard.owns(registry.shard_key(t))]
        wanted = {t.name: t for t in owned}
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
        starting = [t for t in owned if t.name not in self.runners]
        for target in starting:
            self.store.add_target(target.name, target.vendor, target.stale_after)
            runner = self._runner_for(target)
            self.runners[target.name] = runner
            runner.start(starting=len(starting))

    async def reload(self) -> tuple[bool, str]:
        """Read the file again and apply it if it is valid; (ok, message), never an exception.
        The file is read and checked in a thread: a fleet's file takes a good part of a second,
        which /metrics and the polls must not wait for. Reloads run one at a time."""
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.config.path, vendors=registry)
            except ConfigError as exc:
                return self._reload_failed(exc.problems)
            except Exception as exc:  # whatever reading a file can raise, it is a failed reload
                return self._reload_failed([f"{self.config.path}: cannot read the configuration "
                                            f"({type(exc).__name__})"])
            try:
                await self._apply(config)
            except Exception as exc:  # a target's set-up failed: say so, as the file was valid
                return self._reload_failed([f"{self.config.path}: applying it failed ({type(exc).__name__})"])
            self.collector.update()
            self.store.set_reload_result(True)
            self.log.info("configuration reloaded", targets=len(config.targets))
            if self.shard.count > 1:
                return True, f"Reloaded: {len(config.targets)} targets, {len(self.runners)} on this replica (shard {self.shard})."
            return True, f"Reloaded: {len(config.targets)} targets."

    def _reload_failed(self, problems: list[str]) -> tuple[bool, str]:
        self.store.set_reload_result(False)
        for problem in problems:
            self.log.error("configuration reload failed; keeping the running one", problem=problem)
        return False, "Reload failed; the previous configuration keeps running:\n" + "\n".join(problems)

    def reload_soon(self) -> None:
        """SIGHUP: reload in a task the daemon holds, as the loop keeps only a weak reference."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)


def new_runner(target: TargetConfig, ctx: AdapterContext) -> TargetRunner:
    """A runner of `target` (not started) with its vendor's adapter, built in `ctx`: the daemon's,
    or `probe`'s own. `ctx.store` receives its readings and `ctx.log` is the target's logger."""
    spec = registry.get(target.vendor, target.transport)
    if spec is None:  # load_config checks targets against the registry; a Config built in code may not be
        raise LookupError(f"{target.name}: no adapter for vendor {target.vendor!r}, transport {target.transport!r}")
    adapter = spec.create(target, ctx)
    # A transport may poll or stream depending on the target's options (`mode: sse`).
    return TargetRunner(target, adapter, ctx.store, ctx.log, delivery=getattr(adapter, "delivery", spec.delivery))


# An idle connection to a device is kept this long: longer than the usual poll intervals (10 s,
# 15 s, 30 s, 60 s), so a fleet's polls reuse their connections instead of opening one per poll
# (aiohttp's default, 15 s, closes them just before a 15 s poll). A device that dropped it
# meanwhile costs one retry, which aiohttp makes for idempotent requests.
KEEPALIVE_SECONDS = 75.0


class _TargetLog:
    """A logger bound to one target, bound when first used: most targets never log, and a
    bound logger per target is 350 bytes at 10,000 targets."""

    __slots__ = ("_base", "_target", "_vendor", "_bound")

    def __init__(self, base: Any, target: str, vendor: str) -> None:
        self._base, self._target, self._vendor = base, target, vendor
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            self._bound = self._base.bind(target=self._target, vendor=self._vendor)
        return getattr(self._bound, name)


def make_session() -> aiohttp.ClientSession:
    # Many devices, one connection each at most: a high total limit, one per host.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=1, ttl_dns_cache=300, enable_cleanup_closed=True,
                                     keepalive_timeout=KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"energy-meter-exporter/{_version()}"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None),
    )


def _version() -> str:
    from . import __version__

    return __version__


async def serve(config: Config, host: str, port: int, web_config: WebConfig | None = None,
                shard: Shard | None = None, limits: Limits | None = None, lifecycle: bool = False) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit status."""
    daemon = Daemon(config, web_config=web_config, shard=shard)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_soon)
    try:
        await daemon.start(host, port, limits, lifecycle)
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
    daemon.web_config.close()
    return 0
