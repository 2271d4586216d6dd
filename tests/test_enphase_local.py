"""The Enphase transport against the gateway and Enlighten simulators, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from exporter.config.loader import Secret, TargetConfig
from exporter.model import catalogue as M
from exporter.model.errors import PollError
from exporter.runtime.context import AdapterContext
from exporter.runtime.logs import get as get_log
from exporter.runtime.state import StateDirectory
from exporter.vendors.enphase.local import SPEC, EnphaseLocal, check_target
from exporter.vendors.enphase.nightly import parse_window
from exporter.vendors.enphase.token import TokenFile
from exporter.vendors.enphase.settings import OPTIONS
from simulators.enphase import (DEFAULT_FIRMWARE, PACKAGED, EnlightenSimulator, GatewaySimulator, TokenIssuer,
                                firmware_folder, start_demo)

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "enphase"
USER, PASSWORD = "owner@example.com", "correct horse"


def needs(firmware: str) -> None:
    if not (CORPUS / firmware).is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS / firmware}")


class Clock:
    """Time for the adapter and the token issuer together, moved by the test."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def sims(clock):
    """A firmware 8.3 gateway and Enlighten, sharing one token issuer."""
    needs("8.3.5169_with_generator")
    issuer = TokenIssuer(clock=clock)
    gateway = await GatewaySimulator("8.3.5169_with_generator", issuer=issuer).start()
    enlighten = await EnlightenSimulator(issuer, {USER: PASSWORD}).start()
    yield gateway, enlighten
    await gateway.stop()
    await enlighten.stop()


def make(session, state_dir, clock, name="roof", timeout=5.0, **options) -> EnphaseLocal:
    options.setdefault("tls_verify", True)
    # The nightly window depends on the time of day; the tests of it set it themselves.
    options.setdefault("nightly_window", "off")
    target = TargetConfig(name=name, vendor="enphase", transport="local", interval=10, timeout=timeout,
                          max_backoff=60, stale_after=60, jitter=0, options=options)
    ctx = AdapterContext(session=session, state=StateDirectory(state_dir), log=get_log(), clock=clock)
    return EnphaseLocal(target, ctx)


def cloud(gateway, enlighten, **extra):
    return dict(host=gateway.host, username=USER, password=Secret(PASSWORD), enlighten_url=enlighten.url,
                token_url=enlighten.url, tls_fingerprint=gateway.fingerprint, **extra)


async def test_token_firmware_fetches_a_token_and_reads_cts_and_production(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    reading = await adapter.poll()
    assert enlighten.login_calls == 1
    assert reading.devices[0].serial == gateway.serial and reading.devices[0].firmware == "D8.3.5169"
    assert reading.value_of(M.ACTIVE_POWER) == 160.49  # the net-consumption CT
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="production") == 2891.863
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154  # /production.json?details=1
    assert reading.value_of(M.CONSUMPTION_ENERGY) == pytest.approx(27293408.638 * 3600)
    expiry = reading.value_of(M.TOKEN_EXPIRY)
    assert expiry == clock.now + 365 * 86400
    await adapter.close()


