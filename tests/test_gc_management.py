"""The daemon takes the garbage collector's full passes in hand once the fleet is big, counted
in targets or in the size of its series (an IOmeter Partner account is one target with
thousands of meters), and gives it back on stop."""

from __future__ import annotations

import asyncio
import gc
import textwrap

from exporter.daemon import Daemon
from exporter.runtime import gcpolicy
from simulators.homewizard import HomeWizardSimulator

from .configs import load_config
from .conftest import async_wait_until

MANAGED = 2**30  # the third threshold while full passes run on the daemon's timer


async def test_full_passes_are_managed_once_the_series_grow(tmp_path, monkeypatch):
    device = await HomeWizardSimulator("HWE-P1", v2=False).start()
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""
        state_directory: {tmp_path / 'state'}
        targets:
          - {{name: p1, vendor: homewizard, host: '{device.v1_host}', interval: 1s}}
    """))
    monkeypatch.setattr(gcpolicy, "GC_CHECK_EVERY", 0.05)
    threshold = gc.get_threshold()
    daemon = Daemon(load_config(path))
    await daemon.start("127.0.0.1", 0)
    try:
        await async_wait_until(lambda: daemon.store.targets["p1"].up, what="p1 up")
        size = daemon.store.cache.text_size()
        assert size > 1000  # a P1 meter's lines
        await asyncio.sleep(6 * gcpolicy.GC_CHECK_EVERY)  # one small target: Python's own rule stays
        assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
        # As if an account's meters had grown the series to the limit:
        monkeypatch.setattr(gcpolicy, "FREEZE_AT_BYTES", size)
        await async_wait_until(lambda: gc.get_threshold()[2] == MANAGED, what="full passes managed")
        assert gc.get_freeze_count() > 0
        assert daemon.store.targets["p1"].up
    finally:
        await daemon.stop()
        await device.stop()
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
