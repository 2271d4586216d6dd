"""IAMMETER meters over Modbus/TCP (holding registers, function 3).

One TCP connection per meter, opened on the first poll and reused; after any failure it is
closed and the next poll opens a new one (the scheduler's backoff spaces the attempts, so
pymodbus' own background reconnection is switched off, and so are its retries: the poll's
timeout is the only one).

`model: auto` detects the register map on the first good read and keeps it:
1. read 66 registers (three-phase map with reactive block and runtime);
2. if the meter refuses that as "illegal address/value", read the 38 core registers;
3. if the meter refuses that too, or answers it with zero frequency and nothing beyond
   register 7 (a single-phase meter padding with zeros), it is a single-phase WEM3080,
   read as its 8 registers from then on.
The registers read while detecting are decoded, not read again. Until a detected map has
worked once, a failed poll detects again. A three-phase meter (detected or configured) that
refuses the 66-register read is read with the 38 core registers from then on; any other
refusal is an error (reason `modbus_exception`), as is a short answer (`parse`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from ...config.loader import Settings, TargetConfig, setting
from ...model.errors import PollError
from ...model.samples import ParseError, Reading
from ...runtime.context import AdapterContext
from ..registry import TransportSpec, register
from . import registers as reg
from .parse import THREE_PHASE_MODELS, decode_single_phase, decode_three_phase, looks_single_phase

MODELS = ("auto", "WEM3080", *THREE_PHASE_MODELS)


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterModbusSettings(Settings):
    host: str = setting("str", required=True, help="address of the meter")
    port: int = setting("int", default=502, minimum=1, help="Modbus/TCP port")
    unit_id: int = setting("int", default=1, minimum=0, help="Modbus unit (device) id")
    model: str = setting("str", default="auto", choices=MODELS,
                         help="register map: auto detects single- or three-phase on the first read")


OPTIONS = IammeterModbusSettings.table()

# Exception codes that say "these registers do not exist here" (illegal address or count).
_NO_SUCH_REGISTERS = (2, 3)
# Modbus exception codes, for messages.
_EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "device failure", 5: "acknowledge", 6: "device busy", 10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def check_target(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    port = options.get("port")
    if isinstance(port, int) and port > 65535:
        yield "port", f"{port} is not a TCP port (1..65535)"
    unit = options.get("unit_id")
    if isinstance(unit, int) and unit > 255:
        yield "unit_id", f"{unit} is not a Modbus unit id (0..255)"


class RefusedError(Exception):
    """The meter answered with a Modbus exception response."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class IammeterModbusAdapter:
    def __init__(self, target: TargetConfig, context: AdapterContext) -> None:
        self._context = context
        settings = IammeterModbusSettings.of(target)
        self._host = settings.host
        self._port = settings.port
        self._unit = settings.unit_id
        self._timeout = float(target.timeout)
        configured = settings.model
        # The plan in use: "wide" (66), "core" (38), "single" (8); None until detected.
        self._model = "" if configured == "auto" else configured
        self._plan: str | None = None if configured == "auto" else ("single" if configured == "WEM3080" else "wide")
        self._auto = configured == "auto"
        self._confirmed = False  # a read with the current map has succeeded
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return f"modbus://{self._host}:{self._port}/{self._unit}"

    async def poll(self) -> Reading:
        async with self._lock:
            try:
                reading = await self._poll()
            except BaseException:
                # Whatever went wrong (including a cancelled poll), a half-used connection may
                # still deliver a late answer: start clean next time, and detect again unless a
                # detected map has already worked.
                self._drop()
                if self._auto and not self._confirmed:
                    self._plan = None
                raise
            self._confirmed = True
            return reading

    async def close(self) -> None:
        self._drop()

    async def _poll(self) -> Reading:
        client = await self._connected()
        try:
            # Detection reads registers anyway; those of the detected map are used, not read twice.
            words = await self._detect(client) if self._plan is None else None
            if self._plan == "single":
                words = words[:reg.SINGLE_PHASE_COUNT] if words else await self._read(client, reg.SINGLE_PHASE)
                return self._decode(decode_single_phase, words, self._model or "WEM3080")
            if words is None and self._plan == "wide":
                try:
                    words = await self._read(client, reg.THREE_PHASE_FULL)
                except RefusedError as exc:
                    if exc.code not in _NO_SUCH_REGISTERS:
                        raise
                    # No reactive block / runtime on this meter: read the core from now on.
                    self._plan = "core"
                    self._context.log.info("iammeter_modbus_core_only", target=self.where)
            if words is None:
                words = await self._read(client, reg.THREE_PHASE_CORE)
            return self._decode(decode_three_phase, words, self._model)
        except RefusedError as exc:
            raise self._refused(exc) from None

    async def _detect(self, client: AsyncModbusTcpClient) -> list[int] | None:
        """Pick the register map; the words read for it, if any."""
        self._plan, words = "single", None
        for plan, read in (("wide", reg.THREE_PHASE_FULL), ("core", reg.THREE_PHASE_CORE)):
            try:
                words = await self._read(client, read)
            except RefusedError as exc:
                if exc.code not in _NO_SUCH_REGISTERS:
                    raise
                continue
            try:
                single = looks_single_phase(words)
            except ParseError as exc:
                raise PollError("parse", f"{self.where}: {exc}") from None
            self._plan = "single" if single else plan
            break
        self._model = "WEM3080" if self._plan == "single" else ""
        self._context.log.info("iammeter_modbus_map_detected", target=self.where, map=self._plan)
        return words

    def _decode(self, decode, words: list[int], model: str) -> Reading:
        try:
            return decode(words, model)
        except ParseError as exc:
            raise PollError("parse", f"{self.where}: {exc}") from None

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = AsyncModbusTcpClient(
            self._host, port=self._port, timeout=self._timeout, retries=0,
            reconnect_delay=0, name=f"iammeter {self._host}",
        )
        self._client = client  # so that a cancelled connect is closed too
        try:
            connected = await client.connect()
        except (ModbusException, OSError) as exc:
            raise PollError("connection", f"{self.where}: cannot connect: {_short(exc)}") from None
        if not connected:
            raise PollError("connection", f"{self.where}: cannot connect")
        return client

    async def _read(self, client: AsyncModbusTcpClient, plan: reg.ReadPlan) -> list[int]:
        try:
            response = await client.read_holding_registers(plan.address, count=plan.count, device_id=self._unit)
        except ConnectionException as exc:
            raise PollError("connection", f"{self.where}: connection lost: {_short(exc)}") from None
        except ModbusIOException as exc:
            raise PollError("timeout", f"{self.where}: no answer: {_short(exc)}") from None
        except asyncio.TimeoutError:
            raise PollError("timeout", f"{self.where}: no answer in time") from None
        except ModbusException as exc:
            raise PollError("parse", f"{self.where}: malformed answer: {_short(exc)}") from None
        except OSError as exc:
            raise PollError("connection", f"{self.where}: {exc.strerror or exc}") from None
        if response.isError():
            raise RefusedError(int(getattr(response, "exception_code", 0) or 0))
        words = list(getattr(response, "registers", None) or [])
        if len(words) != plan.count:
            raise PollError(
                "parse",
                f"{self.where}: short read: {len(words)} registers from {plan.address}, {plan.count} asked",
            )
        return words

    def _refused(self, exc: RefusedError) -> PollError:
        name = _EXCEPTION_NAMES.get(exc.code, "unknown exception")
        return PollError("modbus_exception", f"{self.where}: the meter refused the read: exception {exc.code} ({name})")

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _short(exc: BaseException) -> str:
    return str(exc).replace("Modbus Error: ", "")[:120]


def create(target: TargetConfig, context: AdapterContext) -> IammeterModbusAdapter:
    return IammeterModbusAdapter(target, context)


SPEC = register(TransportSpec(
    vendor="iammeter",
    transport="modbus",
    options=OPTIONS,
    create=create,
    default_interval=10.0,
    min_interval=1.0,
    check_target=check_target,
    description="IAMMETER meter over Modbus/TCP (holding registers)",
))
