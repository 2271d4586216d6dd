"""The long-running process: targets, their runners, the store, the web server, reloads, signals."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from . import logs
from .config import Config, ConfigError, TargetConfig, load_config
from .context import AdapterContext, SharedResources
from .quota import QuotaLedger
from .scheduler import TargetRunner
from .serving import ConnectionGuard, GuardedSite, Limits, runner_options, warn_if_over_file_limit
from .state import StateDirectory
from .store import SnapshotStore
from .vendors import registry
from .web import make_app
from .webconfig import WebConfig

SHUTDOWN_GRACE = 4.0  # seconds; SIGTERM must end the process within 5
# With this many targets, or series lines of this many bytes (about 500 P1 meters: one IOmeter
# Partner account may hold thousands of meters), the garbage collector is managed: the objects
# built so far (configuration, adapters, runners, store) are moved out of its way (gc.freeze),
# and its full passes, which Python starts by a rule of thumb every few seconds under a
# fleet's steady churn of connections and readings (each a pause of all polls and scrapes,
# ~0.4 s at 10,000 targets; a third of the CPU time a flood of readings leaves for parsing),
# run on a timer instead. Young objects are collected as usual. The size is checked every
# GC_CHECK_EVERY seconds, since an account's meters arrive after start.
FREEZE_AT_TARGETS = 500
FREEZE_AT_BYTES = 2_500_000
GC_CHECK_EVERY = 5.0  # seconds (a sum over a few hundred segments)
FULL_COLLECTION_EVERY = 600.0  # seconds


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:9896`, `0.0.0.0:9896`, `[::1]:9896` -> (host, port). ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected [host]:port, e.g. :9896")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def shard_of(key: str, count: int) -> int:
    """The replica (0..count-1) of a shard key, by rendezvous hashing: each replica scores the
    key and the highest score wins. When a replica is added, only the keys it wins move (about
    1/count of them, all to it); the others stay where they were."""
    return max(range(count), key=lambda index: _score(key, index))


def _score(key: str, index: int) -> int:
    # A hash that is the same on every machine and Python version (hash() is salted per process).
    return int.from_bytes(hashlib.blake2b(f"{index}\0{key}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Shard:
    """`--shard INDEX/COUNT`: this replica polls the targets whose shard key it wins."""

    index: int = 0
    count: int = 1

    def owns(self, target: TargetConfig) -> bool:
        return self.count <= 1 or shard_of(registry.shard_key(target), self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(value: str) -> Shard:
    """`0/3` -> Shard(0, 3); ValueError with what is wrong."""
    match = _SHARD.match(value)
    if not match:
        raise ValueError(f"--shard {value!r}: expected INDEX/COUNT, e.g. 0/3 (replicas are numbered from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"--shard {value!r}: COUNT must be at least 1")
    if index >= count:
        raise ValueError(f"--shard {value!r}: INDEX must be 0 to {count - 1} (replicas are numbered from 0)")
    return Shard(index, count)


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
        self._gc_task: asyncio.Task | None = None
        self._gc_watch: asyncio.Task | None = None
        self._gc_threshold = gc.get_threshold()
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
        self._freeze()
        limits = limits or Limits()
        warn_if_over_file_limit(limits.max_connections, self.log, "--web.max-connections")
        guard = ConnectionGuard(limits, "web")
        middlewares = [guard.middleware()] + ([self.web_config.middleware()] if self.web_config.users else [])
        app = make_app(self, middlewares, lifecycle=lifecycle)
        self.runner = web.AppRunner(app, **runner_options(limits, "web"))
        await self.runner.setup()
        site = GuardedSite(self.runner, host, port, guard, ssl_context=self.web_config.ssl_context)
        await site.start()
        self.port = site.port
        sharded = {"shard": str(self.shard), "of_targets": len(self.config.targets)} if self.shard.count > 1 else {}
        self.log.info("listening", address=f"{host}:{self.port}", targets=len(self.runners), **sharded,
                      tls=self.web_config.ssl_context is not None, basic_auth=bool(self.web_config.users))
        return self.port

    def _big(self) -> bool:
        return len(self.runners) >= FREEZE_AT_TARGETS or self.store.cache.text_size() >= FREEZE_AT_BYTES

    def _freeze(self) -> None:
        gc.unfreeze()
        if not self._big():
            self._unmanage_gc()
            if self._gc_watch is None:
                self._gc_watch = asyncio.create_task(self._watch_size(), name="gc-watch")
            return
        gc.collect()
        gc.freeze()
        if self._gc_task is None:
            self._gc_threshold = gc.get_threshold()
            gc.set_threshold(self._gc_threshold[0], self._gc_threshold[1], 2**30)  # no automatic full passes
            self._gc_task = asyncio.create_task(self._full_collections(), name="gc")

    async def _watch_size(self) -> None:
        """Manage the collector once the series grow past FREEZE_AT_BYTES."""
        try:
            while self._gc_task is None:
                await asyncio.sleep(GC_CHECK_EVERY)
                if self._gc_task is None and self._big():
                    self._freeze()
        finally:
            self._gc_watch = None

    async def _full_collections(self) -> None:
        while True:
            await asyncio.sleep(FULL_COLLECTION_EVERY)
            gc.collect()

    def _unmanage_gc(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            self._gc_task = None
            gc.set_threshold(*self._gc_threshold)

    async def stop(self) -> None:
        gc.unfreeze()
        self._unmanage_gc()
        if self._gc_watch is not None:
            self._gc_watch.cancel()
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
    def _new_ledger(self) -> QuotaLedger:
        ledger = QuotaLedger(self._state)
        ledger.listeners.append(self._publish_quota)
        return ledger

    def _publish_quota(self) -> None:
        self.store.set_quota(self.ledger.windows())

    def _runner_for(self, target: TargetConfig) -> TargetRunner:
        spec = registry.get(target.vendor, target.transport)
        assert spec is not None  # the config was validated against the registry
        log = _TargetLog(self.log, target.name, target.vendor)
        if self._state.path != Path(self.config.state_directory):  # a reload moved it
            self._state = StateDirectory(self.config.state_directory)
            self.ledger = self._new_ledger()
            self._publish_quota()
        ctx = AdapterContext(session=self.session, state=self._state, log=log, shared=self.shared,
                             sections=self.config.sections, store=self.store, ledger=self.ledger)
        adapter = spec.create(target, ctx)
        # A transport may poll or stream depending on the target's options (`mode: sse`).
        return TargetRunner(target, adapter, self.store, log, kind=getattr(adapter, "kind", spec.kind))

    async def _apply(self, config: Config) -> None:
        """Make the running targets match `config` (this replica's share of it, under
        `--shard`): unchanged targets keep running."""
        owned = [t for t in config.targets if self.shard.owns(t)]
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
                config = await asyncio.to_thread(load_config, self.config.path)
            except ConfigError as exc:
                return self._reload_failed(exc.problems)
            except Exception as exc:  # whatever reading a file can raise, it is a failed reload
                return self._reload_failed([f"{self.config.path}: cannot read the configuration "
                                            f"({type(exc).__name__})"])
            try:
                await self._apply(config)
            except Exception as exc:  # a target's set-up failed: say so, as the file was valid
                return self._reload_failed([f"{self.config.path}: applying it failed ({type(exc).__name__})"])
            self._freeze()
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
