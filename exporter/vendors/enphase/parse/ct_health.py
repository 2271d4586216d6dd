"""The health of each current transformer, as `/ivp/meters` states it."""

from __future__ import annotations

from typing import Any

from ....model import catalogue as M
from ....model.jsontext import label_text
from ....model.samples import Reading, checked_list, checked_object
from .common import opt_list, opt_str

# The words the gateway uses (seen in captures, and as pyenphase lists them).
METERING_STATUSES = ("normal", "not-metering", "check-wiring")
STATUS_FLAGS = ("production-imbalance", "negative-production", "power-on-unused-phase",
                "negative-total-consumption")


def parse_ct_health(payload: Any) -> Reading:
    """`GET /ivp/meters`: `meteringStatus` and `statusFlags` of every enabled CT, labelled by
    its role like the CT readings (`meter`; a second CT of one role gets `-2`).

    Metering status: 1 for the status reported, 0 for the other known ones; flags: 1 for each
    flag raised, 0 for the known ones not raised. A word the list above lacks still gives its
    series (1). Disabled CTs give nothing: the gateway keeps stale statuses for them
    ("check-wiring" on a CT switched off, firmware 7.3.466), which are not a fault of the site."""
    rows = checked_list(payload, "/ivp/meters")
    reading = Reading()
    used: dict[str, int] = {}
    for index, row in enumerate(rows):
        what = f"meters[{index}]"
        row = checked_object(row, what)
        role = opt_str(row, "measurementType", what)
        state = opt_str(row, "state", what)
        if not role or (state is not None and state != "enabled"):
            continue
        role = label_text(role.strip(), 64)
        count = used.get(role, 0)
        used[role] = count + 1
        meter = role if count == 0 else f"{role}-{count + 1}"
        status = opt_str(row, "meteringStatus", what)
        if status is not None:
            status = label_text(status.strip(), 64)
            for known in dict.fromkeys((*METERING_STATUSES, status)):
                reading.add(M.CT_METERING_STATUS, int(known == status), meter=meter, status=known)
        if "statusFlags" in row:
            raised = [label_text(f.strip(), 64) for f in opt_list(row, "statusFlags", what) if isinstance(f, str)]
            for flag in dict.fromkeys((*STATUS_FLAGS, *raised)):
                reading.add(M.CT_STATUS_FLAG, int(flag in raised), meter=meter, flag=flag)
    return reading
