"""Ports for simulators and listeners that open them later (or in another process)."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a listener another process (Mosquitto) or a later start (the exporter's
    push listener) will open. Taken below the kernel's ephemeral range, which `bind(..., 0)` and
    outgoing connections draw from: a port probed there and released could be handed to the
    next listener on port 0 before its owner opens it."""
    low = _ephemeral_start()
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: any free port
        s.bind((host, 0))
        return s.getsockname()[1]


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
