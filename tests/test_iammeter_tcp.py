"""IAMMETER meters in TCP upload mode: the shared TCP/TLS listeners on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config.loader import TargetConfig
from exporter.daemon import Daemon
from exporter.model import catalogue as M
from exporter.transport.tcp_push import JsonStream, StreamError
from exporter.vendors.iammeter import tcp as iam_tcp
from simulators.iammeter_tcp import TcpMeter
from simulators.tls import new_authority

from .configs import load_config
from .push_targets import PushTargets
from .conftest import async_wait_until, exposition_text, free_port, sample_value

KWH = 3.6e6
SN = "3E0BAF87"
OTHER_SN = "5DB50BF4"


def target(sn: str = SN, name: str = "meter", stale_after: float = 60.0) -> TargetConfig:
    return TargetConfig(name=name, vendor="iammeter", transport="tcp", interval=2.0, timeout=2.0,
                        max_backoff=60.0, stale_after=stale_after, jitter=0.0, options={"sn": sn})


class Exporter(PushTargets):
    """TCP targets run by the scheduler's push loop into a store, as the daemon wires them."""

    def __init__(self, tmp_path, section: dict) -> None:
        super().__init__(tmp_path, "tcp_push", section, iam_tcp.SPEC)


@contextlib.asynccontextmanager
async def exporter(tmp_path, **section):
    e = Exporter(tmp_path, section)
    try:
        yield e
    finally:
        await e.close()


@contextlib.asynccontextmanager
async def meter_running(meter: TcpMeter):
    await meter.start()
    try:
        yield meter
    finally:
        await meter.stop()


async def raw_connection(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionError:
        return True


# --- framing ------------------------------------------------------------------------------------------


DOCS = [b'{"SN":"A","s":"a } ] \\" { [ \\\\","Datas":[[1,2],[3]]}', b'[1,{"x":"\\u007d"}]', b'{"n":{}}']


@pytest.mark.parametrize("separator", [b"", b"\n", b" \r\n\t"])
def test_documents_back_to_back_are_split_wherever_the_chunks_end(separator):
    stream = separator.join(DOCS) + separator
    for cut in range(1, len(stream)):  # every place a TCP segment may end, even inside an escape
        decoder = JsonStream(1024)
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == DOCS, cut
        assert decoder.pending == b""
    decoder = JsonStream(1024)
    assert [d for byte in stream for d in decoder.feed(bytes([byte]))] == DOCS


def test_a_document_over_the_limit_is_refused_before_it_is_held():
    decoder = JsonStream(300)
    assert decoder.feed(b'{"a":"' + b"x" * 250) == []
    with pytest.raises(StreamError) as info:
        decoder.feed(b"x" * 100)
    assert info.value.reason == "too_large" and len(decoder.pending) <= 300
    with pytest.raises(StreamError) as info:
        JsonStream(300).feed(b'{"a":"' + b"x" * 400 + b'"}')
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("data", [b"hello", b'{"a":1} x', b"42", b'"text"'])
def test_bytes_that_cannot_begin_a_document_lose_the_framing(data):
    with pytest.raises(StreamError) as info:
        JsonStream(1024).feed(data)
    assert info.value.reason == "malformed"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=12)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(documents=st.lists(st.dictionaries(st.text(), _JSON, max_size=4) | st.lists(_JSON, max_size=4), max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6), blanks=st.sampled_from(["", "\n", " "]))
def test_any_documents_back_to_back_come_out_whole_however_they_are_cut(documents, cuts, blanks):
    stream = "".join(json.dumps(d, ensure_ascii=blanks != "") + blanks for d in documents).encode()
    decoder, out, last = JsonStream(1 << 20), [], 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts) + [len(stream)]:
        out += decoder.feed(stream[last:cut])
        last = cut
    assert [json.loads(d) for d in out] == documents and decoder.pending == b""


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6))
def test_any_bytes_give_documents_or_a_stream_error_and_stay_bounded(data, cuts):
    decoder, last = JsonStream(256), 0
    try:
        for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
            for document in decoder.feed(data[last:cut]):
                assert len(document) <= 256 and document[:1] in (b"{", b"[")
            assert len(decoder.pending) <= 256
            last = cut
    except StreamError as exc:
        assert exc.reason in ("too_large", "malformed")


