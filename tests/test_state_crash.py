"""State files survive SIGKILL at any moment: old or new content, never a torn file."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

from exporter.runtime.quota import Limit, QuotaLedger
from exporter.runtime.state import StateDirectory

WRITER = """
import sys, time
from exporter.runtime.quota import Limit, QuotaLedger
from exporter.runtime.state import StateDirectory
clock = [1_800_000_000.0]
ledger = QuotaLedger(StateDirectory(sys.argv[1]), lambda: clock[0])
limits = (Limit(10**9, 86400, "day"),)
print("ready", flush=True)
while True:
    ledger.acquire("api", "scope", limits)
    clock[0] += 1
"""


def test_sigkill_during_writes_never_corrupts_the_ledger(tmp_path):
    state = tmp_path / "state"
    rng = random.Random(7)
    seen_counts = []
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(state)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.15))  # kill at a random point of its write loop
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = json.loads((state / "quota-ledger.json").read_text())  # always parses
        seen_counts.append(len(data["calls"]["api|scope"]))
        assert stat.S_IMODE(os.stat(state / "quota-ledger.json").st_mode) == 0o600
        # a new process reads it and carries on
        ledger = QuotaLedger(StateDirectory(state), lambda: 1_800_000_000.0 + 10**6)
        assert ledger.calls["api|scope"]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert max(seen_counts) > 1
    # temporary files of interrupted writes are swept when the directory is next used
    StateDirectory(state).write_json("probe.json", {})
    assert not list(state.glob(".*.tmp"))


def test_ledger_counts_survive(tmp_path):
    clock = lambda: 1_800_000_000.0  # noqa: E731
    ledger = QuotaLedger(StateDirectory(tmp_path), clock)
    ledger.acquire("login", "a", (Limit(5, 3600, "hour"),))
    assert QuotaLedger(StateDirectory(tmp_path), clock).remaining("login", "a", Limit(5, 3600, "hour")) == 4
