"""HomeWizard local API: v1 over HTTP without auth, v2 over HTTPS with a bearer token.

The API version is learnt from `GET /api`: with a token configured the exporter asks the
device over HTTPS (v2), without one over HTTP (v1). v2 certificates are issued by HomeWizard's
own CA to the name `appliance/<kind>/<serial>`, not to an address, so the exporter verifies the
chain against that CA (bundled, or `ca_file`) and the name against the device's serial: the
configured `serial`, or else the one the device reports on its first, token-less `/api` call.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from ... import __version__
from ...config.loader import Secret, Settings, TargetConfig, setting
from ...model import catalogue as M
from ...model.errors import PollError
from ...model.samples import DeviceInfo, ParseError, Reading
from ...runtime.context import AdapterContext
from ...transport.http import Response, request
from ...transport.plainhttp import PlainHttpConnection
from ..registry import TransportSpec, register
from . import parse

BUNDLED_CA = Path(__file__).with_name("homewizard-ca.pem")
_CERT_NAME = re.compile(r"appliance/[a-z0-9_.-]{1,40}/[a-z0-9_.-]{1,64}")
SYSTEM_REFRESH = 60.0  # seconds between reads of /api/system (Wi-Fi signal, uptime)
DEVICE_REFRESH = 3600.0  # seconds between reads of /api (firmware can change under us)
# Devices that control plug-in batteries (v2 `/api/batteries`). With batteries the group's power
# is read every poll; without (battery_count 0) once a minute, to notice one plugged in.
BATTERY_CONTROLLERS = ("HWE-P1", "HWE-KWH1", "HWE-KWH3")


@dataclass(frozen=True, kw_only=True, slots=True)
class HomeWizardSettings(Settings):
    host: str = setting("str", required=True, help="address of the device, optionally host:port")
    api_version: str = setting("str", default="auto", choices=("auto", "v1", "v2"),
                               help="auto: v2 when a token is set, else v1")
    token: Secret | None = setting("secret", help="API v2 token (see `energy-meter-exporter pair homewizard HOST`)")
    ca_file: str | None = setting("path", help="CA for v2 TLS (default: HomeWizard's CA, bundled)")
    tls_verify: bool = setting("bool", default=True, help="false turns off v2 certificate checks (logged)")
    serial: str | None = setting("str", help="expected serial; the v2 certificate name is checked against it")
    timezone: str | None = setting("timezone", help="time zone of the meter's timestamps (default: this host's)")


OPTIONS = HomeWizardSettings.table()


def check_target(options: Mapping[str, Any]):
    if options.get("api_version") == "v2" and not options.get("token"):
        yield "api_version", "API v2 needs a token (token or token_file); get one with `energy-meter-exporter pair homewizard HOST`"
    if options.get("api_version") == "v1" and options.get("token"):
        yield "token", "API v1 takes no token; remove it or set api_version: v2"
    ca = options.get("ca_file")
    if ca and not Path(ca).is_file():
        yield "ca_file", f"{ca} is not a readable file"


@dataclass
class _Device:
    info: DeviceInfo
    version: int


class HomeWizardLocal:
    def __init__(self, target: TargetConfig, ctx: AdapterContext) -> None:
        self.target = target
        self.ctx = ctx
        self.settings = settings = HomeWizardSettings.of(target)
        self.host = settings.host
        self.token = settings.token
        self.version_wanted = settings.api_version
        self.tz: tzinfo | None = ZoneInfo(settings.timezone) if settings.timezone else None
        self.device: _Device | None = None
        self.device_read_at = 0.0
        self.system: Reading | None = None
        self.system_read_at = 0.0
        self.batteries: Reading | None = None
        self.batteries_read_at = 0.0
        self.batteries_missing = False  # 404: firmware without the path, until the device is read again
        self._ssl_ca: ssl.SSLContext | None = None
        self._ssl_named: ssl.SSLContext | None = None
        self._warned_insecure = False
        # API v1 is plain HTTP: one lean keep-alive connection of its own (see plainhttp).
        self._plain: PlainHttpConnection | None = None

    # --- TLS -------------------------------------------------------------------------------
    def _tls(self, check_name: bool) -> ssl.SSLContext:
        if not self.settings.tls_verify:
            if not self._warned_insecure:
                self.ctx.log.warning("TLS verification of the device is turned off (tls_verify: false)")
                self._warned_insecure = True
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        cached = self._ssl_named if check_name else self._ssl_ca
        if cached is None:
            context = ssl.create_default_context(cafile=str(self.settings.ca_file or BUNDLED_CA))
            # HomeWizard's CA is an X.509 v1 certificate without extensions, which strict
            # verification (the default from Python 3.13) refuses; chain and name are still checked.
            if hasattr(ssl, "VERIFY_X509_STRICT"):
                context.verify_flags &= ~ssl.VERIFY_X509_STRICT
            context.check_hostname = check_name
            cached = context
            if check_name:
                self._ssl_named = context
            else:
                self._ssl_ca = context
        return cached

    def _cert_name(self) -> str | None:
        serial = self.settings.serial or (self.device.info.serial if self.device else None)
        model = self.device.info.model if self.device else None
        if not serial or not model:
            return None
        kind = parse.CERT_KINDS.get(model, model.lower())
        name = f"appliance/{kind}/{serial.lower()}"
        # The name goes to the TLS layer, which refuses (ValueError) what is not a host name.
        if not _CERT_NAME.fullmatch(name):
            configured = bool(self.settings.serial)
            raise PollError("config" if configured else "parse",
                            f"the serial {serial[:40]!r} cannot be a certificate name (letters and digits expected)")
        return name

    # --- requests --------------------------------------------------------------------------
    async def _get(self, version: int, path: str, authorized: bool) -> Response:
        if version == 1:
            if self._plain is None:
                self._plain = PlainHttpConnection(self.host, user_agent=f"energy-meter-exporter/{__version__}")
            return await self._plain.get(path)
        headers = {"X-Api-Version": "2"}
        name = None
        if authorized:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
            name = self._cert_name()
        context = self._tls(check_name=name is not None)
        return await request(self.ctx.session, "GET", f"https://{self.host}{path}", headers=headers,
                             ssl_context=context, server_hostname=name if context.check_hostname else None)

    def _error(self, version: int, path: str, resp: Response) -> PollError:
        try:
            code = parse.api_error(resp.json())
        except PollError:
            code = None
        where = f"{'http' if version == 1 else 'https'}://{self.host}{path}"
        if version == 1 and resp.status == 403 and code == "202":
            return PollError("api_disabled", f"{where}: the local API is switched off; enable it in the HomeWizard Energy app (Settings > Meters > Local API)")
        if resp.status == 401 or code == "user:unauthorized":
            return PollError("unauthorized", f"{where}: HTTP {resp.status} {code or ''}: the token was refused; pair again with `energy-meter-exporter pair homewizard {self.host}`".replace("  ", " "))
        if resp.status == 403:
            return PollError("unauthorized", f"{where}: HTTP 403 {code or ''}".rstrip())
        if resp.status == 404 and version == 1:
            return PollError("http_error", f"{where}: HTTP 404; this device may only speak API v2 (configure a token)")
        return PollError("http_error", f"{where}: HTTP {resp.status}{' ' + code if code else ''}")

    async def _identify(self) -> _Device:
        version = 2 if (self.version_wanted == "v2" or (self.version_wanted == "auto" and self.token)) else 1
        try:
            resp = await self._get(version, "/api", authorized=False)
        except PollError as exc:
            if version == 2 and exc.reason == "connection":
                raise PollError("config", f"{exc.message}; is this a device with API v2? Without a token the exporter uses API v1") from None
            raise
        if resp.status != 200:
            raise self._error(version, "/api", resp)
        payload = resp.json()
        try:
            info = parse.parse_device(payload)
            reported = parse.api_version(payload)
        except ParseError as exc:
            raise PollError("parse", str(exc)) from None
        if version == 1 and reported != 1:
            raise PollError("config", f"the device at {self.host} speaks API v2 only: pair with `energy-meter-exporter pair homewizard {self.host}` and configure the token")
        expected = self.settings.serial
        if expected and info.serial.lower() != expected.lower():
            raise PollError("config", f"the device at {self.host} reports serial {info.serial}, not {expected}")
        return _Device(info, version)

    async def poll(self) -> Reading:
        now = self.ctx.clock()
        if self.device is None or now - self.device_read_at > DEVICE_REFRESH:
            self.device = await self._identify()
            self.device_read_at = now
            self.batteries_missing = False
        device = self.device
        path = "/api/v1/data" if device.version == 1 else "/api/measurement"
        try:
            resp = await self._get(device.version, path, authorized=True)
        except PollError as exc:
            if exc.reason in ("connection", "tls"):
                self.device = None  # re-learn the device (it may have been replaced) next time
            raise
        if resp.status != 200:
            raise self._error(device.version, path, resp)
        try:
            if device.version == 1:
                reading = parse.parse_v1_data(resp.json(), self.tz)
            else:
                reading = parse.parse_v2_measurement(resp.json(), self.tz)
        except ParseError as exc:
            raise PollError("parse", f"{path}: {exc}") from None
        if device.version == 2:
            await self._refresh_system(now)
            if self.system is not None:
                reading.samples.extend(self.system.samples)
            if device.info.model in BATTERY_CONTROLLERS:
                await self._refresh_batteries(now)
                if self.batteries is not None:
                    reading.samples.extend(self.batteries.samples)
        reading.devices.append(device.info)
        return reading

    async def _refresh_system(self, now: float) -> None:
        """Wi-Fi and uptime change slowly: read them once a minute; a failure here is not fatal."""
        if self.system is not None and now - self.system_read_at < SYSTEM_REFRESH:
            return
        self.system_read_at = now
        try:
            resp = await self._get(2, "/api/system", authorized=True)
            self.system = parse.parse_v2_system(resp.json()) if resp.status == 200 else None
        except (PollError, ParseError) as exc:
            self.ctx.log.debug("reading /api/system failed", error=str(exc))
            self.system = None

    async def _refresh_batteries(self, now: float) -> None:
        """The battery group a P1 or kWh meter controls; a failure here is not fatal either."""
        if self.batteries_missing:
            return
        idle = self.batteries is not None and self.batteries.value_of(M.BATTERY_COUNT) == 0
        if idle and now - self.batteries_read_at < SYSTEM_REFRESH:
            return
        self.batteries_read_at = now
        try:
            resp = await self._get(2, "/api/batteries", authorized=True)
            self.batteries_missing = resp.status == 404
            self.batteries = parse.parse_v2_batteries(resp.json()) if resp.status == 200 else None
        except (PollError, ParseError) as exc:
            self.ctx.log.debug("reading /api/batteries failed", error=str(exc))
            self.batteries = None

    async def close(self) -> None:
        if self._plain is not None:
            self._plain.close()


SPEC = register(TransportSpec(
    vendor="homewizard", transport="local", options=OPTIONS,
    create=HomeWizardLocal, default_interval=10.0, min_interval=0.5,
    check_target=check_target,
    description="HomeWizard Energy P1 meter, kWh meters, water meter, socket, plug-in battery (API v1 and v2)",
))