# --- the listener on real sockets -------------------------------------------------------------------


@pytest.mark.parametrize("keep", [True, False], ids=["kept_connection", "connection_per_upload"])
async def test_a_meter_uploading_over_tcp_is_exported(tmp_path, conformance, keep):
    port = free_port()
    meter = TcpMeter("WEM3080T", port=port, interval=0.1, keep=keep, conformance=conformance)
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        async with meter_running(meter):
            await async_wait_until(lambda: e.listener.accepted >= 4, what="four uploads")
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l3") == 263.5
        assert e.value(M.PHASE_ENERGY_EXPORTED.name, device="meter", phase="l1") == pytest.approx(11.201 * KWH)
        assert e.value(M.DEVICE_INFO.name, device="meter", serial=SN, model="WEM3080T") == 1
        assert e.value(M.TARGET_UP.name, device="meter") == 1
        assert e.rejected("malformed") == 0 and e.rejected("unknown_sn") == 0
        assert (meter.connections == 1) == keep and meter.errors == 0


async def test_one_listener_for_all_tcp_targets_and_unknown_sns_counted(tmp_path):
    port = free_port()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}") as e:
        a = await e.add(target(SN, "three-phase"))
        b = await e.add(target(OTHER_SN, "single-phase"))
        assert a.adapter.listener is b.adapter.listener
        first = TcpMeter("WEM3080T", port=port)
        second = TcpMeter("WEM3080", port=port, serial=OTHER_SN.lower())  # the SN's case does not matter
        stranger = TcpMeter("WEM3080", port=port, serial="ABCDEF01")
        for m in (first, second, stranger, stranger):
            await m.send_once()
        await async_wait_until(lambda: e.rejected("unknown_sn") == 2, what="the stranger's uploads counted")
        assert e.value(M.ACTIVE_POWER.name, device="single-phase") == 152.0
        assert e.value(M.PHASE_ACTIVE_POWER.name, device="three-phase", phase="l3") == 1213
        await a.stop()
        await b.stop()
        with pytest.raises(OSError):
            await TcpMeter("WEM3080T", port=port).send_once()  # the last target closed the listener


async def test_tls_upload_with_client_certificates(tmp_path):
    authority = new_authority("Upload CA", "tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    authority.issue("meter", name="client")
    stranger = new_authority("Other CA", "someone else", tmp_path / "other")
    stranger.issue("intruder", name="client")
    plain, tls = free_port(), free_port()
    good = (authority.directory / "client.pem", authority.directory / "client.key")
    async with exporter(tmp_path, listen=f"127.0.0.1:{plain}", tls_listen=f"127.0.0.1:{tls}",
                        tls_cert_file=str(authority.directory / "server.pem"),
                        tls_key_file=str(authority.directory / "server.key"),
                        tls_client_ca_file=str(authority.ca_file)) as e:
        await e.add(target())
        meter = TcpMeter("WEM3080T", port=tls, tls=True, ca_file=authority.ca_file, client_cert=good, interval=0.1)
        assert meter.address == f"tls://127.0.0.1:{tls}"
        async with meter_running(meter):
            await async_wait_until(lambda: e.listener.accepted >= 3, what="uploads over TLS")
        assert meter.connections == 1 and e.value(M.TARGET_UP.name, device="meter") == 1
        accepted = e.listener.accepted
        # no client certificate, one of another CA, plain TCP to the TLS port: refused in the handshake
        other = (stranger.directory / "client.pem", stranger.directory / "client.key")
        for cert, fault in [(None, None), (other, None), (good, "no_tls")]:
            refused = TcpMeter("WEM3080T", port=tls, tls=True, ca_file=authority.ca_file, client_cert=cert)
            refused.fault = fault
            with contextlib.suppress(OSError, ssl.SSLError):
                await refused.send_once()
                await asyncio.sleep(0.2)
                await refused.send_once()  # (TLS 1.3: the refusal of a client certificate comes after the write)
            await refused.stop()
        await async_wait_until(lambda: e.rejected("tls") == 3, what="three refused handshakes")
        await TcpMeter("WEM3080T", port=plain).send_once()  # the plain listener beside it
        await async_wait_until(lambda: e.listener.accepted == accepted + 1, what="the plain upload")


async def test_an_oversized_upload_drops_the_connection_and_fails_its_target(tmp_path):
    port = free_port()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}", max_message_bytes=65536) as e:
        await e.add(target())
        meter = TcpMeter("WEM3080T", port=port)
        await meter.send_once()
        await async_wait_until(lambda: e.state().up, what="the first upload")
        reader, writer = await raw_connection(port)
        meter.fault = "huge"  # 70 kB, the SN near its start
        writer.write(meter.body())
        assert await closed_by_peer(reader)
        writer.close()
        await async_wait_until(lambda: e.rejected("too_large") == 1, what="the refusal counted")
        assert e.state().last_reason == "too_large" and not e.state().up
        assert e.value(M.PHASE_VOLTAGE.name, device="meter", phase="l1") == 220.0  # the last good value


