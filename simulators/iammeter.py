"""IAMMETER meter simulators: the local HTTP API and Modbus/TCP, both showing one measurement.

`IammeterHttpSimulator` answers like the meter's web server: `/api/monitorjson`, `/api/monitor`,
`/api/wifidata`, `/api/ratio` (WEM3046T only) and the legacy `/monitorjson` (Basic auth
admin:admin, 401 otherwise). A WEM3162 (legacy firmware) has only `/monitorjson`. While the
measurement is untouched, the WEM3080T and the WEM3162 serve the captured bodies of
`conformance/iammeter/` byte for byte; after a change, or with NEM or reactive measurement on,
the body is rendered in the firmware's format. Without the conformance folder the same values
come from data embedded here.

`IammeterModbusSimulator` is a pymodbus Modbus/TCP server whose holding registers encode the
same `MeterState` (three-phase map, or the WEM3080's 8 registers), so a test can read one meter
both ways. Both classes have `async start(port=0) -> port`, `async stop()`, a mutable `state`
and a `fault` attribute for failure injection.

Demo: `python -m simulators.iammeter --model WEM3080T --http-port 8080 --modbus-port 5020`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from . import hostile
from . import iammeter_registers as reg
from .paths import CONFORMANCE

DEFAULT_CONFORMANCE = CONFORMANCE

# model -> (model code in `method`, phases)
MODELS: dict[str, tuple[int, int]] = {
    "WEM3080": (1, 1),
    "WEM3080T": (2, 3),
    "WEM3046T": (3, 3),
    "WEM2067": (5, 2),
    "WEM3162": (0, 1),  # legacy firmware: lower-case `data`, no model code
}
CORPUS_FILES = {
    "WEM3080T": "iammeter/wem3080t_i.75.97.9_monitorjson.json",
    "WEM3162": "iammeter/wem3162_legacy_data.json",
}
HTTP_FAULTS = ("garbage", "short_row", "nulls", "null_data", "string_value", "error500", "slow",
               *hostile.BODY_POISONS)
MODBUS_FAULTS = ("exception", "short", "absurd")


def poison_spots(document: dict[str, Any]) -> hostile.Spots:
    """Where a hostile mode poisons a measurement document: the firmware version (an info
    label), the import counter of the first row, the export counter of the second (or first),
    the power of the first."""
    if "Datas" in document:
        rows: tuple = ("Datas", 0)
        other: tuple = ("Datas", 1 if len(document["Datas"]) > 1 else 0)
    else:
        rows = other = ("Data",) if "Data" in document else ("data",)
    return hostile.Spots(("version",), rows + (3,), other + (4,), rows + (2,))


@dataclass
class PhaseValues:
    voltage: float
    current: float
    power: float
    imported_kwh: float
    exported_kwh: float
    frequency: float = 50.0
    power_factor: float = 1.0


@dataclass
class ReactiveValues:
    power_var: float
    inductive_kvarh: float
    capacitive_kvarh: float


@dataclass
class MeterState:
    """One meter's measurement and identity, shared by its HTTP and Modbus simulators."""

    model: str
    phases: list[PhaseValues]
    reactive: list[ReactiveValues] = field(default_factory=list)
    serial: str = "5DB50BF4"
    mac: str = "849DC2CEC3A6"
    firmware: str = "i.91.063T2"
    method: str | None = None  # "uploadsn" on old firmware; None = "<code>-<counter>"
    short_rows: bool = False  # old firmware: rows of 5 (no frequency, no power factor)
    nem: bool = False
    reactive_enabled: bool = False
    net_imported_kwh: float = 0.0
    net_exported_kwh: float = 0.0
    runtime_s: int = 86400
    signal: int = 80
    ssid: str = "home-wifi"
    ct_ratio: float = 1.0

    def net(self) -> PhaseValues:
        """The NEM row: algebraic power sum and the meter's own net counters."""
        power = sum(p.power for p in self.phases)
        apparent = sum(abs(p.voltage * p.current) for p in self.phases)
        pf = min(abs(power) / apparent, 1.0) if apparent else 1.0
        first = self.phases[0]
        return PhaseValues(first.voltage, 0.0, power, self.net_imported_kwh, self.net_exported_kwh,
                           first.frequency, round(pf, 2))

    def advance(self, seconds: float) -> None:
        """Let time pass: counters grow with the power (for the demo)."""
        for phase in self.phases:
            kwh = abs(phase.power) * seconds / 3.6e6
            if phase.power >= 0:
                phase.imported_kwh += kwh
            else:
                phase.exported_kwh += kwh
        total = sum(p.power for p in self.phases) * seconds / 3.6e6
        if total >= 0:
            self.net_imported_kwh += total
        else:
            self.net_exported_kwh -= total
        self.runtime_s += int(seconds)


