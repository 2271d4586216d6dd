"""The IAMMETER Modbus/TCP holding registers, as the meter writes them.

Written from the vendor's map as published with its Home Assistant integration
(lewei50/ha_iammeter_modbus; see protocol-facts "IAMMETER / Modbus/TCP"), not from the
exporter's decoder, so that the simulator and the exporter check each other. Each quantity is a
`Register`: where it sits, how wide it is, and how many counts make one unit. 16-bit registers
saturate (a meter shows its largest reading rather than wrapping); 32-bit ones take the high
word first and refuse a value they cannot hold.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Register:
    address: int
    kind: str  # "u16", "u32" or "s32"
    per_unit: float = 1.0  # counts per physical unit (100 for 0.01 V steps)

    def at(self, offset: int) -> "Register":
        return replace(self, address=self.address + offset)

    @property
    def width(self) -> int:
        return 1 if self.kind == "u16" else 2


# Three-phase meters (WEM3080T, WEM3046T, WEM3050T): one block of ten registers per phase.
PHASE_BLOCK = 10
PHASE_VOLTAGE = Register(0, "u16", 100)
PHASE_CURRENT = Register(1, "u16", 100)
PHASE_POWER = Register(2, "s32")
PHASE_IMPORTED = Register(4, "u32", 800)  # 1/800 kWh
PHASE_EXPORTED = Register(6, "u32", 800)
PHASE_POWER_FACTOR = Register(8, "u16", 1000)  # register 9 of each block is unused

FREQUENCY = Register(30, "u16", 100)
TOTAL_POWER = Register(32, "s32")
TOTAL_IMPORTED = Register(34, "u32", 800)
TOTAL_EXPORTED = Register(36, "u32", 800)

# Reactive measurement: six registers per phase from 38; 56..63 unused; then the runtime.
REACTIVE_BLOCK = 6
REACTIVE_START = 38
REACTIVE_POWER = Register(0, "s32")  # var
REACTIVE_INDUCTIVE = Register(2, "u32", 1000)  # 1/1000 kvarh
REACTIVE_CAPACITIVE = Register(4, "u32", 1000)
RUNTIME = Register(64, "u32")  # seconds

CORE_COUNT = 38  # phases, frequency and totals: what every three-phase meter answers
FULL_COUNT = 66  # up to the runtime

# The single-phase WEM3080: eight registers, energy in 1/3200 kWh.
SINGLE_VOLTAGE = Register(0, "u16", 100)
SINGLE_CURRENT = Register(1, "u16", 100)
SINGLE_POWER = Register(2, "s32")
SINGLE_IMPORTED = Register(4, "u32", 3200)
SINGLE_EXPORTED = Register(6, "u32", 3200)
SINGLE_COUNT = 8


def phase(register: Register, index: int) -> Register:
    """`register` in the block of phase `index` (0 = A)."""
    return register.at(index * PHASE_BLOCK)


def reactive(register: Register, index: int) -> Register:
    return register.at(REACTIVE_START + index * REACTIVE_BLOCK)


_PACKING = {"u32": ">I", "s32": ">i"}


def raw_words(kind: str, count: int) -> list[int]:
    """The register words holding the integer `count`."""
    if kind == "u16":
        return [min(max(count, 0), 0xFFFF)]
    try:
        packed = struct.pack(_PACKING[kind], count)
    except struct.error:
        raise ValueError(f"{count} does not fit a {kind} register pair") from None
    return list(struct.unpack(">HH", packed))


def put(words: list[int], register: Register, value: float) -> None:
    """Write `value` (in the register's unit) into `words`, rounded to the register's step."""
    count = round(value * register.per_unit)
    words[register.address:register.address + register.width] = raw_words(register.kind, count)