async def test_a_dripping_upload_is_cut_off_after_read_timeout(tmp_path):
    port = free_port()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}", read_timeout=0.5) as e:
        await e.add(target())
        reader, writer = await raw_connection(port)
        body = TcpMeter("WEM3080T", port=port).body()
        writer.write(body[:body.index(b"Datas")])  # the SN, and then nothing for longer than read_timeout
        assert await closed_by_peer(reader)
        await async_wait_until(lambda: e.rejected("timeout") == 1, what="the slow upload counted")
        assert e.state().last_reason == "timeout" and e.state().polls == 1
        # a meter that keeps its connection quiet between whole uploads is not cut off
        reader, writer = await raw_connection(port)
        for _ in range(3):
            writer.write(body)
            await writer.drain()
            await asyncio.sleep(0.4)
        await async_wait_until(lambda: e.listener.accepted == 3, what="three uploads")
        assert not reader.at_eof() and e.rejected("timeout") == 1
        writer.close()


@pytest.mark.parametrize("bad, reason", [
    (b'{"SN":"3E0BAF87","Datas":[[220.0,9.9', "parse"),  # cut off: the connection closes mid-document
    (b'{"SN":"3E0BAF87","Datas":[["230,1"]]}', "parse"),  # whole, but not a measurement
    (b'{"SN":"3E0BAF87","Datas":[[NaN]]}', "parse"),  # whole, but not JSON this exporter accepts
])
async def test_a_broken_upload_fails_its_target_and_is_counted(tmp_path, bad, reason):
    port = free_port()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        await e.add(target(OTHER_SN, "other"))
        reader, writer = await raw_connection(port)
        writer.write(bad)
        await writer.drain()
        writer.close()
        await async_wait_until(lambda: e.rejected("malformed") == 1, what="the refusal counted")
        await async_wait_until(lambda: e.state().last_reason == reason, what="the target failed")
        assert e.state("other").last_reason is None


async def test_garbage_between_documents_drops_the_connection(tmp_path):
    port = free_port()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target())
        body = TcpMeter("WEM3080T", port=port).body()
        reader, writer = await raw_connection(port)
        writer.write(body + b"\nGET / HTTP/1.1\r\n\r\n" + body)
        assert await closed_by_peer(reader)
        await async_wait_until(lambda: e.rejected("malformed") == 1, what="the refusal counted")
        assert e.listener.accepted == 1  # the document before the garbage; nothing after it


