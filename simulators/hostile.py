"""What a hostile peer sends: a device's own document with one part poisoned, and broken framing.

The simulators answer in their device's shape (the captured bodies); a hostile mode changes one
spot of that document, so that a client which copes with the poison still finds the rest where
it belongs. The poisons (`BODY_POISONS`):

- `invalid_utf8`: bytes no UTF-8 text holds, inside a string value;
- `surrogate`: a lone UTF-16 surrogate, written as the escape `\\ud800` (valid JSON syntax, but
  the string it decodes to cannot be encoded as UTF-8), appended to a string value;
- `absurd`: an energy counter at 1e300 (a jump no meter makes);
- `negative`: an energy counter at -5;
- `nan`: `NaN` and `Infinity` literals where numbers belong (not JSON, but what a careless
  encoder writes);
- `bigint`: a 400-digit integer where a number belongs (beyond any float);
- `deep`: an extra field holding lists nested 200,000 deep.

`Spots` names where in the document each poison goes (paths of keys and list indexes).
Framing helpers for HTTP (`http_response`, `split_head`), Modbus/TCP (MBAP) and MQTT are used
by `faultproxy.py` to break an answer on its way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Sequence

BODY_POISONS = ("invalid_utf8", "surrogate", "absurd", "negative", "nan", "bigint", "deep")
INVALID_UTF8 = b"\xff\xfe\xc3\x28"  # a lone continuation-less lead, a bad sequence
SURROGATE = "\ud800"
REPLACEMENT = "\ufffd"  # what a client that replaces a bad character shows instead
DEPTH = 200_000
SMALL_DEPTH = 30_000  # for a transport whose messages are at most 64 KiB: still past any recursion limit
ABSURD = 1e300
NEGATIVE = -5
BIGINT = 10 ** 400 - 1  # 400 nines
_MARK = "@@hostile-bytes@@"

Path = Sequence[str | int]


@dataclass(frozen=True)
class Spots:
    """Where the poisons go in one document: a string shown to users (a label or info value),
    two energy counters, and a gauge."""

    text: Path
    counter: Path
    other_counter: Path
    gauge: Path


def dumps(document: Any) -> bytes:
    """JSON as a careless encoder writes it: ASCII escapes (so a lone surrogate is written as
    `\\ud800`), and `NaN`/`Infinity` for floats that are not finite."""
    return json.dumps(document, allow_nan=True, separators=(",", ":")).encode("ascii")


def _set(document: Any, path: Path, value: Any) -> None:
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _get(document: Any, path: Path) -> Any:
    node = document
    for key in path:
        node = node[key]
    return node


def poisoned(document: Any, poison: str, spots: Spots, depth: int = DEPTH) -> bytes:
    """`document` (left untouched) with `poison` at its spot, as the bytes a device would send
    (`depth`: how deep the `deep` poison nests)."""
    doc = copy.deepcopy(document)
    if poison == "invalid_utf8":
        _set(doc, spots.text, f"{_get(doc, spots.text)}{_MARK}")
        return dumps(doc).replace(_MARK.encode(), INVALID_UTF8)
    if poison == "surrogate":
        _set(doc, spots.text, f"{_get(doc, spots.text)}{SURROGATE}")
        return dumps(doc)
    if poison == "absurd":
        _set(doc, spots.counter, ABSURD)
        return dumps(doc)
    if poison == "negative":
        _set(doc, spots.other_counter, NEGATIVE)
        return dumps(doc)
    if poison == "nan":
        _set(doc, spots.gauge, float("nan"))
        _set(doc, spots.counter, float("inf"))
        return dumps(doc)
    if poison == "bigint":
        _set(doc, spots.gauge, BIGINT)
        return dumps(doc)
    if poison == "deep":
        return deep(doc, depth)
    raise ValueError(f"unknown poison {poison!r}")


def deep(document: dict | list, depth: int = DEPTH) -> bytes:
    """The document with lists nested `depth` deep in front (well-formed): an extra first field
    of an object, an extra first item of a list."""
    text = dumps(document)
    nested = b"[" * depth + b"]" * depth
    if text.startswith(b"["):
        return b"[" + nested + (b"" if text == b"[]" else b"," + text[1:])
    rest = text[1:] if text == b"{}" else b"," + text[1:]
    return b'{"nested":' + nested + rest


# --- HTTP/1.1 -------------------------------------------------------------------------------

HTTP_MODES = ("chunk:-6", "chunk:+6", "status_line", "content_length:conflict", "endless:chunked")


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The status line and the header fields of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name.strip(), value.strip()))
    return lines[0], fields


def http_response(mode: str, status_line: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The answer (`status_line`, `fields`, `body`) re-framed the way `mode` breaks it (except
    `endless:chunked`, which the proxy streams itself with `endless_head`)."""
    kept = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding", b"connection")]
    if mode == "chunk:-6":
        # A negative size right after the head: a parser taking `int(size, 16)` goes backwards.
        return _head(status_line, kept + [(b"Transfer-Encoding", b"chunked")]) + \
            b"-6\r\n" + _chunked(body)
    if mode == "chunk:+6":
        # A sign before the size: the right length, but not a chunk-size (RFC 9112 7.1).
        return _head(status_line, kept + [(b"Transfer-Encoding", b"chunked")]) + \
            b"+" + f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    if mode == "status_line":
        # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no.
        version, _, rest = status_line.partition(b" ")
        return _head(version + b" \xb2" + rest[1:], kept + [(b"Content-Length", str(len(body)).encode())]) + body
    if mode == "content_length:conflict":
        # Two lengths that disagree: the message has no trustworthy length (RFC 9112 6.3).
        length = str(len(body)).encode()
        return _head(status_line, kept + [(b"Content-Length", length),
                                          (b"Content-Length", str(len(body) + 10).encode())]) + body
    raise ValueError(f"not a one-shot HTTP mode: {mode}")


