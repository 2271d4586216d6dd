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

from .cache import FamilyCache
from .text import (OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, base_label_text, format_value, headers,
                   render_samples, render_series, sample_line)

__all__ = ["FamilyCache", "OPENMETRICS_CONTENT_TYPE", "TEXT_CONTENT_TYPE", "base_label_text", "format_value",
           "headers", "render_samples", "render_series", "sample_line"]
