"""The gateway's nightly unresponsive period: a daily span of local time in which its failures
are expected (see `local.py` for what a poll does then)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

NIGHTLY_WINDOW = "22:45-23:30"  # around the gateway's nightly unresponsive period (local time)
NIGHT_REASONS = frozenset({"timeout", "connection", "http_error"})  # how that period shows
# In that period a poll gives up at this share of its timeout, before the scheduler would count
# a failure.
NIGHT_SHARE_OF_TIMEOUT = 0.8


@dataclass(frozen=True)
class Window:
    """A daily span of local time, in minutes after midnight; may wrap past midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def holds(self, now: float, tz: ZoneInfo | None) -> bool:
        """Whether the moment `now` falls in the span, in `tz` (None: this host's time zone)."""
        local = dt.datetime.fromtimestamp(now, tz) if tz else dt.datetime.fromtimestamp(now)
        return self.contains(local.hour * 60 + local.minute)

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_window(text: str | None) -> Window | None:
    """`HH:MM-HH:MM` -> Window; None for `off` or empty; ValueError when malformed."""
    if text is None or text.strip().lower() in ("", "off", "none", "false"):
        return None
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not match:
        raise ValueError("expected HH:MM-HH:MM (local time), or off")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError("hours 0-23, minutes 0-59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError("the window is empty")
    return Window(start, end)


@dataclass
class Night:
    """Failures inside the nightly window, for the backoff."""

    failures: int = 0
    retry_at: float = 0.0