def endless_head(status_line: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The head of a chunked answer whose body starts like the real one and never ends."""
    kept = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding", b"connection")]
    return _head(status_line, kept + [(b"Transfer-Encoding", b"chunked")]) + _chunk(body[: len(body) // 2])


def endless_chunk(size: int = 65536) -> bytes:
    """One chunk of JSON whitespace: the document never comes to its end."""
    return _chunk(b" " * size)


def _head(status_line: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    return status_line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n" if data else b""


def _chunked(body: bytes) -> bytes:
    return _chunk(body) + b"0\r\n\r\n"


# --- Modbus/TCP -----------------------------------------------------------------------------

MODBUS_MODES = ("mbap:length", "mbap:transaction", "mbap:truncated_pdu", "mbap:endless")


def modbus_frame(mode: str, frame: bytes) -> bytes:
    """One Modbus/TCP answer (MBAP header + PDU) broken the way `mode` says."""
    tid, pid, length = frame[0:2], frame[2:4], int.from_bytes(frame[4:6], "big")
    unit_and_pdu = frame[6:]
    if mode == "mbap:length":
        # The header claims 3 bytes (unit, function, byte count) where the PDU has more: the
        # registers that follow look like the start of the next frame.
        return tid + pid + (3).to_bytes(2, "big") + unit_and_pdu
    if mode == "mbap:transaction":
        # The answer to some other request.
        other = (int.from_bytes(tid, "big") ^ 0x5A5A).to_bytes(2, "big")
        return other + pid + length.to_bytes(2, "big") + unit_and_pdu
    if mode == "mbap:truncated_pdu":
        # A consistent header around a PDU whose byte count promises more registers than follow.
        pdu = unit_and_pdu[:3] + unit_and_pdu[3:3 + 10]
        return tid + pid + len(pdu).to_bytes(2, "big") + pdu
    raise ValueError(f"not a one-shot Modbus mode: {mode}")


def modbus_garbage(size: int = 65536) -> bytes:
    """Bytes that never make a frame a client is waiting for: headers of other transactions
    claiming the longest length, over and over."""
    frame = b"\xbe\xef\x00\x00\xff\xff" + b"\x01\x03" + b"\xff" * 250
    return (frame * (size // len(frame) + 1))[:size]


# --- MQTT 3.1.1 -----------------------------------------------------------------------------

MQTT_MODES = ("mqtt:garbage_frame", "mqtt:topic_utf8", "mqtt:endless")


def mqtt_remaining_length(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mqtt_publish(topic: bytes, rest: bytes, first: int = 0x30) -> bytes:
    """A PUBLISH packet (`first`: its type and flags byte, QoS 0 by default) with the topic's
    bytes as given (valid UTF-8 or not); `rest` is the packet id, if any, and the payload."""
    body = len(topic).to_bytes(2, "big") + topic + rest
    return bytes([first]) + mqtt_remaining_length(len(body)) + body


# A PUBLISH whose remaining length never ends (five continuation bytes: the spec allows four).
MQTT_GARBAGE_FRAME = b"\x30\xff\xff\xff\xff\x7f" + b"garbage"
# A PUBLISH that announces the largest remaining length MQTT allows (256 MB).
MQTT_ENDLESS_HEAD = b"\x30\xff\xff\xff\x7f"


# --- WebSocket (RFC 6455), server to client -------------------------------------------------

WS_MODES = ("invalid_utf8_frame", "reserved_bits", "endless_frame")


def ws_frame(mode: str, payload: bytes) -> bytes:
    """A server-to-client frame broken the way `mode` says."""
    if mode == "invalid_utf8_frame":  # a text frame whose payload is not UTF-8
        data = payload[:40] + INVALID_UTF8 + payload[40:]
        return b"\x81" + _ws_length(len(data)) + data
    if mode == "reserved_bits":  # RSV1-3 set without an extension that defines them
        return b"\xf1" + _ws_length(len(payload)) + payload
    if mode == "endless_frame":  # a text frame announcing 2**62 bytes
        return b"\x81\x7f" + (1 << 62).to_bytes(8, "big")
    raise ValueError(f"unknown WebSocket mode {mode!r}")


def _ws_length(size: int) -> bytes:
    if size < 126:
        return bytes([size])
    if size < 65536:
        return b"\x7e" + size.to_bytes(2, "big")
    return b"\x7f" + size.to_bytes(8, "big")
