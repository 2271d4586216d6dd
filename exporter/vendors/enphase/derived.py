"""Figures no single endpoint gives. Some need the answers of several endpoints (the site's
battery state over every kind of battery); some need more than one poll (a lifetime counter that
wraps). Each step sees the merged reading and the latest reading of every endpoint it came from,
and may add series to the merged reading or take them out; the steps run in order after the
merge, each with its own memory across polls.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

from ...model.samples import Reading
from ...runtime.state import StateDirectory
from .battery_site import BatterySite
from .endpoints.inverters import InvertersFromEveryList
from .lifetimes import WrappedLifetimes


class Step(Protocol):
    def __call__(self, merged: Reading, latest: Mapping[str, Reading]) -> None: ...


# Factories, one step object per adapter (a step may remember earlier polls, and keep what must
# outlive a restart in the state directory it is given), in running order.
STEPS: tuple[Callable[[StateDirectory], Step], ...] = (
    WrappedLifetimes,
    lambda state: BatterySite(),
    lambda state: InvertersFromEveryList(),
)


def new_steps(state: StateDirectory) -> list[Step]:
    return [make(state) for make in STEPS]


def finish(merged: Reading, latest: Mapping[str, Reading], steps: list[Step]) -> Reading:
    for step in steps:
        step(merged, latest)
    return merged
