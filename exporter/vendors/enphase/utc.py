"""Moments in messages and log lines: UTC, ISO 8601, to the second."""

from __future__ import annotations

import time


def iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
