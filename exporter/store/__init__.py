"""The snapshot store: per target, the last good reading and the state of its polling.

A successful poll (or push message) replaces the target's snapshot whole and re-renders its
lines in the family cache; a failure only changes the target's own status series. Series of a
target that has not succeeded for `stale_after` are removed by `expire()`, so a dead meter does
not show a frozen value forever.
"""

from .snapshots import CEILING_SECONDS, COUNTER_RESET_GRACE, RETIRED_MIN, Notice, SnapshotStore
from .targetstate import DEFAULT_MAX_POWER, TargetState

__all__ = ["CEILING_SECONDS", "COUNTER_RESET_GRACE", "DEFAULT_MAX_POWER", "RETIRED_MIN", "Notice", "SnapshotStore",
           "TargetState"]
