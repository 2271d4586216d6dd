"""Upload targets (HTTP or TCP push) run by the scheduler's push loop into a store, as the daemon
wires them, without the rest of the daemon: the listener and its counters in reach."""

from __future__ import annotations

import structlog

from exporter.config.loader import TargetConfig
from exporter.model import catalogue as M
from exporter.runtime.context import AdapterContext, SharedResources
from exporter.runtime.scheduler import TargetRunner
from exporter.runtime.state import StateDirectory
from exporter.store import SnapshotStore

from .conftest import async_wait_until, exposition_text, sample_value


class PushTargets:
    """Targets of one transport `spec` sharing the listener of `section` (its name is also the
    listener's label in energy_meter_exporter_push_rejected_total)."""

    def __init__(self, tmp_path, section: str, settings: dict, spec, session=None) -> None:
        self.store = SnapshotStore()
        self.shared = SharedResources()
        self.session = session
        self.tmp_path = tmp_path
        self.section = section
        self.sections = {section: settings}
        self.spec = spec
        self.runners: list[TargetRunner] = []

    async def add(self, config: TargetConfig, wait: bool = True) -> TargetRunner:
        self.store.add_target(config.name, config.vendor, config.stale_after)
        context = AdapterContext(session=self.session, state=StateDirectory(self.tmp_path), log=structlog.get_logger(),
                                 shared=self.shared, sections=self.sections, store=self.store)
        runner = TargetRunner(config, self.spec.create(config, context), self.store, structlog.get_logger(),
                              delivery="push")
        runner.start()
        self.runners.append(runner)
        if wait:
            await async_wait_until(lambda: runner.adapter.listener is not None, what="the listener")
        return runner

    @property
    def listener(self):
        return self.runners[0].adapter.listener

    def value(self, name: str, **labels) -> float | None:
        self.store.expire()
        return sample_value(exposition_text(self.store), name, **labels)

    def rejected(self, reason: str) -> float | None:
        return self.value(M.PUSH_REJECTED.name, listener=self.section, reason=reason)

    def state(self, name: str = "meter"):
        return self.store.targets[name]

    async def close(self) -> None:
        for runner in self.runners:
            await runner.stop()
