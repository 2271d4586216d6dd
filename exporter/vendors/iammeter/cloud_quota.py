"""The IAMMETER cloud's quotas: the seed's limits per API, the quota one call counts against,
and the check that configured intervals keep within them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ...config.loader import TargetConfig
from ...model.errors import PollError
from ...runtime.backoff import Backoff
from ...runtime.quota import Limit
from .cloud_settings import IammeterCloudSettings

# The seed's quotas, as the ledger counts them.
LOGIN_LIMITS = (Limit(5, 3600, "hour"), Limit(30, 86400, "day"))
METERDATA_LIMITS = (Limit(12, 3600, "hour"), Limit(288, 86400, "day"))
METERSDATA_LIMITS = (Limit(1, 300, "5m"),)
ANALYSIS_LIMITS = (Limit(5, 86400, "day"),)
ENERGY_HISTORY_LIMITS = (Limit(1, 3600, "hour"),)  # self-imposed: the seed names no quota

LOGIN = "iammeter_login"
METERDATA = "iammeter_meterdata"
METERSDATA = "iammeter_metersdata"
POWER_ANALYSIS = "iammeter_poweranalysis"
OFFLINE_ANALYSIS = "iammeter_offlineanalysis"
ENERGY_HISTORY = "iammeter_energyhistory"

MAX_HOLDOFF = 86400.0  # the longest hold-off after "nothing" answers
ADVANCED_LIMIT_NOTE = "meterdata and meterdata2 count together"


@dataclass(frozen=True)
class Quota:
    api: str
    scope: str
    limits: tuple[Limit, ...]

    @property
    def key(self) -> str:
        return f"{self.api}|{self.scope}"

    def describe(self) -> str:
        return ", ".join(limit.describe() for limit in self.limits)

    def holdoff(self) -> Backoff:
        """How long the call is held back after "nothing" answers: its shortest window first,
        doubling while the cloud keeps answering nothing, at most MAX_HOLDOFF. Exact, no jitter:
        the windows are the quota's own."""
        return Backoff(base=min(limit.seconds for limit in self.limits), ceiling=MAX_HOLDOFF)


class QuotaDeferred(PollError):
    """A call not made because it does not fit its quota yet (no request went out)."""

    def __init__(self, message: str) -> None:
        super().__init__("quota", message)



def window_text(limit: Limit) -> str:
    return {3600: "hour", 86400: "day", 300: "5 minutes"}.get(int(limit.seconds), f"{limit.seconds:g}s")


def check_config(config: Any) -> Iterable[tuple[tuple, str]]:
    """Intervals against the quotas, per account (metersdata) and per SN (meterdata), summed
    over the targets that share one (check_config runs only on a valid configuration, so the
    targets' positions are those of the file)."""
    users: dict[tuple[str, str, str], list[tuple[int, TargetConfig]]] = {}
    for index, target in enumerate(config.targets):
        if (target.vendor, target.transport) != ("iammeter", "cloud"):
            continue
        settings = IammeterCloudSettings.of(target)
        base = settings.base_url.rstrip("/")
        if settings.mode == "account":
            users.setdefault(("metersdata", base, settings.username), []).append((index, target))
        else:
            for sn in settings.sns:
                users.setdefault(("meterdata", base, sn), []).append((index, target))
    for (api, _, scope), sharing in users.items():
        limits = METERSDATA_LIMITS if api == "metersdata" else METERDATA_LIMITS
        for limit in limits:
            calls = sum(limit.seconds / target.interval for _, target in sharing)
            if calls <= limit.calls + 1e-9:
                continue
            needed = limit.seconds / limit.calls
            quota = f"{limit.calls} call{'s' if limit.calls > 1 else ''} per {window_text(limit)}"
            if api == "meterdata":
                quota += f" per meter ({ADVANCED_LIMIT_NOTE})"
            index, target = sharing[0]
            if len(sharing) == 1:
                message = (f"interval {target.interval:g}s would exceed {api}'s quota of {quota}; "
                           f"use an interval of {needed:g}s or more")
            else:
                names = ", ".join(t.name for _, t in sharing)
                what = f"account {scope}" if api == "metersdata" else f"meter {scope}"
                message = (f"targets {names} share {api}'s quota of {quota} for {what}: together they would "
                           f"call it {calls:.3g} times per {window_text(limit)}")
            yield ("targets", index, "interval"), message
            break
