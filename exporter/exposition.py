"""Rendering of the Prometheus text format 0.0.4 and OpenMetrics 1.0.

Lines are rendered when a target's data changes, never on scrape. The cache holds, per metric
family and per owner (a target, or the exporter itself), that owner's rendered sample lines as
bytes; a scrape writes each family's header once and then the lines of every owner under it (a
family must not be split, and a second `# TYPE` for one name would fail the scrape).

At fleet scale (10,000 meters, ~50 MB of text) the work of a scrape is what a round of polls
left behind, no more:

- Owners have fixed slots, grouped in segments of `SEGMENT` slots; a family holds one list of
  line blocks per segment. A poll swaps list items (no joining, no copying), and only when its
  text really changed, which is about a third of a meter's lines.
- A plain scrape joins each segment's list (C speed) and writes the chunks as they are; no
  body-sized string is ever built.
- A gzip scrape (what Prometheus asks for) is one gzip stream whose deflate data is the
  concatenation of independently compressed segments (each ends on a full flush, so it starts
  from an empty window and on a byte boundary; RFC 1951 allows any number of non-final blocks).
  Each segment's compressed bytes are kept until its lines change, so a scrape compresses only
  the segments polls touched; the stream's CRC-32 is kept per family and combined. A single
  member, not concatenated gzip members: curl and some libraries read only the first member.
- Large compressions run in worker threads (zlib releases the GIL), so polls go on meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

from .catalogue import Metric
from .errors import safe_text

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

SEGMENT = 256  # owner slots per segment: what one change makes a gzip scrape compress again
GZIP_LEVEL = 1  # the body is highly repetitive: level 1 compresses 30x, at several times level 6's speed
# Bytes to compress above which the work leaves the event loop: split over two worker threads
# where two CPUs are free, else one (handing work to a thread costs more than small bodies take).
THREAD_THRESHOLD = 4 * 1024 * 1024
THREAD_THRESHOLD_TWO_CPUS = 1024 * 1024
# A big fleet's body (above SHARE_ABOVE plain bytes, ~1,600 P1 meters) changes with every poll,
# a thousand times a second: scrapes then share one gzip render for up to SHARE_FOR seconds (the
# values are as old as their polls anyway), so four Prometheus servers cost about one.
SHARE_ABOVE = 8 * 1024 * 1024
SHARE_FOR = 1.0
EOF_LINE = b"# EOF\n"
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty, final, fixed-Huffman deflate block


def escape_label_value(value: str) -> str:
    if not value.isascii():  # text from a device may hold lone surrogates, which UTF-8 cannot carry
        value = safe_text(value)
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    # The common cases first: whole numbers (counters, watts, joules from kWh with 3 decimals),
    # then floats whose shortest form has at most 15 digits (which the rounding below keeps).
    if value.__class__ is float:
        if value.is_integer():
            if -1e15 < value < 1e15:
                return str(int(value))
        elif value == value and value not in (_INF, _NINF):
            text = repr(value)
            if len(text) <= 16 and "e" not in text:
                return text
    elif value.__class__ is int and -10**15 < value < 10**15:
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (_INF, _NINF):
        return "+Inf" if value > 0 else "-Inf"
    # 15 significant digits drop the noise of unit conversions (2948.827 kWh * 3.6e6).
    rounded = float(f"{value:.15g}")
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    if rounded in (_INF, _NINF):  # the largest floats round up past the float range
        return repr(float(value))
    return repr(rounded)


_INF, _NINF = float("inf"), float("-inf")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def sample_line(name: str, pairs: Iterable[tuple[str, str]], value: float) -> str:
    return f"{name}{label_text(pairs)} {format_value(value)}\n"


# Rendered `,name="value"` text of label tuples, shared by every target (most series carry the
# same extra labels: phase, tariff, obis). Bounded: meter ids and the like make it grow, in
# entries and (a device may send long ids) in the length of what is kept.
_LABELS: dict[tuple, str] = {}
_LABELS_MAX = 4096
_LABELS_LONGEST = 256


def extra_label_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """`,k="v",...` for labels that follow the base labels (empty for none)."""
    text = _LABELS.get(pairs)
    if text is None:
        text = "".join(f',{k}="{escape_label_value(v)}"' for k, v in pairs)
        if len(text) <= _LABELS_LONGEST:
            if len(_LABELS) >= _LABELS_MAX:
                _LABELS.clear()
            _LABELS[pairs] = text
    return text


def base_label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """`k="v",...` of a target's own labels (vendor, device), rendered once per target."""
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)


def render_lines(samples: Iterable, base: str) -> dict[Metric, bytes]:
    """Samples grouped by family, rendered with the pre-rendered `base` labels in front."""
    samples = list(samples)
    return render_series([s.metric for s in samples], [s.labels for s in samples], [s.value for s in samples], base)


def render_series(metrics, labels, values, base: str, only=None) -> dict[Metric, bytes]:
    """Series given as parallel sequences, grouped by family and rendered with the
    pre-rendered `base` labels in front; with `only`, just the families in it."""
    out: dict[Metric, list[str]] = {}
    for metric, pairs, value in zip(metrics, labels, values):
        if only is not None and metric not in only:
            continue
        extra = extra_label_text(pairs) if pairs else ""
        if base:
            line = f"{metric.name}{{{base}{extra}}} {format_value(value)}\n"
        elif extra:
            line = f"{metric.name}{{{extra[1:]}}} {format_value(value)}\n"
        else:
            line = f"{metric.name} {format_value(value)}\n"
        lines = out.get(metric)
        if lines is None:
            out[metric] = [line]
        else:
            lines.append(line)
    return {metric: "".join(lines).encode() for metric, lines in out.items()}


