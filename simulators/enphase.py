"""An IQ Gateway (Envoy) and the Enlighten token services, on real sockets on 127.0.0.1.

`GatewaySimulator` serves one firmware's captured bodies at their paths: the demo firmware's
bodies ship with the package (`data/enphase/<firmware>/`, copies of the conformance corpus),
every other firmware is read from `shared/conformance/enphase/` next to the project, and when
neither is there a gateway built into this module answers. `/info` is XML without auth;
firmware 7 and later speak HTTPS with a self-signed certificate made at start-up and JWT bearer
auth (401 for a missing, foreign, expired or revoked token, and `/auth/check_jwt`); older
firmware speaks plain HTTP with Digest auth on the endpoints that want it. Endpoints the firmware
lacks answer 404 like the gateway does; `/ivp/meters/reports/consumption` is the consumption
part of a captured `/ivp/meters/reports`.

`EnlightenSimulator` plays the cloud side of Enphase's token flow: `POST /login/login.json`
(answers a `session_id`, or no session when the account has multi-factor authentication) and
`POST /tokens` (answers the raw JWT). Both sign with one `TokenIssuer` so the gateway accepts what
Enlighten hands out.

Switches for tests: `GatewaySimulator.expire_tokens()`, `.force(path, status)`,
`.installer_only` (paths that refuse owner tokens with 401 although `/auth/check_jwt` accepts
them), `.refusing` (paths refused with 401 whatever the credentials, as firmware D3.18 does for
`/ivp/meters`: a fresh Digest challenge each time, or for tokens a 401 while `/auth/check_jwt`
accepts them), `.garbled` (paths answered 200 with a body cut short), `.slow` (path -> seconds
before the answer), `.hang()` / `.wake()` (the nightly unresponsive period: requests get no answer),
`.bodies` (file name -> body, to add or replace an endpoint), the site switches
`.add_acb_inventory()`, `.set_battery_status(...)`, `.set_grid_relay(state)`,
`.set_ct_status(...)`, `.disable_ct(measurement_type)` (a CT disabled in /ivp/meters, noise
in its /production.json entries), `.drop_measurement_type()` (CT entries without
`measurementType`, as firmware 4.2.x), `.serve_livedata(updated, ...)`, `.serve_device_data(limit)` (bodies made
from the served ones in the shapes of the seed, the captures and pyenphase), `EnlightenSimulator.mfa`,
`.token_lifetime`, and the request logs `requests`, `login_calls`.

Demo: `python -m simulators.enphase [--firmware NAME]` prints the URLs, the
certificate fingerprint and a token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import secrets
import shutil
import ssl
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .paths import CONFORMANCE
from .tls import server_context

CORPUS = CONFORMANCE / "enphase"
PACKAGED = Path(__file__).with_name("data") / "enphase"
# CTs (production, net consumption, storage), 35 microinverters and 5 IQ Batteries.
DEFAULT_FIRMWARE = "8.2.4286_with_3cts_and_battery_split"
EMBEDDED = "embedded"
OWNER_LIFETIME = 365 * 86400
INSTALLER_LIFETIME = 12 * 3600
NOT_FOUND = b'{ "error" : "404 - Not Found" }'
DIGEST_REALM = "enphaseenergy.com"
# Firmware < 7 endpoints that want Digest auth.
DIGEST_PATHS = frozenset({"/api/v1/production/inverters", "/production"})


# --- Tokens ---------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Signs gateway tokens (HS256, like Entrez's ES256 in shape) and remembers what it issued."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._key = secrets.token_bytes(32)
        self.clock = clock
        self.issued: list[str] = []  # jti of every token
        self.revoked: set[str] = set()

    def mint(self, serial: str, *, user_type: str = "owner", lifetime: float | None = None,
             username: str = "owner@example.com", issued_at: float | None = None) -> str:
        iat = int(self.clock() if issued_at is None else issued_at)
        life = lifetime if lifetime is not None else (INSTALLER_LIFETIME if user_type == "installer" else OWNER_LIFETIME)
        jti = str(uuid.uuid4())
        header = {"kid": "sim", "typ": "JWT", "alg": "HS256"}
        payload = {"aud": serial, "iss": "Entrez", "enphaseUser": user_type, "exp": int(iat + life), "iat": iat,
                   "jti": jti, "username": username}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        signature = hmac.new(self._key, signing.encode(), hashlib.sha256).digest()
        self.issued.append(jti)
        return f"{signing}.{_b64(signature)}"

    def check(self, token: str, serial: str) -> bool:
        """True for a token this issuer signed, for `serial`, unexpired and not revoked."""
        try:
            head, body, signature = token.split(".")
            expected = hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                return False
            claims = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return False
        return (claims.get("aud") == serial and claims.get("jti") not in self.revoked
                and isinstance(claims.get("exp"), (int, float)) and claims["exp"] > self.clock())

    def revoke_all(self) -> None:
        self.revoked.update(self.issued)


# --- TLS ------------------------------------------------------------------------------------------


class SelfSigned:
    """A self-signed certificate like the gateway's (`CN=envoy-<serial>`, issued by itself; made
    at start, kept in a temporary folder)."""

    def __init__(self, common_name: str = "envoy") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("envoy.local"), x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        self.directory = Path(tempfile.mkdtemp(prefix="emx-sim-enphase-"))
        self.fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        self.context: ssl.SSLContext = server_context(self.directory, "envoy", cert, key)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --- Bodies ---------------------------------------------------------------------------------------


def file_name(path: str, query: str = "") -> str:
    """Corpus file name of a request: `/ivp/meters/readings` -> `ivp_meters_readings`,
    `/production.json?details=1` -> `production.json_details_1`."""
    name = path.strip("/").replace("/", "_")
    if query == "details=1":
        return f"{name}_details_1"
    return name


def firmwares() -> list[str]:
    """Firmware captures available to the simulator: the packaged ones and the corpus's."""
    names = {p.name for base in (PACKAGED, CORPUS) if base.is_dir() for p in base.iterdir() if p.is_dir()}
    return sorted(names) or [EMBEDDED]


