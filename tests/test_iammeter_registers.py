"""IAMMETER Modbus register decoding: hand-built register images, then the simulator's encoding."""

from __future__ import annotations

import json

import pytest

from exporter.model import catalogue as M
from exporter.model.samples import ParseError
from exporter.vendors.iammeter.parse import (decode_single_phase, decode_three_phase, looks_single_phase,
                                             parse_monitorjson)
from simulators.iammeter import encode_single_phase, encode_three_phase, meter_state

KWH = 3.6e6


def three_phase_image() -> list[int]:
    """66 registers written by hand from the documented map."""
    words = [0] * 66
    # Phase A: 230.12 V, 5.25 A, -1000 W, 100000/800 kWh imported, 1600/800 exported, PF 0.950.
    words[0:9] = [23012, 525, 0xFFFF, 0xFC18, 0x0001, 0x86A0, 0, 1600, 950]
    # Phase B: 229.00 V, 1.00 A, 70000 W (needs the high word), 800/800 kWh, 0, PF 1.000.
    words[10:19] = [22900, 100, 0x0001, 0x1170, 0, 800, 0, 0, 1000]
    # Phase C: 231.50 V, 0 A, 0 W.
    words[20:29] = [23150, 0, 0, 0, 0, 0, 0, 0, 0]
    words[30] = 5002  # 50.02 Hz
    words[32:38] = [0x0001, 0x0D88, 0x0001, 0x89C0, 0, 1600]  # 69000 W, 100800/800 kWh, 2 kWh
    words[38:44] = [0xFFFF, 0xFF9C, 0, 1500, 0, 250]  # A: -100 var, 1.5 kvarh, 0.25 kvarh
    words[64:66] = [0x0001, 0x5180]  # 86400 s
    return words


def test_three_phase_image_decodes_to_base_units():
    reading = decode_three_phase(three_phase_image(), "WEM3080T")
    v = reading.value_of
    assert v(M.PHASE_VOLTAGE, phase="l1") == pytest.approx(230.12)
    assert v(M.PHASE_CURRENT, phase="l1") == pytest.approx(5.25)
    assert v(M.PHASE_ACTIVE_POWER, phase="l1") == -1000  # signed 32 bit, high word first
    assert v(M.PHASE_ACTIVE_POWER, phase="l2") == 70000
    assert v(M.PHASE_ENERGY_IMPORTED, phase="l1") == pytest.approx(125 * KWH)  # 100000 / 800 kWh
    assert v(M.PHASE_ENERGY_EXPORTED, phase="l1") == pytest.approx(2 * KWH)
    assert v(M.PHASE_POWER_FACTOR, phase="l1") == pytest.approx(0.95)
    assert v(M.FREQUENCY) == pytest.approx(50.02)
    assert v(M.ACTIVE_POWER) == 69000
    assert v(M.ENERGY_IMPORTED) == pytest.approx(126 * KWH)
    assert v(M.PHASE_REACTIVE_POWER, phase="l1") == -100
    assert v(M.PHASE_REACTIVE_ENERGY_INDUCTIVE, phase="l1") == pytest.approx(1.5 * KWH)
    assert v(M.PHASE_REACTIVE_ENERGY_CAPACITIVE, phase="l1") == pytest.approx(0.25 * KWH)
    assert v(M.DEVICE_UPTIME) == 86400
    assert reading.devices[0].model == "WEM3080T"


def test_core_registers_only_give_no_reactive_nor_uptime():
    reading = decode_three_phase(three_phase_image()[:38])
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l3") == pytest.approx(231.5)
    assert reading.value_of(M.PHASE_REACTIVE_POWER, phase="l1") is None
    assert reading.value_of(M.DEVICE_UPTIME) is None
    assert reading.devices == []


def test_single_phase_image_uses_the_3200_scale():
    words = [23512, 121, 0, 189, 0x003D, 0xC6C0, 0, 3200]  # 4048576 / 3200 = 1265.18 kWh
    reading = decode_single_phase(words)
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l1") == pytest.approx(235.12)
    assert reading.value_of(M.ACTIVE_POWER) == 189
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(4048576 / 3200 * KWH)
    assert reading.value_of(M.ENERGY_EXPORTED) == pytest.approx(1 * KWH)
    assert reading.devices[0].model == "WEM3080"


@pytest.mark.parametrize("words, needed", [
    (list(range(37)), "38 needed"),
    ([], "38 needed"),
])
def test_short_three_phase_read_is_a_parse_error(words, needed):
    with pytest.raises(ParseError, match=needed):
        decode_three_phase(words)


@pytest.mark.parametrize("words", [
    [0] * 7, [70000] + [0] * 7, [-1] + [0] * 7, [1.5] + [0] * 7, [True] + [0] * 7, "12345678", None,
])
def test_bad_single_phase_registers_are_parse_errors(words):
    with pytest.raises(ParseError):
        decode_single_phase(words)


def test_single_phase_meter_padding_with_zeros_is_recognised():
    padded = [23512, 121, 0, 189, 0, 100, 0, 0] + [0] * 30
    assert looks_single_phase(padded)
    assert not looks_single_phase(three_phase_image()[:38])


def test_simulator_registers_decode_to_the_json_values_within_resolution(conformance):
    state, raw = meter_state("WEM3080T", conformance=conformance)
    assert raw is not None  # the captured body is the source of the state
    from_json = parse_monitorjson(json.loads(raw))
    from_registers = decode_three_phase(encode_three_phase(state))
    resolution = {
        M.PHASE_VOLTAGE: 0.005, M.PHASE_CURRENT: 0.005, M.PHASE_ACTIVE_POWER: 0.5,
        M.PHASE_ENERGY_IMPORTED: KWH / 1600, M.PHASE_ENERGY_EXPORTED: KWH / 1600,
        M.PHASE_POWER_FACTOR: 0.0005, M.FREQUENCY: 0.005,
    }
    compared = 0
    for sample in from_json.samples:
        other = from_registers.value_of(sample.metric, **dict(sample.labels))
        assert other == pytest.approx(sample.value, abs=resolution[sample.metric] + 1e-9), sample
        compared += 1
    assert compared == 19


def test_single_phase_encoding_round_trips():
    state, _ = meter_state("WEM3080", conformance=None)
    reading = decode_single_phase(encode_single_phase(state))
    assert reading.value_of(M.PHASE_VOLTAGE, phase="l1") == pytest.approx(226.85)
    assert reading.value_of(M.ENERGY_IMPORTED) == pytest.approx(22920.38 * KWH, abs=KWH / 6400)