async def test_networks_rate_and_connection_limits(tmp_path):
    port = free_port()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}", max_messages_per_minute=3, max_connections=4) as e:
        await e.add(target())
        reader, writer = await raw_connection(port)
        body = TcpMeter("WEM3080T", port=port).body()
        writer.write(body * 5)  # five documents at once: the fourth is over the rate
        assert await closed_by_peer(reader)
        assert e.listener.accepted == 3 and e.rejected("rate_limited") == 1
        # connections that send nothing: at the limit the quietest is closed to make room
        idle = [await raw_connection(port) for _ in range(4)]
        await asyncio.sleep(0.1)
        newest = await raw_connection(port)
        assert await closed_by_peer(idle[0][0])
        await async_wait_until(lambda: e.rejected("over_limit") == 1, what="the eviction counted")
        assert not newest[0].at_eof()
        for _, w in idle + [newest]:
            w.close()
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}", allowed_networks=("10.0.0.0/8",)) as e:
        await e.add(target())
        reader, writer = await raw_connection(port)
        assert await closed_by_peer(reader)
        await async_wait_until(lambda: e.rejected("forbidden_network") == 1, what="the refusal counted")
        writer.close()


async def test_a_silent_meter_goes_stale_and_comes_back(tmp_path):
    port = free_port()
    meter = TcpMeter("WEM3080T", port=port, interval=0.1)
    async with exporter(tmp_path, listen=f"127.0.0.1:{port}") as e:
        await e.add(target(stale_after=0.6))
        async with meter_running(meter):
            await async_wait_until(lambda: e.state().up, what="uploads")
        await async_wait_until(lambda: e.state().last_reason == "stale", what="the silence noticed")
        assert e.value(M.TARGET_UP.name, device="meter") == 0
        async with meter_running(meter):
            await async_wait_until(lambda: e.state().up, what="uploads again")


async def test_a_port_in_use_is_a_target_error_not_a_crash(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with exporter(tmp_path, listen=f"127.0.0.1:{port}") as e:
            await e.add(target(), wait=False)
            await async_wait_until(lambda: e.state().last_reason == "config", what="reason config")
            assert f"cannot listen on 127.0.0.1:{port}" in e.state().last_error


# --- configuration and the daemon -----------------------------------------------------------------


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path




async def test_the_daemon_exports_meters_uploading_over_tcp_and_tls(tmp_path, conformance):
    authority = new_authority("Upload CA", "tests", tmp_path / "pki")
    authority.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",), name="server")
    plain, tls = free_port(), free_port()
    config = write(tmp_path / "exporter.yaml", f"""\
        state_directory: state
        tcp_push:
          listen: 127.0.0.1:{plain}
          tls_listen: 127.0.0.1:{tls}
          tls_cert_file: {authority.directory / 'server.pem'}
          tls_key_file: {authority.directory / 'server.key'}
        targets:
          - {{name: house, vendor: iammeter, transport: tcp, sn: {SN}, interval: 2s}}
          - {{name: garage, vendor: iammeter, transport: tcp, sn: {OTHER_SN}, interval: 2s}}
    """)
    daemon = Daemon(load_config(config))
    house = TcpMeter("WEM3080T", port=plain, interval=0.2, conformance=conformance)
    garage = TcpMeter("WEM3080", port=tls, tls=True, ca_file=authority.ca_file, serial=OTHER_SN, interval=0.2)
    await daemon.start("127.0.0.1", 0)
    try:
        async with meter_running(house), meter_running(garage):
            await async_wait_until(lambda: daemon.store.targets["house"].up and daemon.store.targets["garage"].up,
                                   what="both meters read")
        body = exposition_text(daemon.store)
        assert sample_value(body, M.PHASE_CURRENT.name, device="house", phase="l1", vendor="iammeter") == 9.99
        assert sample_value(body, M.ACTIVE_POWER.name, device="garage") == 152.0
        assert sample_value(body, M.PUSH_REJECTED.name, listener="tcp_push", reason="tls") == 0
        assert json.loads(json.dumps(daemon.view().status().as_json()))  # the status document renders
    finally:
        await daemon.stop()
