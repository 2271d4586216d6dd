"""`energy-meter-exporter probe NAME`: poll one target once and print what it would export."""

from __future__ import annotations

import sys

from .config import Config
from .daemon import Daemon, make_session
from .errors import PollError
from .exposition import render_samples


async def probe(config: Config, name: str) -> int:
    target = config.target(name)
    if target is None:
        known = ", ".join(t.name for t in config.targets) or "none"
        print(f"energy-meter-exporter: no target named {name!r} in {config.path} (targets: {known})", file=sys.stderr)
        return 2
    daemon = Daemon(config)
    daemon.session = make_session()
    try:
        runner = daemon._runner_for(target)
        if runner.kind != "poll":
            print(f"{name}: a push target cannot be probed; watch /metrics of the running exporter instead",
                  file=sys.stderr)
            return 2
        daemon.store.add_target(target.name, target.vendor, target.stale_after)
        print(f"Polling {name} ({target.vendor} {target.transport}, timeout {target.timeout:g}s) ...", file=sys.stderr)
        try:
            reading = await runner.poll_once()
        except PollError as exc:
            print(f"{name}: poll failed ({exc.reason}): {exc.message}", file=sys.stderr)
            return 1
        finally:
            await runner.adapter.close()
        base = (("vendor", target.vendor), ("device", target.name))
        for info in reading.devices:
            print(f"# device: model={info.model} serial={info.serial} firmware={info.firmware}")
        for lines in render_samples(reading.samples, base).values():
            sys.stdout.write(lines)
        print(f"{name}: OK, {len(reading.samples)} samples", file=sys.stderr)
        return 0
    finally:
        await daemon.session.close()
