"""The hostile peers of the fault matrix send what they claim: checked on real sockets with raw
clients, so that a matrix row that passes means the exporter met the fault, not a simulator
that quietly answered something else."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest

from simulators import hostile
from simulators.faultproxy import FaultProxy, _with_bad_topic
from simulators.homewizard import POISON_SPOTS, HomeWizardSimulator

GET = b"GET /api/v1/data HTTP/1.1\r\nHost: device\r\n\r\n"


async def _answer(port: int, request: bytes = GET, context: ssl.SSLContext | None = None, limit: int = 4096) -> bytes:
    """The first `limit` bytes (or fewer, after a pause) of the answer to one raw request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname="127.0.0.1" if context else None)
    try:
        writer.write(request)
        data = b""
        while len(data) < limit:
            try:
                chunk = await asyncio.wait_for(reader.read(limit - len(data)), 0.2)
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


@pytest.fixture
async def device():
    device = await HomeWizardSimulator("HWE-P1").start()
    yield device
    await device.stop()


@pytest.mark.parametrize("mode,expected", [
    ("chunk:-6", b"\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\n"),
    ("chunk:+6", b"\r\nTransfer-Encoding: chunked\r\n\r\n+"),
    ("status_line", b"HTTP/1.1 \xb200 OK\r\n"),
])
async def test_http_framing_modes_send_the_broken_framing(device, mode, expected):
    proxy = await FaultProxy("127.0.0.1", device.http_port).start()
    try:
        await proxy.set_mode(mode)
        answer = await _answer(proxy.port)
        assert expected in answer, answer[:200]
        assert b'"total_power_import_kwh"' in answer  # the device's own body, re-framed
    finally:
        await proxy.stop()


async def test_conflicting_lengths_and_an_endless_body(device):
    proxy = await FaultProxy("127.0.0.1", device.http_port, endless_cap=1 << 20).start()
    try:
        await proxy.set_mode("content_length:conflict")
        head = (await _answer(proxy.port)).split(b"\r\n\r\n")[0]
        lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        assert len(lengths) == 2 and lengths[0] != lengths[1], head
        await proxy.set_mode("endless:chunked")
        answer = await _answer(proxy.port, limit=2 << 20)
        assert len(answer) > 1 << 20 and b"\r\n0\r\n" not in answer  # past the cap, never a last chunk
        assert proxy.endless_full == 1
    finally:
        await proxy.stop()


async def test_the_proxy_ends_tls_with_the_devices_certificate(device):
    """In front of an HTTPS device the hostile modes speak TLS with a certificate the client
    trusts, so the broken framing reaches the client's HTTP parser, not its TLS layer."""
    upstream = ssl.create_default_context()
    upstream.check_hostname, upstream.verify_mode = False, ssl.CERT_NONE
    proxy = await FaultProxy("127.0.0.1", device.https_port, upstream_tls=upstream,
                             tls=device.authority.issue(device.cert_name, name="proxy")).start()
    try:
        await proxy.set_mode("chunk:-6")
        client = ssl.create_default_context(cafile=str(device.ca_file))
        client.check_hostname = False  # (the name is the device's, checked by the exporter)
        answer = await _answer(proxy.port, b"GET /api HTTP/1.1\r\nHost: device\r\n\r\n", client)
        assert b"\r\n\r\n-6\r\n" in answer and b'"serial"' in answer, answer[:200]
    finally:
        await proxy.stop()


@pytest.mark.parametrize("poison", hostile.BODY_POISONS)
async def test_poisoned_bodies_keep_the_devices_shape(device, poison):
    device.broken = poison
    body = (await _answer(device.http_port, limit=1 << 20)).split(b"\r\n\r\n", 1)[1]
    if poison == "invalid_utf8":
        with pytest.raises(UnicodeDecodeError):
            body.decode("utf-8")
        return
    if poison == "deep":
        assert body.startswith(b'{"nested":' + b"[" * 1000)
        return
    if poison == "nan":
        assert b"NaN" in body and b"Infinity" in body
        return
    document = json.loads(body)
    assert document["wifi_ssid"] == "My Wi-Fi"  # the rest is the captured body
    if poison == "surrogate":
        assert b'\\ud800"' in body
        assert document["external"][1]["unique_id"].endswith(hostile.SURROGATE)
    elif poison == "absurd":
        assert document[POISON_SPOTS[False].counter[0]] == 1e300
    elif poison == "negative":
        assert document[POISON_SPOTS[False].other_counter[0]] == -5
    elif poison == "bigint":
        assert len(str(document[POISON_SPOTS[False].gauge[0]])) == 400


def test_modbus_frames_lie_the_way_they_say():
    frame = bytes.fromhex("0007 0000 0009 01 03 06 000a 000b 000c".replace(" ", ""))
    short = hostile.modbus_frame("mbap:length", frame)
    assert int.from_bytes(short[4:6], "big") == 3 and short[6:] == frame[6:]
    other = hostile.modbus_frame("mbap:transaction", frame)
    assert other[:2] != frame[:2] and other[2:] == frame[2:]
    truncated = hostile.modbus_frame("mbap:truncated_pdu", bytes.fromhex("0007000000850103" + "84" + "00" * 132))
    assert int.from_bytes(truncated[4:6], "big") == len(truncated) - 6 < 0x84  # consistent header, short PDU


def test_mqtt_publish_with_a_topic_that_is_not_utf8():
    packet = hostile.mqtt_publish(b"device/3E0BAF87/realtime", b'{"SN":"3E0BAF87"}')
    broken = _with_bad_topic(packet)
    size = int.from_bytes(broken[2:4], "big")
    topic = broken[4:4 + size]
    assert topic.startswith(b"device/" + hostile.INVALID_UTF8) and broken.endswith(b'{"SN":"3E0BAF87"}')
    with pytest.raises(UnicodeDecodeError):
        topic.decode("utf-8")
    assert hostile.mqtt_remaining_length(268_435_455) == b"\xff\xff\xff\x7f"  # what mqtt:endless announces


def test_websocket_frames():
    assert hostile.ws_frame("endless_frame", b"") == b"\x81\x7f" + (1 << 62).to_bytes(8, "big")
    frame = hostile.ws_frame("invalid_utf8_frame", b"x" * 100)
    assert frame[0] == 0x81 and frame[1] == 104 and hostile.INVALID_UTF8 in frame
    assert hostile.ws_frame("reserved_bits", b"{}")[0] & 0x70 == 0x70
