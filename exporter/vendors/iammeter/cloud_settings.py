"""The IAMMETER cloud transport's options, and the checks of one target's options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ...config.loader import Secret, Settings, setting

DEFAULT_BASE_URL = "https://www.iammeter.com"

_SN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PLACE = re.compile(r"^\d{1,18}$")


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterCloudSettings(Settings):
    username: str = setting("str", required=True, help="IAMMETER account (user name)")
    password: Secret = setting("secret", required=True, help="password of the account")
    base_url: str = setting("str", default=DEFAULT_BASE_URL, help="the cloud's address")
    mode: str = setting("str", default="account", choices=("account", "meter"),
                        help="account: metersdata (all meters, 1 call per 5 min); meter: meterdata per SN "
                             "(12 calls per hour per SN)")
    sns: tuple[str, ...] = setting("list", default=(),
                                   help="SNs to export (mode meter: required; account: empty = all)")
    names: tuple[str, ...] = setting("list", default=(), help='meter label per SN, as "SN=name"')
    advanced: bool = setting("bool", default=True, help="mode meter: meterdata2 (with power factor)")
    analysis: bool = setting("bool", default=True,
                             help="also read powerAnalysis/offlineAnalysis (daily) and energyhistory (hourly)")
    places: tuple[str, ...] = setting("list", default=(), help='place ids for energyhistory, "ID" or "ID=name"')
    installation: str = setting("str", default="", help="value of the installation label of the meters")
    timezone: str = setting("timezone", default="", help="the account's time zone (IANA name; default: the system's)")


OPTIONS = IammeterCloudSettings.table()


def check_target(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    base = options.get("base_url")
    if isinstance(base, str):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            yield "base_url", f"{base!r} is not an http(s) address such as {DEFAULT_BASE_URL}"
    sns = tuple(options.get("sns") or ())
    for sn in sns:
        if not _SN.match(sn):
            yield "sns", f"{sn!r} is not a meter SN (letters and digits)"
    if len(set(sns)) != len(sns):
        yield "sns", "an SN is listed twice"
    if options.get("mode") == "meter" and not sns:
        yield "sns", "mode meter reads the meters listed in sns: list at least one (or use mode account)"
    seen = set()
    for entry in options.get("names") or ():
        sn, sep, name = entry.partition("=")
        if not sep or not sn.strip() or not name.strip():
            yield "names", f'{entry!r}: expected "SN=name"'
        elif sn.strip() in seen:
            yield "names", f"{sn.strip()} is named twice"
        seen.add(sn.strip())
    for entry in options.get("places") or ():
        place = entry.partition("=")[0].strip()
        if not _PLACE.match(place):
            yield "places", f'{entry!r}: expected a place id (digits), optionally "ID=name"'
