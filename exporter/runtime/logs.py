"""Structured logging (structlog) in logfmt or JSON, like Prometheus's own exporters."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("debug", "info", "warn", "error")
FORMATS = ("logfmt", "json")


def setup(level: str = "info", fmt: str = "logfmt", stream=None) -> None:
    numeric = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
               "error": logging.ERROR}[level]
    renderer = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.processors.LogfmtRenderer(key_order=["ts", "level", "msg"], drop_missing=True, bool_as_flag=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or _Stderr()),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library; pymodbus logs every timeout at ERROR with frame
    # dumps. The exporter reports those failures itself (reason, counter), so keep them quiet
    # unless debugging.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if numeric == logging.DEBUG else logging.CRITICAL + 1)


class _Stderr:
    """Whatever sys.stderr is at the moment of writing (tests and embedders swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def get(**bound):
    return structlog.get_logger().bind(**bound)
