"""`--shard INDEX/COUNT`: several replicas share a fleet, each polling the targets whose shard
key it wins, with no coordination between them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


def shard_of(key: str, count: int) -> int:
    """The replica (0..count-1) of a shard key, by rendezvous hashing: each replica scores the
    key and the highest score wins. When a replica is added, only the keys it wins move (about
    1/count of them, all to it); the others stay where they were."""
    return max(range(count), key=lambda index: _score(key, index))


def _score(key: str, index: int) -> int:
    # A hash that is the same on every machine and Python version (hash() is salted per process).
    return int.from_bytes(hashlib.blake2b(f"{index}\0{key}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Shard:
    """`--shard INDEX/COUNT`: this replica polls the targets whose shard key it wins."""

    index: int = 0
    count: int = 1

    def owns(self, key: str) -> bool:
        """Whether this replica polls the targets of shard key `key` (a vendor's spec says
        what a target's key is: its name, or the account it shares)."""
        return self.count <= 1 or shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(value: str) -> Shard:
    """`0/3` -> Shard(0, 3); ValueError with what is wrong."""
    match = _SHARD.match(value)
    if not match:
        raise ValueError(f"--shard {value!r}: expected INDEX/COUNT, e.g. 0/3 (replicas are numbered from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"--shard {value!r}: COUNT must be at least 1")
    if index >= count:
        raise ValueError(f"--shard {value!r}: INDEX must be 0 to {count - 1} (replicas are numbered from 0)")
    return Shard(index, count)