def meter_state(model: str = "WEM3080T", *, nem: bool = False, reactive: bool = False,
                conformance: Path | None = DEFAULT_CONFORMANCE) -> tuple[MeterState, bytes | None]:
    """A starting state for `model` and the captured body it came from (None if embedded)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} (one of {', '.join(MODELS)})")
    raw: bytes | None = None
    name = CORPUS_FILES.get(model)
    if name and conformance is not None and (conformance / name).is_file():
        raw = (conformance / name).read_bytes()
        document = json.loads(raw)
    else:
        document = _EMBEDDED[model]
    state = _state_from_document(model, document)
    state.nem = nem
    state.reactive_enabled = reactive
    # Net counters start below the phase sums: netting cancels import against export.
    state.net_imported_kwh = round(sum(p.imported_kwh for p in state.phases) * 0.8, 3)
    state.net_exported_kwh = round(sum(p.exported_kwh for p in state.phases) * 0.8, 3)
    return state, raw


def _state_from_document(model: str, document: dict) -> MeterState:
    rows = document.get("Datas") or [document.get("Data") or document.get("data")]
    phases = []
    for row in rows:
        values = list(row) + [50.0, 1.0] if len(row) == 5 else list(row)
        phases.append(PhaseValues(*[float(v) for v in values[:7]]))
    reactive = [ReactiveValues(-abs(p.power) * 0.2, round(p.imported_kwh * 0.1, 3), round(p.imported_kwh * 0.3, 3))
                for p in phases]
    state = MeterState(model=model, phases=phases, reactive=reactive,
                       serial=str(document.get("SN", "")), mac=str(document.get("mac", "")),
                       firmware=str(document.get("version", "")),
                       method="uploadsn" if document.get("method") == "uploadsn" else None,
                       short_rows=all(len(r) == 5 for r in rows))
    return state


# Bodies used when the conformance folder is absent, and for models without a capture.
_EMBEDDED: dict[str, dict] = {
    "WEM3080T": {  # the same values as conformance/iammeter/wem3080t_i.75.97.9_monitorjson.json
        "method": "uploadsn", "mac": "B0F8933C4F94", "version": "i.75.97.9", "server": "em", "SN": "3E0BAF87",
        "Datas": [[220.0, 9.99, 2198, 11.337, 11.201, 49.99, 1.00],
                  [222.5, 9.99, 1100, 11.039, 10.908, 49.99, 0.50],
                  [263.5, 9.99, 1213, 10.975, 10.846, 49.99, 0.55]],
    },
    "WEM3162": {"status": "succeed", "data": [235.00, 1.214, 189, 1265.17, 0.00]},
    "WEM3080": {
        "method": "1-272", "mac": "B0F8932A295C", "version": "i.91.063T2", "server": "em", "SN": "DA2BED94",
        "Data": [226.85, 1.31, 152.0, 22920.38, 0.00, 49.97, 0.51],
    },
    "WEM3046T": {
        "method": "3-17", "mac": "B0F893118F20", "version": "i.91.063T2", "server": "em", "SN": "7A30C2E1",
        "Datas": [[231.4, 48.2, 10512.0, 38211.125, 1200.5, 50.01, 0.94],
                  [230.9, 51.7, 11303.0, 40133.75, 1180.25, 50.01, 0.95],
                  [232.1, 45.1, -9630.0, 35870.0, 2250.875, 50.01, 0.92]],
    },
    "WEM2067": {
        "method": "5-3", "mac": "B0F8930A11C3", "version": "i.91.063T2", "server": "em", "SN": "2C67A0B5",
        "Datas": [[121.2, 12.4, 1450.0, 5321.5, 12.25, 60.0, 0.96],
                  [120.8, 8.1, -930.0, 4410.125, 850.0, 60.0, 0.95]],
    },
}


# --- HTTP ---------------------------------------------------------------------------------------


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


class IammeterHttpSimulator:
    """The meter's local web server on 127.0.0.1."""

    def __init__(self, model: str = "WEM3080T", *, nem: bool = False, reactive: bool = False,
                 state: MeterState | None = None, conformance: Path | None = DEFAULT_CONFORMANCE,
                 username: str = "admin", password: str = "admin") -> None:
        if state is None:
            state, raw = meter_state(model, nem=nem, reactive=reactive, conformance=conformance)
        else:
            raw = None
        self.model = model
        self.state = state
        self._raw = raw
        self._pristine = copy.deepcopy(state)
        self.username, self.password = username, password
        self.fault: str | None = None
        self.slow_seconds = 5.0
        self.requests: list[str] = []  # paths asked, in order
        self._counter = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def legacy(self) -> bool:
        return self.model == "WEM3162"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_get("/monitorjson", self._legacy_monitorjson)
        if not self.legacy:
            app.router.add_get("/api/monitorjson", self._monitorjson)
            app.router.add_get("/api/monitor", self._monitor)
            app.router.add_get("/api/wifidata", self._wifidata)
            if self.model == "WEM3046T":
                app.router.add_get("/api/ratio", self._ratio)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port or 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # The measurement document ------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The measurement as the firmware would send it now (before faults)."""
        state = self.state
        if self.legacy:
            return {"status": "succeed", "data": self._row(state.phases[0])}
        self._counter += 1
        code = MODELS[self.model][0]
        doc: dict[str, Any] = {
            "method": state.method or f"{code}-{self._counter}",
            "mac": state.mac, "version": state.firmware, "server": "em", "SN": state.serial,
        }
        if len(state.phases) == 1:
            doc["Data"] = self._row(state.phases[0])
        else:
            rows = [self._row(p) for p in state.phases]
            if state.nem:
                rows.append(self._row(state.net()))
            doc["Datas"] = rows
        if state.reactive_enabled:
            reactive = [[round(r.power_var, 1), round(r.inductive_kvarh, 3), round(r.capacitive_kvarh, 3)]
                        for r in state.reactive[:len(state.phases)]]
            doc["EA"] = {"Reactive": reactive}
        return doc

    def _row(self, p: PhaseValues) -> list[float]:
        row = [round(p.voltage, 2), round(p.current, 3), round(p.power, 1),
               round(p.imported_kwh, 3), round(p.exported_kwh, 3)]
        if not self.state.short_rows:
            row += [round(p.frequency, 2), round(p.power_factor, 2)]
        return row

    def _body(self, extra: dict[str, Any] | None = None) -> bytes:
        pristine = self.state == self._pristine and not self.state.nem and not self.state.reactive_enabled
        if self._raw is not None and pristine and extra is None and self.fault is None:
            return self._raw  # the captured answer, byte for byte
        doc = self.document()
        if extra:
            doc = {**extra, **doc}
        doc = self._apply_fault(doc)
        return _firmware_json(doc).encode()

    def _apply_fault(self, doc: dict[str, Any]) -> dict[str, Any]:
        key = next((k for k in ("Datas", "Data", "data") if k in doc), None)
        if key is None:
            return doc
        rows = doc[key] if key == "Datas" else [doc[key]]
        if self.fault == "short_row":
            rows[0] = rows[0][:4]
        elif self.fault == "nulls":
            rows = [[None] * len(r) for r in rows]
        elif self.fault == "string_value":
            rows[0][0] = "230,1"
        elif self.fault == "null_data":
            doc[key] = None
            return doc
        doc[key] = rows if key == "Datas" else rows[0]
        return doc

    # Handlers --------------------------------------------------------------------------------

    async def _measurement(self, request: web.Request, extra: dict[str, Any] | None = None) -> web.Response:
        self.requests.append(request.path)
        if self.fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        if self.fault == "error500":
            return web.Response(status=500, text="Internal Server Error")
        if self.fault == "garbage":
            return web.Response(status=200, body=b"<html><body>busy\x00\xff</body></html>",
                                content_type="text/html", headers=_CORS)
        if self.fault in hostile.BODY_POISONS:
            doc = self.document()
            doc = {**extra, **doc} if extra else doc
            return _json_response(hostile.poisoned(doc, self.fault, poison_spots(doc)))
        return _json_response(self._body(extra))

    async def _monitorjson(self, request: web.Request) -> web.Response:
        return await self._measurement(request)

    async def _legacy_monitorjson(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.requests.append(request.path)
            return web.Response(status=401, text="401 Unauthorized",
                                headers={"WWW-Authenticate": 'Basic realm="IAMMETER"'})
        return await self._measurement(request)

    async def _monitor(self, request: web.Request) -> web.Response:
        extra = {"ssid": self.state.ssid, "sig": self.state.signal, "model": self.model}
        return await self._measurement(request, extra)

    async def _wifidata(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        s = self.state
        doc = {"version": s.firmware, "SN": s.serial, "mac": s.mac, "type": "PM", "ssid": s.ssid,
               "ip": "192.168.1.100", "netmask": "255.255.255.0", "gw": "192.168.1.1",
               "dns": "192.168.1.1", "dhcp": 1, "runMode": "standalone", "netmeter": int(s.nem),
               "uploadinterval": 60}
        return _json_response(json.dumps(doc, separators=(",", ":")).encode())

    async def _ratio(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        ratio = self.state.ct_ratio
        return _json_response(json.dumps({"CTratio": int(ratio) if ratio == int(ratio) else ratio}).encode())

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.username and password == self.password


_CORS = {"Access-Control-Allow-Origin": "*"}


def _json_response(body: bytes) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/json", headers=_CORS)


def _firmware_json(doc: dict[str, Any]) -> str:
    """Compact JSON with the firmware's fixed decimals in measurement rows."""
    def row(values: list[Any], decimals: tuple[int, ...]) -> str:
        out = []
        for v, d in zip(values, decimals + (2,) * len(values)):
            out.append(_fmt(v, d) if isinstance(v, float) else json.dumps(v))
        return "[" + ",".join(out) + "]"

    parts = []
    for key, value in doc.items():
        if key in ("Datas", "Data", "data") and isinstance(value, list):
            if key == "Datas":
                text = "[" + ",".join(row(r, (1, 3, 1, 3, 3, 2, 2)) if isinstance(r, list) else json.dumps(r)
                                      for r in value) + "]"
            else:
                text = row(value, (2, 3, 1, 3, 3, 2, 2))
        else:
            text = json.dumps(value, separators=(",", ":"))
        parts.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(parts) + "}"


# --- Modbus/TCP -------------------------------------------------------------------------------


def encode_three_phase(state: MeterState, *, wide: bool = True) -> list[int]:
    """The three-phase register map for `state` (66 registers, or the 38 core ones)."""
    words = [0] * (reg.FULL_COUNT if wide else reg.CORE_COUNT)
    phases = (state.phases + [PhaseValues(0, 0, 0, 0, 0, 0, 0)] * 3)[:3]
    for index, p in enumerate(phases):
        reg.put(words, reg.phase(reg.PHASE_VOLTAGE, index), p.voltage)
        reg.put(words, reg.phase(reg.PHASE_CURRENT, index), p.current)
        reg.put(words, reg.phase(reg.PHASE_POWER, index), p.power)
        reg.put(words, reg.phase(reg.PHASE_IMPORTED, index), p.imported_kwh)
        reg.put(words, reg.phase(reg.PHASE_EXPORTED, index), p.exported_kwh)
        reg.put(words, reg.phase(reg.PHASE_POWER_FACTOR, index), abs(p.power_factor))
    reg.put(words, reg.FREQUENCY, state.phases[0].frequency)
    # The meter's totals: the algebraic power sum, and the energy of that sum: with net metering
    # on, the same net counters the JSON's net row carries (not the sums of the phase counters).
    reg.put(words, reg.TOTAL_POWER, sum(p.power for p in state.phases))
    if state.nem:
        reg.put(words, reg.TOTAL_IMPORTED, state.net_imported_kwh)
        reg.put(words, reg.TOTAL_EXPORTED, state.net_exported_kwh)
    else:
        reg.put(words, reg.TOTAL_IMPORTED, sum(p.imported_kwh for p in state.phases))
        reg.put(words, reg.TOTAL_EXPORTED, sum(p.exported_kwh for p in state.phases))
    if wide:
        for index, r in enumerate(state.reactive[:3] if state.reactive_enabled else []):
            reg.put(words, reg.reactive(reg.REACTIVE_POWER, index), r.power_var)
            reg.put(words, reg.reactive(reg.REACTIVE_INDUCTIVE, index), r.inductive_kvarh)
            reg.put(words, reg.reactive(reg.REACTIVE_CAPACITIVE, index), r.capacitive_kvarh)
        reg.put(words, reg.RUNTIME, int(state.runtime_s))
    return words


def encode_single_phase(state: MeterState) -> list[int]:
    """The WEM3080's registers 0..7 for `state` (1/3200 kWh)."""
    p = state.phases[0]
    words = [0] * reg.SINGLE_COUNT
    reg.put(words, reg.SINGLE_VOLTAGE, p.voltage)
    reg.put(words, reg.SINGLE_CURRENT, p.current)
    reg.put(words, reg.SINGLE_POWER, p.power)
    reg.put(words, reg.SINGLE_IMPORTED, p.imported_kwh)
    reg.put(words, reg.SINGLE_EXPORTED, p.exported_kwh)
    return words


class IammeterModbusSimulator:
    """A pymodbus Modbus/TCP server on 127.0.0.1 holding the registers of `state`.

    `wide=False` leaves out the reactive block and runtime (reads beyond register 37 are then
    refused, like a meter without them). `fault = "exception"` answers every read with
    exception 4 (device failure); `fault = "short"` answers with only 5 registers; `fault =
    "absurd"` answers with the total import at its largest value (a jump no meter can make)
    and the first phase's import back at 0.
    """

    def __init__(self, state: MeterState, *, single_phase: bool | None = None, wide: bool = True) -> None:
        self.state = state
        self.single_phase = len(state.phases) == 1 if single_phase is None else single_phase
        self.wide = wide
        self.fault: str | None = None
        self.reads: list[tuple[int, int]] = []  # (address, count) of each read
        self._server: ModbusTcpServer | None = None
        self.port = 0

    def registers(self) -> list[int]:
        return encode_single_phase(self.state) if self.single_phase else encode_three_phase(self.state, wide=self.wide)

    async def start(self, port: int = 0) -> int:
        size = len(self.registers())
        # id 0 answers any unit id, as the meter does.
        device = SimDevice(0, simdata=[SimData(0, values=[0] * size, datatype=DataType.REGISTERS)],
                           action=self._action)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", port or self.port or 0),
                                       trace_pdu=self._trace_pdu)
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
            # Give the closed connections' callbacks a moment to run, so that a client sees
            # the meter gone (as after a reboot) rather than a half-open socket.
            await asyncio.sleep(0.05)

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the meter's registers are read-only
        self.reads.append((address, count))
        if self.fault == "exception":
            return ExcCodes.DEVICE_FAILURE
        words = self.registers()
        if self.fault == "absurd":
            imported = reg.SINGLE_IMPORTED if self.single_phase else reg.TOTAL_IMPORTED
            words[imported.address:imported.address + 2] = reg.raw_words("u32", 0xFFFFFFFF)
            if not self.single_phase:
                first = reg.phase(reg.PHASE_IMPORTED, 0)
                words[first.address:first.address + 2] = reg.raw_words("u32", 0)
        registers[:len(words)] = words
        return None

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if sending and self.fault == "short" and getattr(pdu, "registers", None):
            pdu.registers = pdu.registers[:5]
        return pdu


# --- Demo runner ------------------------------------------------------------------------------


async def _demo(model: str, http_port: int, modbus_port: int, nem: bool, reactive: bool) -> None:
    http = IammeterHttpSimulator(model, nem=nem, reactive=reactive)
    modbus = IammeterModbusSimulator(http.state) if model != "WEM3162" else None
    print(f"{model} HTTP on http://127.0.0.1:{await http.start(http_port)}/api/monitorjson")
    if modbus is not None:
        print(f"{model} Modbus/TCP on 127.0.0.1:{await modbus.start(modbus_port)}")
    try:
        while True:
            await asyncio.sleep(1)
            http.state.advance(1)
    finally:
        await http.stop()
        if modbus is not None:
            await modbus.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulate an IAMMETER meter (HTTP and Modbus/TCP).")
    parser.add_argument("--model", default="WEM3080T", choices=sorted(MODELS))
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--modbus-port", type=int, default=5020)
    parser.add_argument("--nem", action="store_true", help="net metering on (a net row follows the phases)")
    parser.add_argument("--reactive", action="store_true", help="reactive measurement on (EA.Reactive)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_demo(args.model, args.http_port, args.modbus_port, args.nem, args.reactive))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
