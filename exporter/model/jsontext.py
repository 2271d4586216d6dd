"""JSON and text from devices and clouds, made safe before any parser sees them.

`loads` is the one JSON decoder of every vendor path (HTTP answers, pushed bodies, MQTT payloads,
event streams, token claims). Whatever the bytes, it returns a value or raises `JsonError` (a
`ParseError`, so the poll ends with reason `parse`) with a short message:

- invalid UTF-8, a document nested deeper than `MAX_DEPTH` (the standard decoder would recurse
  until RecursionError), `NaN`/`Infinity` literals and any other decoding failure are refused;
- a `\\ud800`-style escape of a lone UTF-16 surrogate decodes to a string that cannot be encoded
  as UTF-8 (a label or a log line with it breaks whatever writes it): such characters become
  U+FFFD. The document is only walked for that when the raw text holds such an escape, so the
  usual body costs one substring search.

`label_text` makes a device's string fit for a label value or an info field: no control
characters, no lone surrogates, at most `MAX_LABEL_CHARS` characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import safe_text
from .samples import ParseError

MAX_DEPTH = 64  # meters nest 4 to 6 deep; more is a fault (or an attack on the decoder's recursion)
MAX_LABEL_CHARS = 256

_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What a label value must not hold: C0 and C1 controls, line and paragraph separators, surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
REPLACEMENT = "\ufffd"


class JsonError(ParseError):
    """Bytes that are not one JSON document the exporter accepts."""


def _refuse_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a number")


# One decoder, built once: json.loads with options builds a new one on every call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def loads(data: bytes | bytearray | memoryview | str, what: str = "answer") -> Any:
    """The JSON value of `data`; JsonError (reason `parse`) for anything else."""
    if data.__class__ is bytes or isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)  # the same object for bytes
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError(f"{what} is not UTF-8 (invalid byte at offset {exc.start})") from None
        # find() of one byte is a memchr: most bodies hold no backslash at all
        suspect = raw.find(b"\\") >= 0 and _SURROGATE_ESCAPE_BYTES.search(raw) is not None
        containers = raw.count(b"[") + raw.count(b"{")
    elif isinstance(data, str):
        text = data
        suspect = (text.find("\\") >= 0 and _SURROGATE_ESCAPE_TEXT.search(text) is not None) or (
            not text.isascii() and _SURROGATE.search(text) is not None)
        containers = text.count("[") + text.count("{")
    else:
        raise JsonError(f"{what}: expected bytes or text, got {type(data).__name__}")
    if text.startswith("\ufeff"):  # a byte order mark: tolerated, as json.loads does for bytes
        text = text[1:]
    try:
        value = _DECODER.decode(text)
    except JsonError as exc:
        raise JsonError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise JsonError(f"{what} is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer beyond the digit limit
        raise JsonError(f"{what} is not JSON ({_reason(exc)}): {_snippet(text)}") from None
    # The decoder recursed fine, but parsers and messages must not meet a document that deep
    # (str() or repr() of it recurses too); it can only be if there are that many brackets.
    if containers > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise JsonError(f"{what} is not JSON this exporter accepts: nested deeper than {MAX_DEPTH}")
    if suspect:
        value = _without_surrogates(value)
    return value


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)[:80]


def _snippet(text: str) -> str:
    return repr(label_text(text[:40]))


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _without_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate in its strings and keys replaced (lists and dicts are
    changed in place; walked without recursion)."""
    if isinstance(value, str):
        return safe_text(value)
    stack = [value] if isinstance(value, (dict, list)) else []
    while stack:
        container = stack.pop()
        if isinstance(container, list):
            for index, item in enumerate(container):
                if isinstance(item, str):
                    container[index] = safe_text(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
            continue
        if any(safe_text(key) is not key for key in container):
            items = [(safe_text(key), item) for key, item in container.items()]
            container.clear()
            container.update(items)
        for key, item in container.items():
            if isinstance(item, str):
                container[key] = safe_text(item)  # same key: the dict does not change size
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value


def label_text(value: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A device's string fit for a label value or info field: at most `limit` characters,
    control characters, line separators and lone surrogates replaced by U+FFFD."""
    if len(value) > limit:
        value = value[:limit]
    if value.isprintable():  # no control, separator or surrogate: the usual case, untouched
        return value
    return _UNSAFE.sub(REPLACEMENT, value)


def header_problem(value: str) -> str | None:
    """Why `value` cannot travel as an HTTP header value (a line break or control character
    would end the header or smuggle another), or None. Never quotes the value: it is a secret."""
    if not isinstance(value, str):
        return "it is not text"
    if value.isprintable() and value.isascii():
        return None
    if "\r" in value or "\n" in value:
        return "it holds a line break"
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7f for c in value):
        return "it holds a control character"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "it holds characters an HTTP header cannot carry"
    return None
