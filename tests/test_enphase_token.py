"""Gateway tokens: JWT decoding, the Enlighten flow against its simulator, persistence."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from exporter.model.errors import PollError
from exporter.runtime.state import StateDirectory
from exporter.vendors.enphase.token import TokenError, TokenFile, decode_claims, fetch_token, token_info
from simulators.enphase import EnlightenSimulator, TokenIssuer

SERIAL = "202439990001"
USER, PASSWORD = "owner@example.com", "correct horse"


def jwt(payload: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'ES256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


@pytest.fixture
async def enlighten():
    sim = await EnlightenSimulator(TokenIssuer(), {USER: PASSWORD}).start()
    yield sim
    await sim.stop()


def test_decode_an_owner_token():
    token = jwt({"aud": SERIAL, "iss": "Entrez", "enphaseUser": "owner", "exp": 1721580436, "iat": 1690044436,
                 "jti": "x", "username": USER})
    info = token_info(token)
    assert info.expires_at == 1721580436
    assert info.issued_at == 1690044436
    assert info.user_type == "owner"
    assert info.serial == SERIAL
    assert decode_claims(token)["username"] == USER
    assert token not in repr(info)  # tokens never reach logs through a repr


@pytest.mark.parametrize("bad", ["", "abc", "a.b", "a.b.c", "x.!!!.y", jwt({"iat": 1}), jwt({"exp": "soon"}),
                                 "e30." + base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".s"])
def test_what_is_not_a_usable_token(bad):
    with pytest.raises(TokenError):
        token_info(bad)


def test_default_renewal_margins():
    year, day = 365 * 86400, 86400
    owner = token_info(jwt({"enphaseUser": "owner", "iat": 0, "exp": year}))
    installer = token_info(jwt({"enphaseUser": "installer", "iat": 0, "exp": 12 * 3600}))
    assert owner.renew_margin() == 30 * day  # a twelfth of a year, capped at 30 days
    assert installer.renew_margin() == 3600  # a twelfth of 12 hours
    # A margin longer than the token lives is capped at half its life (no login on every poll).
    assert installer.renew_margin(30 * day) == 6 * 3600
    assert owner.renew_margin(7 * day) == 7 * day
    # Without `iat` the account type decides.
    assert token_info(jwt({"enphaseUser": "installer", "exp": 5})).renew_margin() == 3600
    assert token_info(jwt({"enphaseUser": "owner", "exp": 5})).renew_margin() == 30 * day


async def test_fetch_token_from_enlighten(enlighten, session):
    info = await fetch_token(session, USER, PASSWORD, SERIAL, enlighten_url=enlighten.url, token_url=enlighten.url)
    assert info.user_type == "owner"
    assert info.serial == SERIAL
    assert info.expires_at - info.issued_at == 365 * 86400
    assert enlighten.issuer.check(info.token, SERIAL)  # the gateway will accept it
    assert (enlighten.login_calls, enlighten.token_calls) == (1, 1)


async def test_wrong_password_is_unauthorized_and_not_echoed(enlighten, session):
    with pytest.raises(PollError) as err:
        await fetch_token(session, USER, "hunter2", SERIAL, enlighten_url=enlighten.url, token_url=enlighten.url)
    assert err.value.reason == "unauthorized"
    assert "hunter2" not in str(err.value)
    assert enlighten.token_calls == 0


async def test_multi_factor_account_is_told_to_paste_a_token(enlighten, session):
    enlighten.mfa = True
    with pytest.raises(PollError) as err:
        await fetch_token(session, USER, PASSWORD, SERIAL, enlighten_url=enlighten.url, token_url=enlighten.url)
    assert err.value.reason == "config"
    message = str(err.value)
    assert "multi-factor" in message and "token_file" in message and "entrez.enphaseenergy.com" in message
    assert PASSWORD not in message


async def test_unreachable_enlighten_is_a_connection_error(session):
    with pytest.raises(PollError) as err:
        await fetch_token(session, USER, PASSWORD, SERIAL, enlighten_url="http://127.0.0.1:9", token_url="http://127.0.0.1:9")
    assert err.value.reason == "connection"


def test_token_file_round_trip_is_private(tmp_path):
    state = StateDirectory(tmp_path / "state")
    token_file = TokenFile(state, "roof/gateway")
    info = token_info(jwt({"enphaseUser": "owner", "iat": 10, "exp": 20, "aud": SERIAL}))
    assert token_file.load(SERIAL) is None
    token_file.save(info, SERIAL)
    path = state.file(token_file.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "/" not in token_file.name
    assert token_file.load(SERIAL).token == info.token
    assert token_file.load("999999999999") is None  # another gateway's token is not used
    path.write_text("{torn")
    assert token_file.load(SERIAL) is None
