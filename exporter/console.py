"""How the helper commands (`discover`, `pair`, `token`, `probe`, `check-config`) talk to a person.

One style for all of them:
- stdout carries only the command's product (YAML targets, metric lines, the verdict of
  `check-config`), so it can be redirected into a file; everything meant for the person goes to
  stderr.
- While a command waits (a button press, a scan, a poll) it shows progress: on a terminal one
  live line rewritten in place, otherwise plain lines, at most one every few seconds, so logs of
  CI jobs and `2>file` stay readable.
- It ends with one verdict line (`OK: ...` or `Failed (reason): ...`) and a `Next:` line that
  says what to do now.
- Exit statuses: 0 success, 1 a runtime failure (device unreachable, nothing found, button not
  pressed), 2 bad input (flags, configuration). docs/troubleshooting.md lists them per command.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Plain (non-terminal) output repeats a progress line at most this often, in seconds.
PLAIN_EVERY = 5.0
BAR_WIDTH = 24

# What to do about each reason a poll can fail with; shown by `probe` and on the status page.
# The troubleshooting table (docs/troubleshooting.md) says the same in more words (a test keeps them in step).
NEXT_STEPS: dict[str, str] = {
    "timeout": "check the device's Wi-Fi reception, or raise the target's `timeout`",
    "connection": "check the address and that the device is powered and on the network",
    "tls": "check `ca_file` / `serial` / `tls_fingerprint`; the device may have been replaced",
    "unauthorized": "get a new token (`pair homewizard HOST`, `token enphase`) or check the credentials",
    "api_disabled": "enable the local API in the vendor's app (HomeWizard Energy: Settings > Meters > Local API)",
    "http_error": "read the message; the device may be busy or updating its firmware, it usually passes",
    "parse": "the device sent something unexpected: please report it with the message",
    "too_large": "the address probably points at another kind of device",
    "config": "follow the message and correct the target in the configuration",
    "quota": "lengthen the target's interval: the cloud's quota is used up for now",
    "stale": "check the device's upload (push) settings and its network",
    "internal": "please report it with the exporter's log line",
    "modbus_exception": "check the Modbus unit id and the meter model; the meter may be busy",
}


def next_step(reason: str | None) -> str | None:
    return NEXT_STEPS.get(reason) if reason else None


@dataclass
class Console:
    """Progress and verdict lines on stderr (or `err`), product on stdout (or `out`)."""

    err: TextIO = field(default_factory=lambda: sys.stderr)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    interactive: bool | None = None  # None: a live line only when stderr is a terminal
    clock: Callable[[], float] = time.monotonic
    _live: bool = False  # a live line is on screen and must be ended before other output
    _last_plain: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interactive is None:
            isatty = getattr(self.err, "isatty", None)
            self.interactive = bool(isatty and isatty())

    # --- lines for the person ----------------------------------------------------------------
    def say(self, text: str) -> None:
        """A line of explanation (a heading, what is about to happen)."""
        self._end_live()
        print(text, file=self.err, flush=True)

    def ok(self, text: str) -> None:
        self.say(f"OK: {text}")

    def failed(self, text: str, reason: str | None = None) -> None:
        self.say(f"Failed ({reason}): {text}" if reason else f"Failed: {text}")

    def next(self, text: str) -> None:
        """The last line of every command: what to do now."""
        self.say(f"Next: {text}")

    def block(self, text: str, indent: str = "  ") -> None:
        """An indented block for the person (a YAML snippet to copy)."""
        self._end_live()
        for line in text.rstrip("\n").splitlines():
            print(f"{indent}{line}", file=self.err)
        self.err.flush()

    # --- the product -------------------------------------------------------------------------
    def product(self, text: str) -> None:
        """What the command produces, on stdout."""
        self._end_live()
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    # --- progress ----------------------------------------------------------------------------
    def status(self, key: str, text: str, force: bool = False) -> None:
        """A progress line: rewritten in place on a terminal; otherwise printed at most every
        PLAIN_EVERY seconds per `key` (always with `force`)."""
        if self.interactive:
            print("\r\033[2K" + text, end="", file=self.err, flush=True)
            self._live = True
            return
        now = self.clock()
        last = self._last_plain.get(key)
        if force or last is None or now - last >= PLAIN_EVERY:
            self._last_plain[key] = now
            print(text, file=self.err, flush=True)

    def countdown(self, label: str, seconds_left: float, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        self.status(label, f"  {label} ... {max(0.0, seconds_left):4.0f}s left{extra}")

    def progress(self, label: str, done: int, total: int, detail: str = "") -> None:
        total = max(total, 1)
        filled = int(BAR_WIDTH * min(done, total) / total)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        extra = f", {detail}" if detail else ""
        self.status(label, f"  {label} [{bar}] {done}/{total}{extra}", force=done >= total)

    def _end_live(self) -> None:
        if self._live:
            print(file=self.err)
            self._live = False
