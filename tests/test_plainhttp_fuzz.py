"""The lean HTTP client's response parsing fed arbitrary bytes in arbitrary pieces: every answer
ends as a Response within the body limit or as a PollError, never another exception, never a
wait for bytes after the device has closed the connection."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model.errors import PollError
from exporter.transport.http import Response
from exporter.transport.plainhttp import _Protocol

MAX_BYTES = 4096


class FakeTransport:
    """What the protocol needs of a transport: it aborts a broken connection."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def answer(loop: asyncio.AbstractEventLoop, pieces: list[bytes], close: bool) -> tuple[object, FakeTransport]:
    """Feed `pieces` as they would arrive, then (if `close`) the device's hang-up."""
    protocol = _Protocol(MAX_BYTES)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    waiter = loop.create_future()
    protocol.begin(waiter, "http://device/api/v1/data", retry=False)
    for piece in pieces:
        protocol.data_received(piece)
    if close:
        protocol.eof_received()
        protocol.connection_lost(None)
    if not waiter.done():
        assert not close, "the device hung up and the answer is still awaited"
        return None, transport
    exc = waiter.exception()
    return (exc if exc is not None else waiter.result()), transport


def check(outcome: object, transport: FakeTransport) -> None:
    if isinstance(outcome, PollError):
        assert outcome.reason in ("parse", "too_large", "connection"), outcome.reason
        assert outcome.message.startswith("http://device/api/v1/data: ")
        if outcome.reason != "connection":
            assert transport.aborted  # a broken answer's connection is never reused
        return
    assert outcome is None or isinstance(outcome, Response), repr(outcome)
    if isinstance(outcome, Response):
        assert len(outcome.body) <= MAX_BYTES
        assert 100 <= outcome.status <= 999


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)]) if b > a]


# Pieces of real answers, so the fuzzer also reaches the states past a valid status line.
TOKENS = [
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.1 101 Switching\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Upgrade: x\r\n", b"\r\n", b"\n", b"\r", b"0", b"5", b"-6",
    b"+6", b" 6", b"6_0", b"0x6", b"ffffffffffffffffffff", b"fff", b";ext=1", b"hello", b"{\"a\": 1}", b":", b" ", b"\x00",
    b"\xff", b"\xed\xa0\x80", b"X" * 5000,
]

answers = st.one_of(
    st.binary(max_size=600),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)), max_size=40).map(b"".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=answers, cuts=st.lists(st.integers(min_value=0), max_size=12), close=st.booleans())
def test_any_bytes_in_any_pieces_end_as_a_response_or_a_poll_error(loop, data, cuts, close):
    outcome, transport = answer(loop, split(data, cuts), close)
    check(outcome, transport)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.one_of(st.integers(0, 70), st.sampled_from([
    "-6", "+6", " 6", "6 ", "6_0", "0x6", "1" * 30, "ffffffffffffffffffff", "6;x", "6 ;x", "G"])), max_size=30),
    cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunk_framing_ends_as_the_body_or_a_poll_error(loop, sizes, cuts):
    wire = bytearray(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = bytearray()
    valid = True
    for size in sizes:
        if isinstance(size, int) and size:
            wire += f"{size:x}\r\n".encode() + b"y" * size + b"\r\n"
            body += b"y" * size
        elif isinstance(size, str):
            wire += size.encode() + b"\r\n" + b"y" * 6 + b"\r\n"
            valid = valid and size == "6;x"
            body += b"y" * 6
    wire += b"0\r\n\r\n"
    outcome, transport = answer(loop, split(bytes(wire), cuts), close=True)
    check(outcome, transport)
    if valid:
        assert isinstance(outcome, Response) and outcome.body == bytes(body)
    else:
        assert isinstance(outcome, PollError) and outcome.reason == "parse"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=50),
       framing=st.sampled_from(["length", "chunked", "close"]))
def test_a_valid_answer_in_any_pieces_gives_its_body(loop, body, cuts, framing):
    if framing == "length":
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (
            b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        wire = b"HTTP/1.0 200 OK\r\n\r\n" + body
    outcome, _ = answer(loop, split(wire, cuts), close=framing == "close")
    assert isinstance(outcome, Response) and outcome.status == 200 and outcome.body == body