async def test_endpoints_poll_at_their_own_cadence(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    per_poll = []
    for _ in range(19):  # three minutes of 10 s polls
        before = len(gateway.requests)
        reading = await adapter.poll()
        per_poll.append(len(gateway.requests) - before)
        clock.advance(10)
    # Staggered: no poll reads more than the CT readings and two other endpoints (the first
    # poll also reads /info and the CT list).
    assert per_poll[0] == 4 and max(per_poll[1:]) <= 3
    assert gateway.count("/ivp/meters/readings") == 19
    assert gateway.count("/production.json") == 4  # 0, 60, 120, 180 s
    assert gateway.count("/api/v1/production/inverters") == 1  # every 5 minutes
    assert gateway.count("/ivp/ensemble/inventory") == 3  # 20, 80, 140 s
    assert gateway.count("/ivp/meters/gridReading") == 3  # 10, 70, 130 s
    assert gateway.count("/ivp/pdm/energy") == 3  # 40, 100, 160 s
    assert gateway.count("/ivp/meters/reports/consumption") == 3  # 50, 110, 170 s
    # Not on this firmware (404): asked once, then switched off.
    assert gateway.count("/ivp/livedata/status") == 1 and gateway.count("/ivp/ensemble/device_list") == 1
    # /info and the CT list once (hourly), and the CT list again as the CTs' status (ct_health, 90 s).
    assert gateway.count("/info") == 1 and gateway.count("/ivp/meters") == 2
    assert gateway.count("/api/v1/production") == 0  # only a fallback for /production.json
    # Cached results of the endpoints not read this time are still in every reading.
    assert reading.value_of(M.INVERTER_POWER, inverter="482208990017") == 142
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154
    assert reading.value_of(M.MICROINVERTERS_POWER) == 2680  # /production.json's inverters entry, not pdm's
    assert reading.value_of(M.MICROINVERTERS_ENERGY) == 11764258 * 3600
    # One source per metric: the net CT's channels, not /ivp/meters/gridReading's or the reports'.
    phases = {dict(s.labels)["phase"]: s.value for s in reading.samples if s.metric is M.PHASE_ACTIVE_POWER}
    assert phases == {"l1": -271.656, "l2": 432.145}
    names = [(s.metric.name, s.labels) for s in reading.samples]
    assert len(names) == len(set(names))


async def test_token_renewed_before_it_expires(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    enlighten.user_type, enlighten.token_lifetime = "installer", 12 * 3600
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    first = (await adapter.poll()).value_of(M.TOKEN_EXPIRY)
    clock.advance(10.5 * 3600)  # 1.5 h left: more than the 1 h margin of a 12 h token
    await adapter.poll()
    assert enlighten.login_calls == 1
    clock.advance(0.75 * 3600)  # 45 min left
    second = (await adapter.poll()).value_of(M.TOKEN_EXPIRY)
    assert enlighten.login_calls == 2
    assert second == pytest.approx(clock.now + 12 * 3600) and second > first
    stored = TokenFile(StateDirectory(tmp_path), "roof").load(gateway.serial)
    assert stored.expires_at == second


async def test_refused_token_is_renewed_once_and_the_poll_recovers(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await adapter.poll()
    gateway.expire_tokens()  # the gateway now answers 401 to the token the exporter holds
    clock.advance(10)
    reading = await adapter.poll()
    assert enlighten.login_calls == 2
    assert reading.value_of(M.ACTIVE_POWER) == 160.49
    clock.advance(10)
    await adapter.poll()
    assert enlighten.login_calls == 2


async def test_token_refused_after_renewal_fails_and_backs_off(clock, session, tmp_path):
    needs("8.3.5169_with_generator")
    # Enlighten signs tokens the gateway does not accept (say, for another gateway).
    gateway = await GatewaySimulator("8.3.5169_with_generator", issuer=TokenIssuer(clock=clock)).start()
    enlighten = await EnlightenSimulator(TokenIssuer(clock=clock), {USER: PASSWORD}).start()
    try:
        adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "unauthorized" and "refused the token" in str(err.value)
        assert enlighten.login_calls == 1
        assert gateway.count("/auth/check_jwt") == 1  # asked once whether the token is the problem
        for _ in range(5):
            clock.advance(10)
            with pytest.raises(PollError):
                await adapter.poll()
        assert enlighten.login_calls == 1  # it does not ask Enlighten again on every poll
        clock.advance(900)
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert enlighten.login_calls == 2  # renewed once after the back-off
        assert "even after fetching a new token" in str(err.value)
    finally:
        await gateway.stop()
        await enlighten.stop()


async def test_endpoint_refusing_the_account_is_switched_off_not_an_auth_failure(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    gateway.installer_only.add("/ivp/meters/gridReading")  # 401 to owner tokens
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    with capture_logs() as logs:
        for _ in range(30):  # five minutes
            reading = await adapter.poll()
            clock.advance(10)
    assert reading.value_of(M.ACTIVE_POWER) == 160.49
    assert gateway.count("/ivp/meters/gridReading") == 1  # switched off after the first 401
    assert enlighten.login_calls == 1  # the token was fine: no renewal
    assert gateway.count("/auth/check_jwt") == 0  # a 200 earlier in that poll showed the token works
    assert any("refuses it for this endpoint" in e["event"] for e in logs)
    clock.advance(3600)
    await adapter.poll()
    assert gateway.count("/ivp/meters/gridReading") == 2  # asked again an hour later


async def test_a_401_on_the_first_request_of_a_poll_asks_check_jwt(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    gateway.installer_only.add("/ivp/meters/readings")
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await adapter.poll()
    clock.advance(10)
    reading = await adapter.poll()  # readings off: the other endpoints' figures remain
    assert gateway.count("/ivp/meters/readings") == 1
    assert enlighten.login_calls == 1
    assert reading.value_of(M.CT_ACTIVE_POWER, meter="production") is None
    assert reading.value_of(M.ACTIVE_POWER) == 165.301  # now from /production.json


async def test_multi_factor_account_asks_for_a_pasted_token(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    enlighten.mfa = True
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "config"
    assert "multi-factor" in str(err.value) and "token" in str(err.value)
    # A pasted token works for the same account.
    pasted = make(session, tmp_path / "2", clock, host=gateway.host, token=Secret(gateway.mint_token()),
                  tls_fingerprint=gateway.fingerprint)
    assert (await pasted.poll()).value_of(M.ACTIVE_POWER) == 160.49


async def test_restart_reuses_the_stored_token(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    first = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await first.poll()
    await first.close()
    second = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    reading = await second.poll()
    assert enlighten.login_calls == 1
    assert reading.value_of(M.ACTIVE_POWER) == 160.49


async def test_pasted_token_without_credentials_expired(sims, session, tmp_path, clock):
    gateway, _ = sims
    token = gateway.mint_token(lifetime=3600)
    adapter = make(session, tmp_path, clock, host=gateway.host, token=Secret(token), tls_fingerprint=gateway.fingerprint)
    assert (await adapter.poll()).value_of(M.TOKEN_EXPIRY) == clock.now + 3600
    clock.advance(3601)
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "unauthorized"
    assert "expired" in str(err.value) and token not in str(err.value)


async def test_no_token_and_no_credentials_is_a_config_error(sims, session, tmp_path, clock):
    gateway, _ = sims
    adapter = make(session, tmp_path, clock, host=gateway.host, tls_fingerprint=gateway.fingerprint)
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "config"


async def test_tls_pin_refuses_another_certificate(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    wrong = "AB:" * 31 + "AB"
    adapter = make(session, tmp_path, clock, **{**cloud(gateway, enlighten), "tls_fingerprint": wrong})
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "tls"
    assert "does not match tls_fingerprint" in str(err.value)
    assert enlighten.login_calls == 0  # nothing was sent to an unverified peer


async def test_unpinned_self_signed_certificate_is_refused_with_its_fingerprint(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    options = {**cloud(gateway, enlighten)}
    del options["tls_fingerprint"]
    with pytest.raises(PollError) as err:
        await make(session, tmp_path, clock, **options).poll()
    assert err.value.reason == "tls"
    shown = ":".join(gateway.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    assert shown in str(err.value)
    # The fingerprint, pasted with colons, is accepted.
    pinned = make(session, tmp_path, clock, **{**options, "tls_fingerprint": shown})
    assert (await pinned.poll()).value_of(M.ACTIVE_POWER) == 160.49


async def test_tls_verify_false_works_and_is_logged(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    options = {**cloud(gateway, enlighten), "tls_verify": False}
    del options["tls_fingerprint"]
    with capture_logs() as logs:
        adapter = make(session, tmp_path, clock, **options)
    assert any("tls_verify: false" in entry["event"] for entry in logs)
    assert (await adapter.poll()).value_of(M.ACTIVE_POWER) == 160.49


async def test_endpoint_answering_404_is_switched_off_for_an_hour(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    gateway.force("/ivp/ensemble/inventory", 404)
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    for _ in range(30):  # five minutes
        await adapter.poll()
        clock.advance(10)
    assert gateway.count("/ivp/ensemble/inventory") == 1
    clock.advance(3600)
    await adapter.poll()
    assert gateway.count("/ivp/ensemble/inventory") == 2


async def test_server_error_of_a_secondary_endpoint_keeps_the_poll_without_hammering(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await adapter.poll()
    gateway.force("/production.json", 500)  # the CT readings are this gateway's primary figures
    clock.advance(60)
    reading = await adapter.poll()
    assert reading.value_of(M.ACTIVE_POWER) == 160.49
    assert reading.value_of(M.ENDPOINT_UP, endpoint="production_json") == 0
    assert reading.endpoints_down == {"production_json": "HTTP 500"}
    clock.advance(10)
    await adapter.poll()  # the failed endpoint waits for its next turn
    assert gateway.count("/production.json") == 2


async def test_server_error_of_the_primary_endpoint_fails_the_poll(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await adapter.poll()
    gateway.force("/ivp/meters/readings", 500)
    asked = len(gateway.requests)
    clock.advance(10)
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "http_error"
    # The other endpoints due are not asked in a poll that fails anyway.
    assert list(gateway.requests)[asked:] == ["/ivp/meters/readings"]


async def test_legacy_firmware_uses_digest(session, tmp_path, clock):
    needs("3.9.36")
    gateway = await GatewaySimulator("3.9.36").start()
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host)
        reading = await adapter.poll()
        # /production.json is a 404 page on 3.9: /api/v1/production takes over.
        assert reading.value_of(M.PRODUCTION_POWER) == 1271
        assert reading.value_of(M.TOKEN_EXPIRY) is None
        clock.advance(10)
        reading = await adapter.poll()  # the inverters are read on the second poll
        assert reading.value_of(M.INVERTER_POWER, inverter="121547058993") == 138
        # Challenge, then the answer with user envoy and the serial's last six digits.
        assert gateway.count("/api/v1/production/inverters") == 2
        assert not any(r.startswith("/auth") for r in gateway.requests)
        clock.advance(300)
        await adapter.poll()  # the nonce of that challenge is reused: no second challenge
        assert gateway.count("/api/v1/production/inverters") == 3
    finally:
        await gateway.stop()


async def test_legacy_firmware_with_wrong_digest_password(session, tmp_path, clock):
    """On 3.9 the production figures need no login; the microinverters do. A refusal there
    cannot be told from firmware that refuses the endpoint whatever the credentials: the
    endpoint is switched off, and the log line names the user and the options to check."""
    needs("3.9.36")
    gateway = await GatewaySimulator("3.9.36").start()
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host, digest_user="installer",
                       digest_password=Secret("wrong"))
        await adapter.poll()
        clock.advance(10)
        with capture_logs() as logs:
            reading = await adapter.poll()
        assert reading.value_of(M.PRODUCTION_POWER) == 1271
        assert reading.value_of(M.INVERTER_POWER, inverter="121547058993") is None
        refused = [e for e in logs if "refuses Digest user 'installer'" in e["event"]]
        assert refused and "digest_password" in refused[0]["event"]
        assert "wrong" not in json.dumps(logs, default=str)
        clock.advance(300)
        await adapter.poll()
        assert gateway.count("/api/v1/production/inverters") == 2  # switched off: not asked again
    finally:
        await gateway.stop()


class ChallengingGateway:
    """A firmware 5 gateway on a raw socket (so that it can send any header): `/info`, and a 401
    with the given `WWW-Authenticate` bytes for every other path. Records each request's path
    and Authorization header."""

    def __init__(self, challenge: bytes) -> None:
        self.challenge = challenge
        self.requests: list[tuple[str, str | None]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> "ChallengingGateway":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"\r\n\r\n" not in data and b"GET ".startswith(data[:4]):
            if not (chunk := await reader.read(4096)):
                break
            data += chunk
        if not data.startswith(b"GET ") or b"\r\n\r\n" not in data:  # a TLS handshake: speaks no TLS
            writer.close()
            return
        head = data.decode("latin-1").split("\r\n")
        path = head[0].split(" ")[1]
        auth = next((line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("authorization:")), None)
        self.requests.append((path, auth))
        if path == "/info":
            body = (b"<?xml version='1.0'?><envoy_info><device><sn>121426016034</sn><pn>800-00069-r05</pn>"
                    b"<software>R5.0.62</software></device></envoy_info>")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n")
        else:
            body = b"<html>401</html>"
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: " + self.challenge + b"\r\n")
        writer.write(b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("challenge", [
    b'Digest realm="enphaseenergy.com\x01X-Evil: 1", qop="auth", nonce="abc"',  # a control character
    b'Digest realm="enphaseenergy.com", qop="auth", nonce="ab\x7fc"',  # DEL
    b'Digest realm="enphaseenerg\xe9.com", qop="auth", nonce="abc"',  # a byte that is no UTF-8
    b'Digest realm="enphaseenergy.com", qop="auth"',  # no nonce
    b'Digest realm="enphaseenergy.com", qop="auth", nonce="abc", algorithm=ROT13',
    b'Digest realm="enphaseenergy.com", qop="auth-conf", nonce="abc"',
], ids=["control", "del", "not-utf8", "no-nonce", "algorithm", "qop"])
async def test_a_digest_challenge_that_cannot_be_answered_is_a_refusal(challenge, session, tmp_path, clock):
    """Nothing of such a challenge is echoed into a request: the 401 stands as the gateway's refusal."""
    gateway = await ChallengingGateway(challenge).start()
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host)
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "unauthorized" and "refused Digest user 'envoy'" in str(err.value)
        # Each asked once, not answered: the CT list's refusal waits for the primary endpoint's
        # answer, which is a refusal too.
        assert gateway.requests == [("/info", None), ("/ivp/meters", None), ("/production.json?details=1", None)]
    finally:
        await gateway.stop()


async def test_a_digest_challenge_is_answered_once_per_request(session, tmp_path, clock):
    gateway = await ChallengingGateway(b'Digest realm="enphaseenergy.com", qop="auth", nonce="abc", '
                                       b'opaque="x\\"y"').start()
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host)
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "unauthorized"
        (_, first), (path, answer) = gateway.requests[1:3]
        assert first is None and path == "/ivp/meters"
        assert answer.startswith('Digest username="envoy", realm="enphaseenergy.com", nonce="abc", uri="/ivp/meters"')
        assert 'opaque="x\\"y"' in answer and "nc=00000001" in answer
    finally:
        await gateway.stop()


async def test_embedded_gateway_when_the_corpus_is_absent(session, tmp_path, clock):
    issuer = TokenIssuer(clock=clock)
    gateway = await GatewaySimulator("embedded", issuer=issuer).start()
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host, token=Secret(gateway.mint_token()),
                       tls_fingerprint=gateway.fingerprint)
        reading = await adapter.poll()
        assert reading.value_of(M.ACTIVE_POWER) == 150.5
        assert reading.value_of(M.PHASE_VOLTAGE, phase="l2") == 120.1
        assert reading.value_of(M.PHASE_VOLTAGE, phase="l3") is None  # phantom phase
    finally:
        await gateway.stop()


def test_check_target_reports_option_problems():
    def problems(**options):
        options = {"host": "envoy.local", "tls_verify": True, "digest_user": "envoy", **options}
        return dict(check_target(options))

    assert problems() == {}
    assert "tls_fingerprint" in problems(tls_fingerprint="12:34")
    assert "tls_verify" in problems(tls_fingerprint="ab" * 32, tls_verify=False)
    assert "password" in problems(username=USER)
    assert "token" in problems(token=Secret("not-a-jwt"))
    assert "host" in problems(host="https://envoy.local")
    assert "digest_password" in problems(digest_user="installer")
    assert "disable" in problems(disable=("inverters", "everything"))
    assert SPEC.vendor == "enphase" and SPEC.transport == "local"


async def test_simulator_answers_like_the_gateway(sims, session):
    gateway, _ = sims
    ssl = aiohttp.Fingerprint(bytes.fromhex(gateway.fingerprint))
    async with session.get(f"{gateway.url}/info", ssl=ssl) as resp:  # no auth for /info
        assert resp.status == 200 and b"<sn>202439990001</sn>" in await resp.read()
    async with session.get(f"{gateway.url}/ivp/meters/readings", ssl=ssl) as resp:
        assert resp.status == 401
    token = gateway.mint_token()
    async with session.get(f"{gateway.url}/auth/check_jwt", ssl=ssl, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200 and "Valid token" in await resp.text()
        cookie = resp.cookies["sessionId"].value
    # The session cookie stands in for the token, as on the gateway.
    async with session.get(f"{gateway.url}/ivp/meters", ssl=ssl, cookies={"sessionId": cookie}) as resp:
        assert resp.status == 200 and (await resp.json())[0]["measurementType"] == "production"
    async with session.get(f"{gateway.url}/ivp/livedata/status", ssl=ssl, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 404 and await resp.json() == {"error": "404 - Not Found"}
    # A token for another gateway is refused.
    foreign = gateway.issuer.mint("999999999999")
    async with session.get(f"{gateway.url}/ivp/meters", ssl=ssl, headers={"Authorization": f"Bearer {foreign}"}) as resp:
        assert resp.status == 401


# --- live data, the nightly period, every firmware, the demo gateway -----------------------------


def livedata(updated: float) -> bytes:
    """A /ivp/livedata/status body like the seed's, with batteries, refreshed at `updated`."""
    storage = {"agg_p_mw": -220800, "agg_s_mva": -559446, "agg_p_ph_a_mw": -220800, "agg_p_ph_b_mw": 0}
    return json.dumps({
        "connection": {"mqtt_state": "connected", "prov_state": "configured", "auth_state": "ok",
                       "sc_stream": "enabled", "sc_debug": "disabled"},
        "meters": {"last_update": int(updated), "soc": 87, "main_relay_state": 1, "gen_relay_state": 5,
                   "backup_bat_mode": 1, "backup_soc": 10, "is_split_phase": 1, "phase_count": 2,
                   "enc_agg_soc": 87, "enc_agg_energy": 8700, "acb_agg_soc": 0, "acb_agg_energy": 0,
                   "pv": {"agg_p_mw": 2891863}, "storage": storage, "grid": {"agg_p_mw": 160490},
                   "load": {"agg_p_mw": 2831553}, "generator": {"agg_p_mw": 0}},
        "tasks": {"task_id": 27672012, "timestamp": int(updated)},
    }).encode()


async def test_live_data_gives_the_battery_figures_in_base_units(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    gateway.bodies["ivp_livedata_status"] = livedata(clock.now)
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    for _ in range(4):  # the live data are first read on the fourth poll
        reading = await adapter.poll()
        clock.advance(10)
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == 0.87
    assert reading.value_of(M.BATTERY_POWER) == pytest.approx(-220.8)  # milliwatts -> W; charging
    assert reading.value_of(M.BATTERY_STORED_ENERGY) == 8700 * 3600
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154 and reading.value_of(M.ACTIVE_POWER) == 160.49


async def test_stale_live_data_are_not_exported(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    gateway.bodies["ivp_livedata_status"] = livedata(clock.now - 3600)  # the stream went off an hour ago
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    with capture_logs() as logs:
        for _ in range(4):
            reading = await adapter.poll()
            clock.advance(10)
    assert gateway.count("/ivp/livedata/status") == 1
    assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) is None and reading.value_of(M.BATTERY_POWER) is None
    assert sum("live data stream is off" in e["event"] for e in logs) == 1


def at_utc(clock: Clock, hour: int, minute: int) -> None:
    day = clock.now - clock.now % 86400
    clock.now = day + hour * 3600 + minute * 60


async def test_nightly_unresponsive_period_is_a_gap_not_an_error(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    at_utc(clock, 22, 58)
    adapter = make(session, tmp_path, clock, timeout=0.5, nightly_window="22:45-23:30", timezone="UTC",
                   **cloud(gateway, enlighten))
    assert (await adapter.poll()).value_of(M.ACTIVE_POWER) == 160.49
    gateway.hang()
    clock.advance(10)
    with capture_logs() as logs:
        reading = await adapter.poll()  # gives up before the scheduler's timeout would
    assert reading.samples == [s for s in reading.samples if s.metric is M.TOKEN_EXPIRY]
    assert reading.devices[0].serial == gateway.serial  # still says who it is
    assert [e["log_level"] for e in logs if "nightly" in e["event"]] == ["info"]
    asked = len(gateway.requests)
    clock.advance(5)
    await adapter.poll()  # within the back-off (10 s after the first failure): the gateway is not asked
    assert len(gateway.requests) == asked
    clock.advance(5)
    await adapter.poll()  # asked again, fails again: next try 20 s later
    assert len(gateway.requests) == asked + 1
    gateway.wake()
    clock.advance(20)
    with capture_logs() as logs:
        assert (await adapter.poll()).value_of(M.ACTIVE_POWER) == 160.49
    assert any("answers again" in e["event"] for e in logs)


async def test_failures_outside_the_nightly_window_are_errors(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    at_utc(clock, 12, 0)
    adapter = make(session, tmp_path, clock, nightly_window="22:45-23:30", timezone="UTC", **cloud(gateway, enlighten))
    await adapter.poll()
    gateway.force("/ivp/meters/readings", 500)
    clock.advance(10)
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "http_error"
    at_utc(clock, 23, 0)  # the same failure at 23:00 is the gateway's nightly period
    reading = await adapter.poll()
    assert reading.value_of(M.ACTIVE_POWER) is None and reading.devices


def test_nightly_window_and_timezone_options_are_checked():
    def problems(**options):
        return dict(check_target({"host": "envoy.local", "tls_verify": True, "digest_user": "envoy", **options}))

    assert problems(nightly_window="23:00-23:20") == {} and problems(nightly_window="off") == {}
    assert "nightly_window" in problems(nightly_window="11pm")
    assert "nightly_window" in problems(nightly_window="25:00-01:00")
    with pytest.raises(ValueError, match="unknown time zone"):
        OPTIONS["timezone"].convert("Mars/Olympus")
    assert OPTIONS["timezone"].convert("Europe/Berlin") == "Europe/Berlin"
    assert parse_window("23:50-00:10").contains(5) and not parse_window("23:50-00:10").contains(60)


FIRMWARES = {
    # folder: (production power, lifetime production in Wh, what else the gateway shows)
    "3.9.36": (1271, 6012540, {"inverters": 12}),
    "4.2.27": (5891, 10279087, {}),
    "5.0.62": (7904, 133798554, {"inverters": 40}),
    "7.3.466_with_cts_3phase": (-6.481, 4351113.2, {"ct": ("production", 488.925)}),
    "7.6.175_with_cts": (488.154, 3183793.303, {"ct": ("production", 488.925), "consumption": 476.686}),
    "8.2.4286_with_3cts_and_battery_split": (7123.097, 13431328.665, {"ct": ("storage", -7083.656), "battery": 0.464}),
    "8.3.5169_with_generator": (2885.154, 11567953.818, {"ct": ("net-consumption", 160.49)}),
    "8.3.5433_tot_is_net_cons": (357.492, 14405465.109, {"ct": ("total-consumption", 786.513),
                                                           "consumption": 785.906}),
}


@pytest.mark.parametrize("firmware", sorted(FIRMWARES))
async def test_every_firmware_through_the_adapter(firmware, session, tmp_path, clock):
    needs(firmware)
    power, lifetime, extra = FIRMWARES[firmware]
    issuer = TokenIssuer(clock=clock)
    gateway = await GatewaySimulator(firmware, issuer=issuer).start()
    try:
        options = {"host": gateway.host}
        if gateway.tokens_required:
            options.update(token=Secret(gateway.mint_token()), tls_fingerprint=gateway.fingerprint)
        adapter = make(session, tmp_path, clock, **options)
        for _ in range(7):  # every endpoint has been read once
            reading = await adapter.poll()
            clock.advance(10)
        assert reading.devices[0].serial == gateway.serial
        assert reading.value_of(M.PRODUCTION_POWER) == power
        assert reading.value_of(M.PRODUCTION_ENERGY) == pytest.approx(lifetime * 3600)
        if "inverters" in extra:
            assert len({s.labels for s in reading.samples if s.metric is M.INVERTER_POWER}) == extra["inverters"]
        if "ct" in extra:
            meter, value = extra["ct"]
            assert reading.value_of(M.CT_ACTIVE_POWER, meter=meter) == value
        if "consumption" in extra:  # 8.3.5433: the total copies net; production + net is exported
            assert reading.value_of(M.CONSUMPTION_POWER) == extra["consumption"]
        if "battery" in extra:
            assert reading.value_of(M.BATTERY_STATE_OF_CHARGE) == pytest.approx(extra["battery"])
        names = [(s.metric.name, s.labels) for s in reading.samples]
        assert len(names) == len(set(names))  # never one series twice
    finally:
        await gateway.stop()


async def test_demo_gateway_has_cts_inverters_and_a_battery_from_packaged_bodies(session, tmp_path, clock):
    gateway, enlighten, target = await start_demo()
    try:
        assert gateway.firmware == DEFAULT_FIRMWARE
        assert firmware_folder(DEFAULT_FIRMWARE) == PACKAGED / DEFAULT_FIRMWARE  # not ../shared
        options = {k: v for k, v in target.items() if k not in ("name", "vendor")}
        options["password"] = Secret(options["password"])
        adapter = make(session, tmp_path, clock, **options)
        for _ in range(3):
            reading = await adapter.poll()
            clock.advance(10)
        assert reading.value_of(M.CT_ACTIVE_POWER, meter="storage") == -7083.656
        assert reading.value_of(M.BATTERY_POWER) == -7083.656  # charging
        assert len({s.labels for s in reading.samples if s.metric is M.INVERTER_POWER}) == 35
        assert reading.value_of(M.BATTERY_UNIT_STATE_OF_CHARGE, battery="492320000140") == 0.39
        assert enlighten.login_calls == 1
    finally:
        await gateway.stop()
        await enlighten.stop()


def test_packaged_demo_bodies_are_the_corpus():
    packaged = sorted(p for p in PACKAGED.rglob("*") if p.is_file())
    assert packaged, f"no packaged bodies under {PACKAGED}"
    if not CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS}")
    for path in packaged:
        original = CORPUS / path.relative_to(PACKAGED)
        assert original.read_bytes() == path.read_bytes(), path
    # Every body of the demo firmware is packaged, not only some.
    folder = CORPUS / DEFAULT_FIRMWARE
    assert {p.name for p in folder.iterdir()} == {p.name for p in (PACKAGED / DEFAULT_FIRMWARE).iterdir()}


async def test_consumption_report_is_served_from_the_captured_reports(sims, session):
    gateway, _ = sims
    ssl = aiohttp.Fingerprint(bytes.fromhex(gateway.fingerprint))
    headers = {"Authorization": f"Bearer {gateway.mint_token()}"}
    async with session.get(f"{gateway.url}/ivp/meters/reports/consumption", ssl=ssl, headers=headers) as resp:
        assert resp.status == 200
        assert [r["reportType"] for r in await resp.json()] == ["net-consumption", "total-consumption"]
