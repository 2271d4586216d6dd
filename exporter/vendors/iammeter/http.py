"""IAMMETER local HTTP API: `GET /api/monitorjson` every poll, identity, Wi-Fi and CT ratio now and then.

Every poll reads the measurement. Once per `info_interval` (and after the first good poll) the
same poll also reads `/api/wifidata` (serial, firmware for meters whose measurement JSON lacks
them, upload mode and interval) and, on a WEM3046T, `/api/ratio`. Every `WIFI_INTERVAL` (or
`info_interval` if shorter) it reads `/api/monitor` for the Wi-Fi signal (`sig`); a meter that
answers it with 404 has no such path and is asked again only after `info_interval`. Those extra
reads are optional: they only get what is left of the poll's timeout (less a margin, so that
the poll itself never runs over), and when they fail the poll still succeeds with what it has -
the last figures read, or none yet - and they are tried again after at most five minutes.

`legacy: true` reads `/monitorjson` with Basic auth (admin/admin unless configured), the only
path of old firmware such as the WEM3162's; legacy meters have no `/api/wifidata`, so none is
read. Without `legacy`, credentials are sent only when a password is configured (newer
firmware can protect its configuration endpoints with "Admin Security").
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ...config.loader import Secret, Settings, TargetConfig, setting
from ...model.catalogue import WIFI_RSSI, WIFI_SIGNAL
from ...model.errors import PollError
from ...model.samples import DeviceInfo, ParseError, Reading, Sample
from ...runtime.backoff import Deadline
from ...runtime.context import AdapterContext
from ...transport.http import request, status_error
from ..registry import TransportSpec, register
from .parse import WifiData, parse_monitor, parse_monitorjson, parse_ratio, parse_wifidata

INFO_RETRY_AFTER_FAILURE = 300.0  # seconds; sooner than a long info_interval, not every poll
# Extra reads need at least this much of the poll's time budget to be tried at all, and end
# before this share of the timeout has passed (the scheduler cancels the poll at 100 %).
MIN_INFO_BUDGET = 0.2
INFO_SHARE_OF_TIMEOUT = 0.8
# The Wi-Fi signal moves more than the identity does, but a meter's small web server should
# not answer a second measurement every poll for it: every five minutes.
WIFI_INTERVAL = 300.0


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterHttpSettings(Settings):
    host: str = setting("str", required=True, help="address of the meter, with :port if not 80")
    legacy: bool = setting("bool", default=False, help="old firmware: read /monitorjson with Basic auth")
    username: str | None = setting("str", help="Basic auth user (legacy default: admin)")
    password: Secret | None = setting("secret", help="Basic auth password (legacy default: admin)")
    info_interval: float = setting(
        "duration", default=3600.0, minimum=1.0,
        help="how often the identity (/api/wifidata) and CT ratio (/api/ratio) are read")


OPTIONS = IammeterHttpSettings.table()

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(:\d{1,5})?$")


def check_target(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    host = options.get("host")
    if isinstance(host, str) and not _HOST.match(host):
        yield "host", f"{host!r} is not a host name or address with an optional :port (no scheme, no path)"
    elif isinstance(host, str) and ":" in host.rsplit("]", 1)[-1]:
        port = int(host.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            yield "host", f"port {port} is out of range"
    if options.get("username") and not options.get("password") and not options.get("legacy"):
        yield "password", "a username without a password is never sent; give both"


class IammeterHttpAdapter:
    def __init__(self, target: TargetConfig, context: AdapterContext) -> None:
        self._context = context
        self._timeout = target.timeout
        settings = IammeterHttpSettings.of(target)
        self._base = f"http://{settings.host}"
        self._legacy = settings.legacy
        self._info_interval = float(settings.info_interval)
        self._headers = _auth_headers(settings.username, settings.password, self._legacy)
        self._lock = asyncio.Lock()  # one request in flight per meter, whatever the caller does
        self._info_due = 0.0  # clock time of the next identity/ratio read; 0 = after the next poll
        self._wifi: WifiData | None = None
        self._wifi_figures: list[Sample] = []  # upload mode and interval (and sig) of /api/wifidata
        self._extra: list[Sample] = []  # CT ratio, kept between its reads
        self._missing_path = False  # the last optional read was answered with 404
        self._wifi_due = 0.0  # clock time of the next /api/monitor read
        self._signal: list[Sample] = []  # the Wi-Fi signal of /api/monitor, kept between its reads

    @property
    def url(self) -> str:
        return self._base + ("/monitorjson" if self._legacy else "/api/monitorjson")

    async def poll(self) -> Reading:
        async with self._lock:
            deadline = Deadline.from_now(self._timeout)
            payload = await self._get_json(self.url)
            try:
                reading = parse_monitorjson(payload)
            except ParseError as exc:
                raise PollError("parse", f"{self.url}: {exc}") from None
            if not self._legacy and self._context.clock() >= self._info_due:
                await self._refresh_info(reading, deadline)
            if not self._legacy and self._context.clock() >= self._wifi_due:
                await self._refresh_signal(deadline)
            return self._merged(reading)

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the daemon."""

    async def _get_json(self, url: str) -> Any:
        resp = await request(self._context.session, "GET", url, headers=self._headers)
        if resp.status != 200:
            raise status_error(url, resp)
        return resp.json()

    async def _refresh_info(self, reading: Reading, deadline: Deadline) -> None:
        model = reading.devices[0].model if reading.devices else ""
        ok = await self._optional(self._base + "/api/wifidata", deadline, self._take_wifidata)
        if model == "WEM3046T":
            ok = await self._optional(self._base + "/api/ratio", deadline, self._take_ratio) and ok
        else:
            self._extra = []
        retry = self._info_interval if ok else min(self._info_interval, INFO_RETRY_AFTER_FAILURE)
        self._info_due = self._context.clock() + retry

    async def _refresh_signal(self, deadline: Deadline) -> None:
        self._missing_path = False
        ok = await self._optional(self._base + "/api/monitor", deadline, self._take_monitor)
        if ok:
            retry = min(self._info_interval, WIFI_INTERVAL)
        elif self._missing_path:
            self._signal = []
            retry = self._info_interval
        else:
            retry = min(self._info_interval, INFO_RETRY_AFTER_FAILURE)
        self._wifi_due = self._context.clock() + retry

    async def _optional(self, url: str, deadline: Deadline, take) -> bool:
        budget = deadline.left(INFO_SHARE_OF_TIMEOUT)
        if budget < MIN_INFO_BUDGET:
            return False
        try:
            payload = await asyncio.wait_for(self._get_json(url), budget)
            take(payload)
            return True
        except asyncio.TimeoutError:
            self._context.log.info("iammeter_info_read_failed", url=url, reason="timeout")
        except PollError as exc:
            self._missing_path = exc.message.endswith("HTTP 404")
            self._context.log.info("iammeter_info_read_failed", url=url, reason=exc.reason, error=exc.message)
        except ParseError as exc:
            self._context.log.info("iammeter_info_read_failed", url=url, reason="parse", error=str(exc))
        return False

    def _take_monitor(self, payload: Any) -> None:
        # Only the signal: the measurement in the same answer is the one this poll already read.
        self._signal = [s for s in parse_monitor(payload).samples if s.metric in (WIFI_SIGNAL, WIFI_RSSI)]

    def _take_wifidata(self, payload: Any) -> None:
        self._wifi = parse_wifidata(payload)
        self._wifi_figures = self._wifi.reading().samples  # built once per read, not per poll

    def _take_ratio(self, payload: Any) -> None:
        self._extra = list(parse_ratio(payload).samples)

    def _merged(self, reading: Reading) -> Reading:
        reading.samples.extend(self._extra)
        signal = self._signal
        if self._wifi is not None:
            figures = self._wifi_figures
            if signal:  # /api/monitor's signal is the newer one
                figures = [s for s in figures if s.metric not in (WIFI_SIGNAL, WIFI_RSSI)]
            reading.samples.extend(figures)
        reading.samples.extend(signal)
        if self._wifi is not None:
            own = reading.devices[0] if reading.devices else DeviceInfo()
            # The measurement's own identity wins; wifidata fills what it lacks.
            merged = DeviceInfo(
                model=own.model,
                serial=own.serial or self._wifi.serial,
                firmware=own.firmware or self._wifi.firmware,
            )
            reading.devices[:1] = [merged]
        return reading


def _auth_headers(username: Any, password: Any, legacy: bool) -> dict[str, str] | None:
    """The Basic auth header, built here because aiohttp deprecates its `auth=` argument."""
    secret = password.reveal() if isinstance(password, Secret) else password
    if not secret and not legacy:
        return None
    credentials = f"{username or 'admin'}:{secret or 'admin'}".encode("utf-8")
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")}


def create(target: TargetConfig, context: AdapterContext) -> IammeterHttpAdapter:
    return IammeterHttpAdapter(target, context)


SPEC = register(TransportSpec(
    vendor="iammeter",
    transport="http",
    options=OPTIONS,
    create=create,
    default_interval=10.0,
    min_interval=1.0,
    check_target=check_target,
    description="IAMMETER meter, local HTTP API (/api/monitorjson; legacy /monitorjson)",
))