def render_samples(samples: Iterable, base: tuple[tuple[str, str], ...]) -> dict[Metric, str]:
    """Group samples by family and render their lines with `base` labels in front."""
    return {metric: lines.decode() for metric, lines in render_lines(samples, base_label_text(base)).items()}


def is_info(metric: Metric) -> bool:
    return metric.name.endswith("_info") and metric.kind == "gauge"


def headers(metric: Metric) -> tuple[str, str]:
    """(text 0.0.4 header, OpenMetrics header) of one family."""
    text = f"# HELP {metric.name} {escape_help(metric.help)}\n# TYPE {metric.name} {metric.kind}\n"
    if is_info(metric):
        om_name, om_type = metric.name[: -len("_info")], "info"
    else:
        om_name, om_type = metric.om_name, metric.kind
    om = f"# TYPE {om_name} {om_type}\n# HELP {om_name} {escape_help(metric.help)}\n"
    return text, om


# --- gzip of independently compressed pieces ----------------------------------------------------

_local = threading.local()


def deflate_piece(data: bytes) -> bytes:
    """Raw deflate of `data` ending on a full flush: decodable with no history, byte aligned,
    never final, so pieces concatenate in any order into one deflate stream."""
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 9)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


_POLY = 0xEDB88320  # CRC-32 (gzip), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected bit order), as zlib computes it."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) mod p
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))

# Multiplying by x^(8 * 2^j) (appending 2^j zero bytes) is linear: per j, a table of its effect
# on each byte of the CRC, built when first needed.
_SHIFT_TABLES: dict[int, list[int]] = {}


def _shift_table(j: int) -> list[int]:
    table = _SHIFT_TABLES.get(j)
    if table is None:
        if j == 0:
            factor = _X2N[3]
            table = [_multmodp(factor, b << (8 * i)) for i in range(4) for b in range(256)]
        else:  # twice the shift of j - 1: apply its table twice (much cheaper than _multmodp)
            t = _shift_table(j - 1)
            table = []
            for i in range(4):
                for b in range(256):
                    v = b << (8 * i)
                    v = t[v & 255] ^ t[256 + ((v >> 8) & 255)] ^ t[512 + ((v >> 16) & 255)] ^ t[768 + (v >> 24)]
                    table.append(t[v & 255] ^ t[256 + ((v >> 8) & 255)] ^ t[512 + ((v >> 16) & 255)] ^ t[768 + (v >> 24)])
        _SHIFT_TABLES[j] = table
    return table


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine, which Python's zlib
    module does not offer)."""
    j = 0
    while length2:
        if length2 & 1:
            t = _shift_table(j)
            crc1 = t[crc1 & 255] ^ t[256 + ((crc1 >> 8) & 255)] ^ t[512 + ((crc1 >> 16) & 255)] ^ t[768 + (crc1 >> 24)]
        length2 >>= 1
        j += 1
    return crc1 ^ crc2


def gzip_wrap(pieces: list[bytes], crc: int, size: int) -> list[bytes]:
    """A gzip member around deflate pieces of a body with this CRC-32 and length."""
    return [_GZIP_HEADER, *pieces, _FINAL_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)]


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
        self._bodies: dict[tuple[bool, bool], tuple[int, bytes]] = {}
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

    def owners(self, metric: Metric) -> list[str]:
        family = self._families.get(metric.name)
        if family is None:
            return []
        out = []
        for index, segment in enumerate(family.segments):
            if segment is None:
                continue
            for position, lines in enumerate(segment.lines):
                if lines:
                    owner = self._owners[index * SEGMENT + position]
                    if owner is not None:
                        out.append(owner)
        return out

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

    def body(self, openmetrics: bool) -> str:
        return b"".join(self.chunks(openmetrics)).decode()

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

    def gzip_chunks_now(self, openmetrics: bool) -> list[bytes]:
        """The gzip body of the current state, compressed in this thread."""
        cached = self._gzip.get(openmetrics)
        if cached and cached[0] == self.generation:
            return cached[1]
        generation, started = self.generation, time.monotonic()
        pieces, jobs, sums = self._gzip_plan(openmetrics)
        _work(jobs)
        out = self._gzip_finish(openmetrics, pieces, jobs, sums)
        self._gzip[openmetrics] = (generation, out, started)
        return out

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

    def encoded(self, openmetrics: bool, compress: bool) -> bytes:
        """The whole body as bytes, cached until the next change."""
        key = (openmetrics, compress)
        cached = self._bodies.get(key)
        if cached and cached[0] == self.generation:
            return cached[1]
        generation = self.generation
        chunks = self.gzip_chunks_now(openmetrics) if compress else self.chunks(openmetrics)
        data = b"".join(chunks)
        self._bodies[key] = (generation, data)
        return data


_EOF_DEFLATED = deflate_piece(EOF_LINE)
_EOF_CRC = zlib.crc32(EOF_LINE)
