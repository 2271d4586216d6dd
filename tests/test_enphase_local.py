"""The Enphase transport against the gateway and Enlighten simulators, over real sockets."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from exporter import catalogue as M
from exporter.config import Secret, TargetConfig
from exporter.context import AdapterContext
from exporter.errors import PollError
from exporter.logs import get as get_log
from exporter.simulators.enphase import EnlightenSimulator, GatewaySimulator, TokenIssuer
from exporter.state import StateDirectory
from exporter.vendors.enphase.local import SPEC, EnphaseLocal, check_target
from exporter.vendors.enphase.token import TokenStore

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
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


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


def make(session, state_dir, clock, name="roof", **options) -> EnphaseLocal:
    options.setdefault("tls_verify", True)
    target = TargetConfig(name=name, vendor="enphase", transport="local", interval=10, timeout=5, max_backoff=60,
                          stale_after=60, jitter=0, options=options)
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
    for _ in range(19):  # three minutes of 10 s polls
        reading = await adapter.poll()
        clock.advance(10)
    assert gateway.count("/ivp/meters/readings") == 19
    assert gateway.count("/production.json") == 4  # 0, 60, 120, 180 s
    assert gateway.count("/api/v1/production/inverters") == 1  # every 5 minutes
    assert gateway.count("/ivp/ensemble/inventory") == 3
    assert gateway.count("/info") == 1 and gateway.count("/ivp/meters") == 1
    assert gateway.count("/api/v1/production") == 0  # only a fallback for /production.json
    # Cached results of the endpoints not read this time are still in every reading.
    assert reading.value_of(M.INVERTER_POWER, inverter="482208990017") == 142
    assert reading.value_of(M.PRODUCTION_POWER) == 2885.154


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
    stored = TokenStore(StateDirectory(tmp_path), "roof").load(gateway.serial)
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


async def test_token_refused_after_renewal_fails_and_backs_off(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await adapter.poll()
    gateway.force("/ivp/meters/readings", 401)
    clock.advance(10)
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "unauthorized"
    assert enlighten.login_calls == 2  # renewed once
    for _ in range(5):
        clock.advance(10)
        with pytest.raises(PollError):
            await adapter.poll()
    assert enlighten.login_calls == 2  # then it stops asking Enlighten for a while
    gateway.force("/ivp/meters/readings", None)
    clock.advance(10)
    assert (await adapter.poll()).value_of(M.ACTIVE_POWER) == 160.49


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


async def test_server_error_fails_the_poll_without_hammering(sims, session, tmp_path, clock):
    gateway, enlighten = sims
    adapter = make(session, tmp_path, clock, **cloud(gateway, enlighten))
    await adapter.poll()
    gateway.force("/production.json", 500)
    clock.advance(60)
    with pytest.raises(PollError) as err:
        await adapter.poll()
    assert err.value.reason == "http_error"
    clock.advance(10)
    await adapter.poll()  # the failed endpoint waits for its next turn
    assert gateway.count("/production.json") == 2


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
    finally:
        await gateway.stop()


async def test_legacy_firmware_with_wrong_digest_password(session, tmp_path, clock):
    needs("3.9.36")
    gateway = await GatewaySimulator("3.9.36").start()
    try:
        adapter = make(session, tmp_path, clock, host=gateway.host, digest_user="installer",
                       digest_password=Secret("wrong"))
        await adapter.poll()
        clock.advance(10)
        with pytest.raises(PollError) as err:
            await adapter.poll()
        assert err.value.reason == "unauthorized"
        assert "installer" in str(err.value) and "wrong" not in str(err.value)
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
