"""`energy-meter-exporter probe NAME`: poll one target once and print what it would export.

Exit status: 0 the poll succeeded, 1 it failed, 2 no such target or a push target.
The metric lines go to stdout; progress, the verdict and the next step to stderr.
"""

from __future__ import annotations

import asyncio
import time

from .config.loader import Config
from .console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Console, next_step
from .daemon import make_session, new_runner
from .exposition import render_samples
from .model.errors import PollError
from .runtime import logs
from .runtime.context import AdapterContext
from .runtime.quota import QuotaLedger
from .runtime.state import StateDirectory
from .store import SnapshotStore

TICK = 0.25  # seconds between updates of the progress line


async def probe(config: Config, name: str, console: Console | None = None) -> int:
    console = console or Console()
    target = config.target(name)
    if target is None:
        known = ", ".join(t.name for t in config.targets) or "none"
        console.failed(f"no target named {name!r} in {config.path} (targets: {known})")
        console.next("give the name of a target as written under `targets:` in the configuration")
        return EXIT_USAGE
    session = make_session()
    try:
        # Built as the daemon builds it (the configured state directory and its quota ledger), with a
        # store of its own.
        state = StateDirectory(config.state_directory)
        store = SnapshotStore()
        ctx = AdapterContext(session=session, state=state, log=logs.get().bind(target=name, vendor=target.vendor),
                             sections=config.sections, store=store, ledger=QuotaLedger(state))
        runner = new_runner(target, ctx)
        if runner.delivery != "poll":
            console.failed(f"{name}: a push target cannot be probed")
            console.next("start the exporter and watch this target on its status page (/) instead")
            return EXIT_USAGE
        store.add_target(target.name, target.vendor, target.stale_after)
        console.say(f"Polling {name} ({target.vendor} {target.transport}, timeout {target.timeout:g}s) ...")
        started = time.monotonic()
        task = asyncio.ensure_future(runner.poll_once())
        try:
            while not task.done():
                console.countdown(f"waiting for {name}", target.timeout - (time.monotonic() - started))
                await asyncio.wait([task], timeout=TICK)
            reading = task.result()
        except PollError as exc:
            console.failed(f"{name}: poll failed ({exc.reason}): {exc.message}")
            hint = next_step(exc.reason)
            console.next(f"{hint}; then run `energy-meter-exporter probe {name}` again" if hint else
                         f"run `energy-meter-exporter probe {name}` again")
            return EXIT_FAILURE
        finally:
            if not task.done():
                task.cancel()
            await runner.adapter.close()
        elapsed = time.monotonic() - started
        base = (("vendor", target.vendor), ("device", target.name))
        lines = [f"# device: model={info.model} serial={info.serial} firmware={info.firmware}\n"
                 for info in reading.devices]
        lines.extend(render_samples(reading.samples, base).values())
        console.product("".join(lines))
        console.ok(f"{name} answered in {elapsed:.2f}s with {len(reading.samples)} samples")
        console.next(f"start the exporter with this configuration (`energy-meter-exporter --config.file "
                     f"{config.path}`), open http://localhost:9896/ for the status page and add it to Prometheus")
        return EXIT_OK
    finally:
        await session.close()