def firmware_folder(firmware: str) -> Path | None:
    """Where a firmware's bodies come from: the package's copy first, then the corpus."""
    if firmware == EMBEDDED:
        return None
    for base in (PACKAGED, CORPUS):
        if (base / firmware).is_dir():
            return base / firmware
    return None


def load_bodies(firmware: str) -> dict[str, bytes]:
    folder = firmware_folder(firmware)
    if folder is None:
        return embedded_bodies()
    bodies = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    reports = bodies.get("ivp_meters_reports")
    if reports is not None and "ivp_meters_reports_consumption" not in bodies:
        consumption = _consumption_reports(reports)
        if consumption is not None:
            bodies["ivp_meters_reports_consumption"] = consumption
    return bodies


def _consumption_reports(reports: bytes) -> bytes | None:
    """`/ivp/meters/reports/consumption`: the consumption reports of `/ivp/meters/reports`."""
    try:
        payload = json.loads(reports)
    except ValueError:
        return None
    if not isinstance(payload, list):
        return None
    chosen = [r for r in payload if isinstance(r, dict) and str(r.get("reportType", "")).endswith("consumption")]
    return json.dumps(chosen, indent=4).encode() if chosen else None


def embedded_bodies() -> dict[str, bytes]:
    """A split-phase gateway with production and net-consumption CTs, three microinverters and
    one IQ Battery, for when the corpus is not there."""
    serial = "202400000001"
    ts = 1785593341
    info = f"""<?xml version="1.0" encoding="UTF-8"?>
<envoy_info>
\t<time>{ts}</time>
\t<device>
\t\t<sn>{serial}</sn>
\t\t<pn>800-00654-r08</pn>
\t\t<software>D8.2.4286</software>
\t\t<euaid>4c8675</euaid>
\t\t<seqnum>0</seqnum>
\t\t<apiver>1</apiver>
\t\t<imeter>true</imeter>
\t</device>
\t<web-tokens>true</web-tokens>
</envoy_info>
"""

    def channel(eid: int, p: float, v: float, i: float, dl: float, rc: float) -> dict:
        return {"eid": eid, "timestamp": ts, "actEnergyDlvd": dl, "actEnergyRcvd": rc, "apparentEnergy": dl * 1.1,
                "reactEnergyLagg": 0.0, "reactEnergyLead": 0.0, "instantaneousDemand": p, "activePower": p,
                "apparentPower": abs(p) * 1.02, "reactivePower": -10.0 if p else 0.0, "pwrFactor": 0.98 if p else 0.0,
                "voltage": v, "current": i, "freq": 60.0}

    def meter(eid: int, phases: list[dict]) -> dict:
        total = {k: round(sum(c[k] for c in phases), 3) for k in
                 ("actEnergyDlvd", "actEnergyRcvd", "activePower", "apparentPower", "reactivePower", "current")}
        return {**channel(eid, total["activePower"], 240.2, total["current"], total["actEnergyDlvd"],
                          total["actEnergyRcvd"]), **total, "channels": phases}

    zero = lambda eid: channel(eid, 0.0, 0.0, 0.0, 0.0, 0.0)  # noqa: E731 - the gateway's phantom phase
    readings = [
        meter(704643328, [channel(1778385169, 1500.5, 120.1, 12.5, 5000000.0, 5.0),
                          channel(1778385170, 1499.5, 120.1, 12.5, 5000100.0, 6.0), zero(1778385171)]),
        meter(704643584, [channel(1778385425, -300.25, 120.1, 2.6, 3000000.0, 1000000.0),
                          channel(1778385426, 450.75, 120.1, 3.9, 3100000.0, 900000.0), zero(1778385427)]),
    ]
    meters = [{"eid": 704643328, "state": "enabled", "measurementType": "production", "phaseMode": "split",
               "phaseCount": 2, "meteringStatus": "normal", "statusFlags": []},
              {"eid": 704643584, "state": "enabled", "measurementType": "net-consumption", "phaseMode": "split",
               "phaseCount": 2, "meteringStatus": "normal", "statusFlags": []}]
    production = {
        "production": [{"type": "inverters", "activeCount": 3, "readingTime": ts, "wNow": 2950, "whLifetime": 10050000},
                       {"type": "eim", "activeCount": 1, "measurementType": "production", "readingTime": ts,
                        "wNow": 3000.0, "whLifetime": 10000100.0}],
        "consumption": [{"type": "eim", "activeCount": 1, "measurementType": "total-consumption", "readingTime": ts,
                         "wNow": 3150.5, "whLifetime": 14200000.0},
                        {"type": "eim", "activeCount": 1, "measurementType": "net-consumption", "readingTime": ts,
                         "wNow": 150.5, "whLifetime": 4200000.0}],
        "storage": [{"type": "acb", "activeCount": 0, "readingTime": 0, "wNow": 0, "whNow": 0, "state": "idle"}],
    }
    inverters = [{"serialNumber": f"48220899000{n}", "lastReportDate": ts - 60 * n, "devType": 1,
                  "lastReportWatts": 980 + n, "maxReportWatts": 1200} for n in (1, 2, 3)]
    inventory = [{"type": "ENCHARGE", "devices": [{"serial_num": "492320000001", "percentFull": 64, "temperature": 21,
                                                   "encharge_capacity": 5000, "communicating": True}]},
                 {"type": "ENPOWER", "devices": []}]
    api = {"wattHoursToday": 12000, "wattHoursSevenDays": 190000, "wattHoursLifetime": 10000100, "wattsNow": 3000}

    def js(value: Any) -> bytes:
        return json.dumps(value, indent=2).encode()

    return {"info": info.encode(), "ivp_meters": js(meters), "ivp_meters_readings": js(readings),
            "production.json": js(production), "production": js(production), "api_v1_production": js(api),
            "api_v1_production_inverters": js(inverters), "ivp_ensemble_inventory": js(inventory)}


