"""The family cache: rendered sample lines per metric family and owner (a target, or the exporter
itself), kept as bytes in fixed slots, with the gzip of each segment kept until its lines change
(see the package's documentation for why)."""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

from ..model.catalogue import Metric
from .gzipframes import crc32_combine, deflate_piece, gzip_wrap
from .text import EOF_LINE, headers

SEGMENT = 256  # owner slots per segment: what one change makes a gzip scrape compress again
# Bytes to compress above which the work leaves the event loop: split over two worker threads
# where two CPUs are free, else one (handing work to a thread costs more than small bodies take).
THREAD_THRESHOLD = 4 * 1024 * 1024
THREAD_THRESHOLD_TWO_CPUS = 1024 * 1024
# A big fleet's body (above SHARE_ABOVE plain bytes, ~1,600 P1 meters) changes with every poll,
# a thousand times a second: scrapes then share one gzip render for up to SHARE_FOR seconds (the
# values are as old as their polls anyway), so four Prometheus servers cost about one.
SHARE_ABOVE = 8 * 1024 * 1024
SHARE_FOR = 1.0


_executor: ThreadPoolExecutor | None = None


def _workers() -> int:
    try:
        return max(1, min(2, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return 1


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gzip")
    return _executor


# --- the cache ------------------------------------------------------------------------------------


class _Segment:
    __slots__ = ("lines", "length", "version", "deflated", "crc", "size")

    def __init__(self) -> None:
        self.lines: list[bytes] = [b""] * SEGMENT
        self.length = 0  # of b"".join(lines), kept up to date
        self.version = 0
        # Of b"".join(lines), while `version` holds: deflated piece, CRC-32, length.
        self.deflated: bytes | None = None
        self.crc = 0
        self.size = 0


class _Family:
    __slots__ = ("metric", "headers", "deflated_headers", "header_crcs", "segments", "filled", "version", "packed")

    def __init__(self, metric: Metric) -> None:
        text, om = headers(metric)
        self.metric = metric
        self.headers = (text.encode(), om.encode())
        self.deflated_headers = (deflate_piece(self.headers[0]), deflate_piece(self.headers[1]))
        self.header_crcs = (zlib.crc32(self.headers[0]), zlib.crc32(self.headers[1]))
        self.segments: list[_Segment | None] = []
        self.filled = 0  # owners with lines in this family
        self.version = 0
        # The deflated pieces of all its lines, their CRC-32 and length, at `version`: a family
        # no poll touched since the last gzip scrape costs that scrape one list extension.
        self.packed: tuple[int, list[bytes], int, int] | None = None


@dataclass(slots=True)
class _Job:
    """A segment to compress for a scrape, and what it gave."""

    segment: _Segment
    version: int
    lines: list[bytes]  # the segment's lines at `version` (a copy of the list, not of the text)
    deflated: bytes = b""
    crc: int = 0
    size: int = 0


def _work(jobs: list[_Job]) -> None:
    """Join, compress and checksum segments, outside the event loop when the batch is large.
    Each segment's text is joined here, one at a time, and dropped once compressed: the plain
    text of a whole body (50 MB at 10,000 meters) never exists at once, so the process does not
    keep that much more memory after its first scrape."""
    for job in jobs:
        plain = b"".join(job.lines)
        job.deflated = deflate_piece(plain)
        job.crc = zlib.crc32(plain)
        job.size = len(plain)


class FamilyCache:
    """Rendered sample lines per family and owner (a target, or the exporter itself)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self.generation = 0
        self._slots: dict[str, int] = {}
        self._owners: list[str | None] = []
        self._free: list[int] = []
        self._gzip: dict[bool, tuple[int, list[bytes], float]] = {}  # generation, body, state taken at
        self._rendering: dict[bool, tuple[int, asyncio.Future, float]] = {}
        self._plain_size = 0  # of the last gzip body

    # --- owners and their lines -----------------------------------------------------------------
    def _slot(self, owner: str) -> int:
        slot = self._slots.get(owner)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._owners[slot] = owner
            else:
                slot = len(self._owners)
                self._owners.append(owner)
            self._slots[owner] = slot
        return slot

    def _family(self, metric: Metric) -> _Family:
        family = self._families.get(metric.name)
        if family is None:
            family = self._families[metric.name] = _Family(metric)
        return family

    def _put(self, family: _Family, slot: int, lines: bytes) -> bool:
        index, position = divmod(slot, SEGMENT)
        segments = family.segments
        if index >= len(segments):
            if not lines:
                return False
            segments.extend([None] * (index + 1 - len(segments)))
        segment = segments[index]
        if segment is None:
            if not lines:
                return False
            segment = segments[index] = _Segment()
        old = segment.lines[position]
        if old == lines:
            return False
        segment.lines[position] = lines
        segment.length += len(lines) - len(old)
        segment.version += 1
        segment.deflated = None
        family.version += 1
        if not old:
            family.filled += 1
        elif not lines:
            family.filled -= 1
        return True

    def set_fragments(self, owner: str, fragments: dict[Metric, str | bytes], scope: Iterable[Metric] | None = None) -> bool:
        """Replace `owner`'s lines in the families of `scope` (default: all families) with
        `fragments`. Returns whether anything changed."""
        slot = self._slot(owner)
        changed = False
        for metric, lines in fragments.items():
            if lines.__class__ is str:
                lines = lines.encode()
            if self._put(self._family(metric), slot, lines):
                changed = True
        if scope is None:
            scope = [f.metric for f in self._families.values()]
        for metric in scope:
            if metric in fragments:
                continue
            family = self._families.get(metric.name)
            if family is not None and self._put(family, slot, b""):
                changed = True
        if changed:
            self.generation += 1
        return changed

    def drop_owner(self, owner: str, scope: Iterable[Metric] | None = None) -> None:
        self.set_fragments(owner, {}, scope)
        if scope is None:  # gone everywhere: its slot can serve another owner
            slot = self._slots.pop(owner, None)
            if slot is not None:
                self._owners[slot] = None
                self._free.append(slot)

    def _lines(self, family: _Family, slot: int) -> bytes:
        index, position = divmod(slot, SEGMENT)
        if index < len(family.segments):
            segment = family.segments[index]
            if segment is not None:
                return segment.lines[position]
        return b""

    def fragments_of(self, owner: str) -> dict[Metric, str]:
        """One owner's rendered lines per family, in scrape order."""
        slot = self._slots.get(owner)
        if slot is None:
            return {}
        out = {}
        for family in self._families.values():
            lines = self._lines(family, slot)
            if lines:
                out[family.metric] = lines.decode()
        return out

    def fragment(self, metric: Metric, owner: str) -> str | None:
        family = self._families.get(metric.name)
        slot = self._slots.get(owner)
        if family is None or slot is None:
            return None
        lines = self._lines(family, slot)
        return lines.decode() if lines else None

    # --- plain bodies ---------------------------------------------------------------------------
    def chunks(self, openmetrics: bool) -> list[bytes]:
        """The body as a list of chunks, one per family (header and lines)."""
        fmt = 1 if openmetrics else 0
        out = []
        for family in self._families.values():
            if not family.filled:
                continue
            parts = [family.headers[fmt]]
            parts.extend(b"".join(s.lines) for s in family.segments if s is not None)
            out.append(b"".join(parts))
        if openmetrics:
            out.append(EOF_LINE)
        return out

    # --- gzip bodies ---------------------------------------------------------------------------
    def _gzip_plan(self, openmetrics: bool) -> tuple[list, list[_Job], list]:
        """What a gzip body is made of: the deflated pieces kept, jobs for the segments that
        changed, and per family what its checksum is made of."""
        fmt = 1 if openmetrics else 0
        pieces: list = []
        jobs: list[_Job] = []
        sums: list = []  # per family: (family, version, packed or [(crc, size) | _Job])
        for family in self._families.values():
            if not family.filled:
                continue
            pieces.append(family.deflated_headers[fmt])
            packed = family.packed
            if packed is not None and packed[0] == family.version:
                pieces.extend(packed[1])
                sums.append((family, family.version, packed))
                continue
            parts = []
            for segment in family.segments:
                if segment is None:
                    continue
                if segment.deflated is None:
                    job = _Job(segment, segment.version, segment.lines[:])
                    jobs.append(job)
                    pieces.append(job)
                    parts.append(job)
                elif segment.size:
                    pieces.append(segment.deflated)
                    parts.append(segment)
            sums.append((family, family.version, parts))
        return pieces, jobs, sums

    def _gzip_finish(self, openmetrics: bool, pieces: list, jobs: list[_Job], sums: list) -> list[bytes]:
        fmt = 1 if openmetrics else 0
        for job in jobs:
            segment = job.segment
            if segment.version == job.version:  # unchanged while it was compressed
                segment.deflated, segment.crc, segment.size = job.deflated, job.crc, job.size
        crc, size = 0, 0
        for family, version, parts in sums:
            if parts.__class__ is tuple:  # packed
                body_crc, body_len = parts[2], parts[3]
            else:
                body_crc, body_len, deflated = 0, 0, []
                for part in parts:
                    if part.__class__ is _Job:
                        c, n, piece = part.crc, part.size, part.deflated
                    else:
                        c, n, piece = part.crc, part.size, part.deflated
                    if n:
                        body_crc = crc32_combine(body_crc, c, n) if body_len else c
                        body_len += n
                        deflated.append(piece)
                if family.version == version:
                    family.packed = (version, deflated, body_crc, body_len)
            header = family.headers[fmt]
            part_crc = crc32_combine(family.header_crcs[fmt], body_crc, body_len)
            part_len = len(header) + body_len
            crc = crc32_combine(crc, part_crc, part_len) if size else part_crc
            size += part_len
        resolved = [p.deflated if p.__class__ is _Job else p for p in pieces]
        if openmetrics:
            resolved.append(_EOF_DEFLATED)
            crc = crc32_combine(crc, _EOF_CRC, len(EOF_LINE)) if size else _EOF_CRC
            size += len(EOF_LINE)
        self._plain_size = size
        return gzip_wrap([p for p in resolved if p], crc, size)

    def text_size(self) -> int:
        """Bytes of series lines held (the plain body, less headers)."""
        return sum(segment.length for family in self._families.values()
                   for segment in family.segments if segment is not None)

    def _shared(self, generation: int, started: float) -> bool:
        """Whether a body of that generation, rendered from the state at `started`, serves now."""
        if generation == self.generation:
            return True
        return self._plain_size > SHARE_ABOVE and time.monotonic() - started < SHARE_FOR

    async def gzip_chunks(self, openmetrics: bool) -> list[bytes]:
        """The gzip body; large compressions run in worker threads while the loop goes on.
        Scrapes arriving meanwhile share the result (see SHARE_ABOVE)."""
        cached = self._gzip.get(openmetrics)
        if cached and self._shared(cached[0], cached[2]):
            return cached[1]
        running = self._rendering.get(openmetrics)
        if running is not None and self._shared(running[0], running[2]):
            return await asyncio.shield(running[1])
        generation, started = self.generation, time.monotonic()
        pieces, jobs, sums = self._gzip_plan(openmetrics)
        threshold = THREAD_THRESHOLD if _workers() < 2 else min(THREAD_THRESHOLD, THREAD_THRESHOLD_TWO_CPUS)
        if sum(job.segment.length for job in jobs) < threshold:
            _work(jobs)
            out = self._gzip_finish(openmetrics, pieces, jobs, sums)
            self._gzip[openmetrics] = (generation, out, started)
            return out
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._rendering[openmetrics] = (generation, future, started)
        try:
            workers = _workers()
            await asyncio.gather(*(loop.run_in_executor(_pool(), _work, jobs[i::workers]) for i in range(workers)))
            out = self._gzip_finish(openmetrics, pieces, jobs, sums)
            self._gzip[openmetrics] = (generation, out, started)
            future.set_result(out)
            return out
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            if self._rendering.get(openmetrics, (None, None, None))[1] is future:
                del self._rendering[openmetrics]


_EOF_DEFLATED = deflate_piece(EOF_LINE)
_EOF_CRC = zlib.crc32(EOF_LINE)
