"""The Modbus/TCP holding-register maps of IAMMETER meters (function 3, unit id 1, port 502).

Words are big endian and 32-bit values put the high word first. Three-phase meters (WEM3080T,
WEM3046T, WEM3050T) keep a block of ten registers per phase, then the frequency, the meter's
own totals, the reactive block and the runtime; the single-phase WEM3080 has registers 0..7
only. Sources: lewei50/ha_iammeter_modbus and wills106/homeassistant-iammeter-modbus, which
agree on the map; the reactive block and the runtime register come from the same notes and
are less well attested (their scaling is checked by nothing but the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- Three-phase map ---------------------------------------------------------------------------
PHASE_BLOCK_STARTS = (0, 10, 20)  # phases A, B, C
# Offsets inside a phase block.
PHASE_VOLTAGE = 0  # u16, 0.01 V
PHASE_CURRENT = 1  # u16, 0.01 A
PHASE_POWER = 2  # s32, W
PHASE_IMPORT = 4  # u32, 1/800 kWh
PHASE_EXPORT = 6  # u32, 1/800 kWh
PHASE_POWER_FACTOR = 8  # u16, 0.001
FREQUENCY = 30  # u16, 0.01 Hz
TOTAL_POWER = 32  # s32, W
TOTAL_IMPORT = 34  # u32, 1/800 kWh
TOTAL_EXPORT = 36  # u32, 1/800 kWh
REACTIVE_BLOCK_STARTS = (38, 44, 50)  # per phase: s32 var, u32 inductive, u32 capacitive
REACTIVE_POWER = 0
REACTIVE_INDUCTIVE = 2  # u32, 1/1000 kvarh
REACTIVE_CAPACITIVE = 4  # u32, 1/1000 kvarh
RUNTIME = 64  # u32, s

THREE_PHASE_CORE_COUNT = 38  # registers 0..37: phases, frequency, totals
THREE_PHASE_REACTIVE_END = 56  # registers 38..55 hold the reactive block
THREE_PHASE_FULL_COUNT = 66  # up to and including the runtime

THREE_PHASE_KWH_PER_COUNT = 1 / 800
REACTIVE_KVARH_PER_COUNT = 1 / 1000

# --- Single-phase map (WEM3080) --------------------------------------------------------------
SINGLE_VOLTAGE = 0  # u16, 0.01 V
SINGLE_CURRENT = 1  # u16, 0.01 A
SINGLE_POWER = 2  # s32, W
SINGLE_IMPORT = 4  # u32, 1/3200 kWh
SINGLE_EXPORT = 6  # u32, 1/3200 kWh
SINGLE_PHASE_COUNT = 8
SINGLE_PHASE_KWH_PER_COUNT = 1 / 3200


@dataclass(frozen=True)
class ReadPlan:
    """One holding-register read: where it starts and how many words it takes."""

    address: int
    count: int


THREE_PHASE_FULL = ReadPlan(0, THREE_PHASE_FULL_COUNT)
THREE_PHASE_CORE = ReadPlan(0, THREE_PHASE_CORE_COUNT)
SINGLE_PHASE = ReadPlan(0, SINGLE_PHASE_COUNT)


def u32(high: int, low: int) -> int:
    return (high << 16) | low


def s32(high: int, low: int) -> int:
    value = u32(high, low)
    return value - (1 << 32) if value & 0x80000000 else value


def words_of_u32(value: int) -> list[int]:
    """Two registers, high word first (the simulator's encoding; the inverse of `u32`)."""
    if not 0 <= value < (1 << 32):
        raise ValueError(f"{value} does not fit an unsigned 32-bit register pair")
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


def words_of_s32(value: int) -> list[int]:
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"{value} does not fit a signed 32-bit register pair")
    return words_of_u32(value & 0xFFFFFFFF)