def _content_type(body: bytes) -> str:
    head = body.lstrip()[:5]
    if head.startswith(b"<?xml"):
        return "text/xml"
    if head.startswith(b"<"):
        return "text/html"
    return "application/json"


def _error_status(body: bytes) -> int | None:
    """Captured bodies of error answers: the status the gateway sent them with."""
    if b"404 - Not Found" in body or b"Page Not Found" in body:
        return 404
    if b"401 Unauthorized" in body:
        return 401
    return None


# --- The gateway ----------------------------------------------------------------------------------


class GatewaySimulator:
    def __init__(self, firmware: str = DEFAULT_FIRMWARE, *, issuer: TokenIssuer | None = None,
                 installer_password: str = "installer-secret", digest_paths: frozenset[str] = DIGEST_PATHS) -> None:
        self.firmware = firmware if firmware in firmwares() else EMBEDDED
        self.bodies = load_bodies(self.firmware)
        software = _tag(self.bodies.get("info", b""), "software") or "D8.0.0"
        self.serial = _tag(self.bodies.get("info", b""), "sn") or "000000000000"
        self.version = tuple(int(x) for x in "".join(c for c in software if c.isdigit() or c == ".").split(".") if x)
        self.tokens_required = self.version[0] >= 7
        self.issuer = issuer or TokenIssuer()
        self.users = {"envoy": self.serial[-6:], "installer": installer_password}
        self.digest_paths = digest_paths
        self.requests: deque[str] = deque(maxlen=100_000)  # path (with query) of each request, in order
        self.forced: dict[str, int] = {}
        self.installer_only: set[str] = set()
        self.refusing: set[str] = set()
        self.garbled: set[str] = set()
        self.slow: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self.sessions: set[str] = set()
        self._awake = asyncio.Event()
        self._awake.set()
        self._nonces: set[str] = set()
        self._tls: SelfSigned | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # switches
    def expire_tokens(self) -> None:
        """Every token issued so far is refused from now on (as after its expiry)."""
        self.issuer.revoke_all()
        self.sessions.clear()

    def force(self, path: str, status: int | None) -> None:
        """Answer `path` with `status` (401, 404, 500...) until cleared with None."""
        if status is None:
            self.forced.pop(path, None)
        else:
            self.forced[path] = status

    def hang(self) -> None:
        """From now on requests get no answer (the gateway's nightly unresponsive period)."""
        self._awake.clear()

    def wake(self) -> None:
        self._awake.set()

    def count(self, path: str) -> int:
        return sum(1 for p in self.requests if p.split("?")[0] == path)

    # switches of the site's batteries and health, built from the served bodies
    def _json(self, name: str) -> Any:
        return json.loads(self.bodies[name])

    def _put(self, name: str, value: Any) -> None:
        self.bodies[name] = json.dumps(value, indent=4).encode()

    def add_acb_inventory(self) -> None:
        """An inventory group of type "ACB" (the shape pyenphase documents; no capacity field):
        one unit per devType 11 row of /api/v1/production/inverters, charged as the storage entry
        of /production.json says."""
        rows = self._json("api_v1_production_inverters")
        storage = [e for e in self._json("production.json").get("storage", []) if e.get("type") == "acb"]
        percent = storage[0].get("percentFull", 0) if storage else 0
        units = [{"part_num": "800-00930-r03", "serial_num": r["serialNumber"], "installed": r["lastReportDate"],
                  "device_status": ["envoy.global.ok"], "last_rpt_date": r["lastReportDate"],
                  "communicating": True, "operating": True, "producing": True, "sleep_enabled": False,
                  "percentFull": percent, "maxCellTemp": 18, "sleep_min_soc": 25, "sleep_max_soc": 30,
                  "charge_status": "idle"} for r in rows if r.get("devType") == 11]
        inventory = [g for g in self._json("ivp_ensemble_inventory") if g.get("type") != "ACB"]
        self._put("ivp_ensemble_inventory", [*inventory, {"type": "ACB", "devices": units}])

    def set_battery_status(self, serial: str, *, communicating: bool = True,
                           device_status: list[str] | None = None) -> None:
        """One battery of the inventory stops communicating or reports a condition."""
        inventory = self._json("ivp_ensemble_inventory")
        for group in inventory:
            for device in group.get("devices", []):
                if device.get("serial_num") == serial:
                    device["communicating"] = communicating
                    if device_status is not None:
                        device["device_status"] = device_status
        self._put("ivp_ensemble_inventory", inventory)

    def set_grid_relay(self, state: str) -> None:
        """The relay to the grid "open" (islanded) or "closed", in /ivp/ensemble/status (made
        from the 8.2.4382 shape when the firmware folder has none) and any Enpower."""
        status = self._json("ivp_ensemble_status") if "ivp_ensemble_status" in self.bodies else {}
        relay = status.setdefault("relay", {"mains_admin_state": "closed", "mains_oper_state": "closed",
                                            "Enchg_grid_mode": "grid-tied", "Solar_grid_mode": "unknown"})
        relay["mains_oper_state"] = state
        relay["Enchg_grid_mode"] = "grid-tied" if state == "closed" else "multimode-offgrid"
        self._put("ivp_ensemble_status", status)
        if "ivp_ensemble_inventory" in self.bodies:
            inventory = self._json("ivp_ensemble_inventory")
            for group in inventory:
                if group.get("type") == "ENPOWER":
                    for device in group.get("devices", []):
                        device["mains_oper_state"] = state
            self._put("ivp_ensemble_inventory", inventory)

    def set_ct_status(self, measurement_type: str, metering_status: str, flags: list[str] | None = None) -> None:
        """A CT of /ivp/meters with another `meteringStatus` and `statusFlags`."""
        meters = self._json("ivp_meters")
        for meter in meters:
            if meter.get("measurementType") == measurement_type:
                meter["meteringStatus"] = metering_status
                meter["statusFlags"] = list(flags or [])
        self._put("ivp_meters", meters)

    def serve_livedata(self, updated: float, *, main_relay_state: int = 1, gen_relay_state: int = 5,
                       sc_stream: str = "enabled") -> None:
        """/ivp/livedata/status in the seed's shape (TEB-00060), refreshed at `updated`, with the
        batteries' aggregates of /ivp/ensemble/secctrl where the firmware folder has one."""
        secctrl = self._json("ivp_ensemble_secctrl") if "ivp_ensemble_secctrl" in self.bodies else {}
        zero = {"agg_p_mw": 0, "agg_s_mva": 0, "agg_p_ph_a_mw": 0, "agg_p_ph_b_mw": 0, "agg_p_ph_c_mw": 0,
                "agg_s_ph_a_mva": 0, "agg_s_ph_b_mva": 0, "agg_s_ph_c_mva": 0}
        self._put("ivp_livedata_status", {
            "connection": {"mqtt_state": "connected", "prov_state": "configured", "auth_state": "ok",
                           "sc_stream": sc_stream, "sc_debug": "disabled"},
            "meters": {"last_update": int(updated), "soc": secctrl.get("agg_soc", 0),
                       "main_relay_state": main_relay_state, "gen_relay_state": gen_relay_state,
                       "backup_bat_mode": 1, "backup_soc": 10, "is_split_phase": 0, "phase_count": 1,
                       "enc_agg_soc": secctrl.get("ENC_agg_soc", 0),
                       "enc_agg_energy": secctrl.get("ENC_agg_avail_energy", 0),
                       "acb_agg_soc": secctrl.get("ACB_agg_soc", 0), "acb_agg_energy": secctrl.get("ACB_agg_energy", 0),
                       "pv": dict(zero), "storage": dict(zero), "grid": dict(zero), "load": dict(zero),
                       "generator": dict(zero)},
            "tasks": {"task_id": 27672012, "timestamp": int(updated)},
            "counters": {"main_CfgLoad": 1, "rest_Status": 579},
        })

    def serve_device_data(self, limit: int = 50) -> None:
        """/ivp/pdm/device_data in the shape pyenphase documents, made from the microinverters
        (devType 1) of /api/v1/production/inverters: the first `limit` of them."""
        rows = [r for r in self._json("api_v1_production_inverters") if r.get("devType", 1) == 1]
        data: dict[str, Any] = {"deviceCount": len(rows), "deviceDataLimit": limit}
        for n, row in enumerate(rows[:limit]):
            end = row["lastReportDate"]
            data[str(553648384 + n)] = {
                "devName": "pcu", "sn": row["serialNumber"], "active": True, "modGone": False,
                "channels": [{"chanEid": 1627390225 + n, "created": end,
                              "wattHours": {"today": 0, "yesterday": 0, "week": 0},
                              "watts": {"now": row["lastReportWatts"], "nowUsed": 0, "max": row["maxReportWatts"]},
                              "lastReading": {"eid": 1627390225 + n, "endDate": end, "duration": 900,
                                              "joulesProduced": row["lastReportWatts"] * 900},
                              "lifetime": {"createdTime": end - 86400, "duration": 86400, "joulesProduced": 0}}],
            }
        self._put("ivp_pdm_device_data", data)

    # switches of the CTs, built from the served bodies
    _PRODUCTION_BODIES = ("production.json", "production.json_details_1", "production")

    def _production_bodies(self) -> list[tuple[str, Any]]:
        """The served bodies in the shape of /production.json (the JSON /production included)."""
        out = []
        for name in self._PRODUCTION_BODIES:
            body = self.bodies.get(name)
            if body is not None and body.lstrip().startswith(b"{"):
                out.append((name, json.loads(body)))
        return out

    def drop_measurement_type(self) -> None:
        """CT entries ("eim") of /production.json without `measurementType`, as firmware 4.2.x
        serves them (the order of the entries stays: production, then total and net consumption)."""
        for name, data in self._production_bodies():
            for entry in data.get("production", []) + data.get("consumption", []):
                if entry.get("type") == "eim":
                    entry.pop("measurementType", None)
            self._put(name, data)

    def disable_ct(self, measurement_type: str, noise_w: float = 37.5) -> None:
        """One CT of /ivp/meters switched to "disabled" (as an installer leaves an unconnected
        clamp): its /production.json entries keep their lifetime and carry `noise_w` as power,
        `activeCount` 0 (a consumption CT's noise is in both consumption entries, which the
        gateway computes from it)."""
        meters = self._json("ivp_meters")
        for meter in meters:
            if meter.get("measurementType") == measurement_type:
                meter["state"] = "disabled"
        self._put("ivp_meters", meters)
        consumption = measurement_type.endswith("consumption")
        for name, data in self._production_bodies():
            section = data.get("consumption" if consumption else "production", [])
            for entry in section:
                if entry.get("type") == "eim" and (consumption or entry.get("measurementType") == measurement_type):
                    entry["wNow"], entry["activeCount"] = noise_w, 0
                    for line in entry.get("lines", []):
                        line["wNow"] = noise_w / 2
            self._put(name, data)

    @property
    def scheme(self) -> str:
        return "https" if self.tokens_required else "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 of the certificate (hex), or None for plain-HTTP firmware."""
        return self._tls.fingerprint if self._tls else None

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The server context with the gateway's certificate (a proxy in front may present it)."""
        return self._tls.context if self._tls else None

    def mint_token(self, **kwargs: Any) -> str:
        return self.issuer.mint(self.serial, **kwargs)

    async def start(self) -> "GatewaySimulator":
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.tokens_required:
            self._tls = SelfSigned(f"envoy-{self.serial}")
            context = self._tls.context
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._awake.set()  # let hanging requests finish, so that shutting down does not wait for them
        self._stopping.set()  # and slow ones
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tls is not None:
            self._tls.remove()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, query = request.path, request.query_string
        self.requests.append(f"{path}?{query}" if query else path)
        await self._awake.wait()
        if path in self.slow:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.slow[path])
            except TimeoutError:
                pass
        if path in self.refusing:
            response = web.Response(status=401, body=b"<html><body><h2>401 Unauthorized</h2></body></html>\n",
                                    content_type="text/html")
            if not self.tokens_required:
                response.headers["WWW-Authenticate"] = self._challenge()
            return response
        if path in self.forced:
            status = self.forced[path]
            return web.Response(status=status, body=NOT_FOUND if status == 404 else b"",
                                content_type="application/json" if status == 404 else "text/plain")
        if path == "/auth/check_jwt":
            return self._check_jwt(request)
        if path != "/info":
            refusal = self._authorize(request, path)
            if refusal is not None:
                return refusal
        body = self.bodies.get(file_name(path, query))
        if body is None and query:
            body = self.bodies.get(file_name(path))  # older firmware ignores ?details=1
        if body is None:
            return web.Response(status=404, body=NOT_FOUND, content_type="application/json")
        if path in self.garbled:
            body = body.lstrip()[: max(1, len(body.lstrip()) // 2)]  # cut mid-answer, as a dropped link leaves it
            return web.Response(status=200, body=body, content_type="application/json")
        status = _error_status(body) or 200
        response = web.Response(status=status, body=body, content_type=_content_type(body))
        if status == 401 and not self.tokens_required:
            response.headers["WWW-Authenticate"] = self._challenge()
        return response

    # auth
    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        return header[7:].strip() if header.startswith("Bearer ") else None

    def _check_jwt(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if not token or not self.issuer.check(token, self.serial):
            return web.Response(status=401, text="")
        session = secrets.token_hex(16)
        self.sessions.add(session)
        response = web.Response(status=200, text="<!DOCTYPE html><h2>Valid token.</h2>\n", content_type="text/html")
        response.set_cookie("sessionId", session, secure=True, httponly=True, path="/")
        return response

    def _authorize(self, request: web.Request, path: str) -> web.Response | None:
        if self.tokens_required:
            token = self._bearer(request)
            if token and self.issuer.check(token, self.serial):
                if path in self.installer_only and _claims(token).get("enphaseUser") != "installer":
                    return web.Response(status=401, text="")
                return None
            if request.cookies.get("sessionId") in self.sessions:
                return None
            return web.Response(status=401, text="")
        if path not in self.digest_paths or self._digest_ok(request):
            return None
        response = web.Response(status=401, body=b"<html><body><h2>401 Unauthorized</h2></body></html>\n",
                                content_type="text/html")
        response.headers["WWW-Authenticate"] = self._challenge()
        return response

    def _challenge(self) -> str:
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        return f'Digest realm="{DIGEST_REALM}", qop="auth", nonce="{nonce}", opaque="{secrets.token_hex(8)}"'

    def _digest_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        fields: dict[str, str] = {}
        for part in _split_params(header[7:]):
            key, _, value = part.partition("=")
            fields[key.strip().lower()] = value.strip().strip('"')
        user, nonce = fields.get("username", ""), fields.get("nonce", "")
        if user not in self.users or nonce not in self._nonces or fields.get("realm") != DIGEST_REALM:
            return False
        if fields.get("uri") != request.path_qs:
            return False
        md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
        ha1 = md5(f"{user}:{DIGEST_REALM}:{self.users[user]}")
        ha2 = md5(f"GET:{fields['uri']}")
        if fields.get("qop") == "auth":
            expected = md5(f"{ha1}:{nonce}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = md5(f"{ha1}:{nonce}:{ha2}")
        return hmac.compare_digest(expected, fields.get("response", ""))


def _split_params(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _claims(token: str) -> dict:
    try:
        claims = json.loads(_unb64(token.split(".")[1]))
    except (ValueError, IndexError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _tag(xml: bytes, tag: str) -> str | None:
    text = xml.decode("utf-8", "replace")
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>", start)
    return text[start + len(tag) + 2:end].strip() if start >= 0 and end > start else None


# --- Enlighten ------------------------------------------------------------------------------------


class EnlightenSimulator:
    """Enlighten login and the Entrez token service, on one plain-HTTP port."""

    def __init__(self, issuer: TokenIssuer, accounts: dict[str, str] | None = None, *, mfa: bool = False,
                 user_type: str = "owner", token_lifetime: float | None = None) -> None:
        self.issuer = issuer
        self.accounts = accounts if accounts is not None else {"owner@example.com": "correct horse"}
        self.mfa = mfa
        self.user_type = user_type
        self.token_lifetime = token_lifetime
        self.login_calls = 0
        self.token_calls = 0
        self.sessions: dict[str, str] = {}  # session id -> user
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "EnlightenSimulator":
        app = web.Application()
        app.router.add_post("/login/login.json", self._login)
        app.router.add_post("/tokens", self._tokens)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _login(self, request: web.Request) -> web.Response:
        self.login_calls += 1
        form = await request.post()
        user, password = str(form.get("user[email]", "")), str(form.get("user[password]", ""))
        if self.accounts.get(user) != password or not password:
            return web.json_response({"message": "Invalid email or password"}, status=401)
        if self.mfa:
            # The password was right, but the account wants a second factor: no session.
            return web.json_response({"message": "success", "is_consumer": True, "requires_mfa": True})
        session = secrets.token_hex(16)
        self.sessions[session] = user
        return web.json_response({"message": "success", "session_id": session, "manager_token": secrets.token_hex(8),
                                  "is_consumer": self.user_type == "owner"})

    async def _tokens(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"message": "expected JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"message": "expected a JSON object"}, status=400)
        user = self.sessions.get(str(body.get("session_id")))
        serial = body.get("serial_num")
        if user is None or body.get("username") != user or not isinstance(serial, str) or not serial:
            return web.json_response({"message": "Unauthorized"}, status=401)
        token = self.issuer.mint(serial, user_type=self.user_type, lifetime=self.token_lifetime, username=user)
        return web.Response(text=token, content_type="text/plain")


# --- Demo -----------------------------------------------------------------------------------------


async def start_demo(firmware: str = DEFAULT_FIRMWARE) -> tuple[GatewaySimulator, EnlightenSimulator, dict]:
    """A gateway plus Enlighten, and an exporter target (YAML mapping) for them."""
    issuer = TokenIssuer()
    gateway = await GatewaySimulator(firmware, issuer=issuer).start()
    enlighten = await EnlightenSimulator(issuer).start()
    # The simulated gateway has no nightly unresponsive period: its failures are never expected,
    # whatever the time of day (a demo or test at 23:00 would otherwise see them hidden).
    target: dict[str, Any] = {"name": "enphase-gateway", "vendor": "enphase", "host": gateway.host,
                              "nightly_window": "off"}
    if gateway.tokens_required:
        user, password = next(iter(enlighten.accounts.items()))
        target.update(username=user, password=password, enlighten_url=enlighten.url, token_url=enlighten.url,
                      tls_fingerprint=gateway.fingerprint)
    return gateway, enlighten, target


async def _serve(firmware: str) -> None:
    gateway, enlighten, target = await start_demo(firmware)
    print(f"IQ Gateway simulator ({gateway.firmware}, serial {gateway.serial}): {gateway.url}")
    if gateway.fingerprint:
        print(f"  certificate SHA-256: {gateway.fingerprint}")
        print(f"  owner token: {gateway.mint_token()}")
    print(f"Enlighten simulator: {enlighten.url}  (login {next(iter(enlighten.accounts.items()))})")
    print("exporter target:\n  " + json.dumps(target))
    try:
        await asyncio.Event().wait()
    finally:
        await gateway.stop()
        await enlighten.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.enphase")
    parser.add_argument("--firmware", default=DEFAULT_FIRMWARE, choices=firmwares() + ([EMBEDDED] if EMBEDDED not in firmwares() else []))
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.firmware))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
