"""IOmeter Partner API authorization: the seed's worked examples, byte for byte."""

from __future__ import annotations

from exporter.config.loader import Secret
from exporter.vendors.iometer.auth import (Credentials, basic_header, created_timestamp, parse_wsse, password_digest,
                                           wsse_header)
from simulators.iometer_partner import PartnerApiSimulator

# From the seed document (iometer-partner-graphql-api.txt), section Authentication.
WSSE_PARTNER = "0da56783-39b2-4b43-adaa-301d247fcd59"
WSSE_SECRET = "1NNbSclq0ULA364TZBB4Hr0EYoRK"
WSSE_CREATED = "2025-10-20T12:38:50Z"
WSSE_NONCE = "eb6c574e12fcfa4cd091a5b21ad0abdb"
WSSE_DIGEST = "NWNiYTMyNzNmZGQ2NWU2ODhjZjc1Mzg3MzliZGE4MTgyMjhjY2Q3NWU1NmYxMzEyM2NhMmI3MWI0ZmMwODY3MA=="
WSSE_HEADER = (
    'UsernameToken Username="0da56783-39b2-4b43-adaa-301d247fcd59", '
    'PasswordDigest="NWNiYTMyNzNmZGQ2NWU2ODhjZjc1Mzg3MzliZGE4MTgyMjhjY2Q3NWU1NmYxMzEyM2NhMmI3MWI0ZmMwODY3MA==", '
    'Nonce="eb6c574e12fcfa4cd091a5b21ad0abdb", Created="2025-10-20T12:38:50Z"'
)
BASIC_PARTNER = "b1451a19-53c7-4e8a-87a0-7c45d3807e9d"
BASIC_SECRET = "JjNQKxIYugVSqCrxkbNfQ8Onpvd07K2G"
BASIC_HEADER = "Basic YjE0NTFhMTktNTNjNy00ZThhLTg3YTAtN2M0NWQzODA3ZTlkOkpqTlFLeElZdWdWU3FDcnhrYk5mUThPbnB2ZDA3SzJH"


def test_wsse_digest_reproduces_the_seed_vector() -> None:
    assert password_digest(WSSE_NONCE, WSSE_CREATED, WSSE_SECRET) == WSSE_DIGEST


def test_wsse_header_reproduces_the_seed_vector_byte_for_byte() -> None:
    assert wsse_header(WSSE_PARTNER, WSSE_SECRET, WSSE_NONCE, WSSE_CREATED) == WSSE_HEADER


def test_basic_header_reproduces_the_seed_vector() -> None:
    assert basic_header(BASIC_PARTNER, BASIC_SECRET) == BASIC_HEADER


def test_created_is_rfc3339_utc_to_the_second() -> None:
    # 2025-10-20T12:38:50Z, with a fraction that must be cut, not rounded up.
    assert created_timestamp(1760963930.9) == WSSE_CREATED


def test_credentials_make_a_fresh_wsse_nonce_each_time_and_never_send_the_secret() -> None:
    creds = Credentials("wsse", WSSE_PARTNER, Secret(WSSE_SECRET), clock=lambda: 1760963930.0)
    first, second = creds.header(), creds.header()
    assert first != second
    fields = parse_wsse(first)
    assert fields is not None
    assert fields["Username"] == WSSE_PARTNER and fields["Created"] == WSSE_CREATED
    assert len(fields["Nonce"]) == 32 and int(fields["Nonce"], 16) >= 0
    assert fields["PasswordDigest"] == password_digest(fields["Nonce"], WSSE_CREATED, WSSE_SECRET)
    assert WSSE_SECRET not in first


def test_credentials_basic() -> None:
    assert Credentials("basic", BASIC_PARTNER, Secret(BASIC_SECRET)).header() == BASIC_HEADER


def test_simulator_checks_wsse_time_nonce_and_digest() -> None:
    now = 1760963930.0
    sim = PartnerApiSimulator(WSSE_PARTNER, WSSE_SECRET, [], clock=lambda: now + 10)
    assert sim.authorized(WSSE_HEADER)
    assert not sim.authorized(WSSE_HEADER), "a replayed nonce must be refused"
    late = PartnerApiSimulator(WSSE_PARTNER, WSSE_SECRET, [], clock=lambda: now + 3600)
    assert not late.authorized(WSSE_HEADER), "a header an hour old must be refused"
    wrong = PartnerApiSimulator(WSSE_PARTNER, "another secret", [], clock=lambda: now)
    assert not wrong.authorized(WSSE_HEADER)
    basic = PartnerApiSimulator(BASIC_PARTNER, BASIC_SECRET, [])
    assert basic.authorized(BASIC_HEADER)
    assert not basic.authorized("Basic " + "x" * 20)
    assert not PartnerApiSimulator(BASIC_PARTNER, BASIC_SECRET, [], auth_methods=("wsse",)).authorized(BASIC_HEADER)
