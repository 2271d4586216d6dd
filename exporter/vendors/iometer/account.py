"""The newest reading of every meter of an IOmeter Partner API account.

Readings arrive one meter at a time (a subscription message, a `readings` page) and may carry
only some registers; the daemon replaces a target's snapshot whole with each emitted Reading.
`AccountReadings` holds the newest state of each meter, merging partial deliveries, so that
every snapshot holds the whole account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from ...model.catalogue import DUPLICATE_READINGS, READINGS_RECEIVED
from ...model.samples import DeviceInfo, Reading, Sample
from .obis import ACCOUNT, Held, checked_registers, normalize, register_samples
from .parse import METER_MODEL, InstallationInfo, MeterReading


@dataclass(slots=True)
class _MeterState:
    installation: str
    label: str
    number: str
    time: float
    # Plain floats and strings in tuples of their own, which the garbage collector stops
    # tracking: 1,000 meters' registers cost its full passes nothing.
    registers: Held
    samples: list[Sample] | None = None  # built at the first snapshot after a change
    held: dict[str, Any] = field(default_factory=dict)  # last samples, for register_samples
    stamp_labels: tuple[tuple[str, str], ...] = ()
    info: DeviceInfo | None = None

    def relabel(self, installation: str, label: str) -> None:
        self.installation, self.label = installation, label
        self.held.clear()
        self.stamp_labels = ()
        self.info = None


@dataclass
class AccountReadings:
    """The newest reading of every meter of a Partner API target, and counts of what came in.

    A reading whose time is not newer than the one held for its meter (a replay after a
    reconnect, or a repeated delivery) never replaces it and is counted as a duplicate. A newer
    reading replaces the registers it carries and keeps the others (a meter may send its
    energy totals less often than its power). A reading is checked when it comes (a bad one is
    refused then, whole); its samples are built at the next snapshot, once per meter that
    changed: a meter may send many readings between two snapshots.
    """

    names: Mapping[str, str] = field(default_factory=dict)  # meter number -> label
    installations_allowed: Collection[str] | None = None
    obis_codes: Collection[str] | None = None  # decimal form
    received: int = 0
    duplicates: int = 0
    newest_time: float | None = None  # of any reading received: where a resume starts
    _meters: dict[str, _MeterState] = field(default_factory=dict)
    _installations: dict[str, InstallationInfo] = field(default_factory=dict)
    _meter_installation: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.obis_codes is not None:
            self.obis_codes = {normalize(code) for code in self.obis_codes}
        if self.installations_allowed is not None:
            self.installations_allowed = set(self.installations_allowed)

    def allowed(self, installation: str) -> bool:
        return self.installations_allowed is None or installation in self.installations_allowed

    def set_installations(self, installations: list[InstallationInfo]) -> None:
        self._installations = {i.id: i for i in installations if self.allowed(i.id)}
        for info in self._installations.values():
            for meter in info.meters:
                self._meter_installation[meter.id] = info.id
                if meter.number:
                    self._meter_installation.setdefault(meter.number, info.id)

    @property
    def installations(self) -> list[InstallationInfo]:
        return list(self._installations.values())

    def label_for(self, number: str, key: str) -> str:
        return self.names.get(number) or number or key

    def offer(self, item: MeterReading) -> bool:
        """Take a reading in; True if it became the newest of its meter."""
        self.received += 1
        if self.newest_time is None or item.time > self.newest_time:
            self.newest_time = item.time
        installation = (
            item.installation
            or self._meter_installation.get(item.key)
            or self._meter_installation.get(item.number)
            or ""
        )
        if not self.allowed(installation):
            return False
        held = self._meters.get(item.key)
        if held is not None and item.time <= held.time:
            self.duplicates += 1
            return False
        taken = checked_registers(item.registers, ACCOUNT, self.obis_codes)  # type: ignore[arg-type]
        label = self.label_for(item.number, item.key)
        if held is None:
            held = self._meters[item.key] = _MeterState(installation, label, item.number, item.time, {})
        elif held.installation != installation or held.label != label:
            held.relabel(installation, label)
        if held.number != item.number:
            held.number, held.info = item.number, None
        held.time = item.time
        held.registers.update(taken)
        held.samples = None
        return True

    def newest(self, key: str) -> float | None:
        held = self._meters.get(key)
        return held.time if held else None

    def snapshot(self) -> Reading:
        """Every meter's newest state, device states and the counters, as one Reading."""
        reading = Reading()
        chosen: dict[tuple[str, str], _MeterState] = {}
        for state in self._meters.values():
            key = (state.installation, state.label)
            other = chosen.get(key)
            if other is None or state.time > other.time:  # two meters, one name: newest wins
                chosen[key] = state
        infos: list[DeviceInfo] = []
        for state in chosen.values():
            samples = state.samples
            if samples is None:
                samples = state.samples = self._samples(state)
            reading.samples.extend(samples)
            if state.info is None:
                state.info = DeviceInfo(METER_MODEL, state.number, "", meter=state.label)
            infos.append(state.info)
        for installation in self._installations.values():
            reading.samples.extend(installation.devices.samples)
            infos.extend(installation.devices.devices)
            for meter in installation.meters:
                info = DeviceInfo(METER_MODEL, meter.number, "", meter=self.label_for(meter.number, meter.id))
                infos.append(info)
        reading.devices.extend(dict.fromkeys(infos))  # each once, in order
        reading.add(READINGS_RECEIVED, self.received)
        reading.add(DUPLICATE_READINGS, self.duplicates)
        return reading

    @staticmethod
    def _samples(state: _MeterState) -> list[Sample]:
        labels = {"installation": state.installation, "meter": state.label}
        samples = register_samples(state.registers, ACCOUNT, labels, state.held)
        if not state.stamp_labels:
            stamp = Reading()
            stamp.add(ACCOUNT.measurement_time, state.time, **labels)
            state.stamp_labels = stamp.samples[0].labels
        samples.append(Sample(ACCOUNT.measurement_time, state.stamp_labels, state.time))
        return samples
