"""HomeWizard Energy device simulator: API v1 on HTTP and API v2 on HTTPS, on loopback.

Answers with the bodies of real devices (`data/homewizard/`), the same paths, status codes and
error bodies: v1 403 `{"error":{"id":202,...}}` when the local API is off, v2 401
`{"error":"user:unauthorized"}` for a missing or wrong token, 403 `user:creation-not-enabled`
from `POST /api/user` until the (simulated) button is pressed. v2 runs behind real TLS with a
certificate named `appliance/<kind>/<serial>` from a CA generated at start-up. P1 and kWh meters
on v2 answer `/api/batteries` (the plug-in battery group they control) with their captured body;
`batteries = None` makes it answer 404 as firmware without it does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from . import hostile
from .tls import Authority, new_authority

DATA = Path(__file__).with_name("data") / "homewizard"


@dataclass(frozen=True)
class Product:
    v1_data: str | None  # file under DATA/v1/<product>/, None: no API v1
    v2_measurement: str | None  # file under DATA/v2/<product>/, None: no API v2
    # The middle part of the v2 certificate's name, `appliance/<kind>/<serial>` (protocol facts).
    cert_kind: str


PRODUCTS: dict[str, Product] = {
    "HWE-P1": Product("data.json", "measurement_3_phase_with_gas_with_watermeter.json", "p1dongle"),
    "HWE-KWH1": Product("data.json", "measurement.json", "energymeter"),
    "HWE-KWH3": Product("data.json", "measurement.json", "energymeter"),
    "HWE-SKT": Product("data.json", None, "energysocket"),
    "HWE-WTR": Product("data.json", None, "watermeter"),
    "SDM230-wifi": Product("data.json", None, "energymeter"),
    "SDM630-wifi": Product("data.json", None, "energymeter"),
    "HWE-BAT": Product(None, "measurement.json", "battery"),
}
NAME_PATTERN = re.compile(r"^local/[a-zA-Z0-9\-_/\\# ]{1,40}$")
BUTTON_WINDOW = 30.0  # seconds after a button press during which a user may be created
# Where a hostile mode (`broken` in hostile.BODY_POISONS) poisons the P1 meter's data: the id
# of its second external meter (a label; the first is the gas meter, which v1 also reports in
# flat fields under the same id), two import counters, the power.
POISON_SPOTS = {
    False: hostile.Spots(("external", 1, "unique_id"), ("total_power_import_kwh",),
                         ("total_power_import_t1_kwh",), ("active_power_w",)),
    True: hostile.Spots(("external", 1, "unique_id"), ("energy_import_kwh",), ("energy_import_t1_kwh",),
                        ("power_w",)),
}


def _load(*parts: str) -> Any:
    return json.loads((DATA.joinpath(*parts)).read_text(encoding="utf-8"))


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")


@dataclass
class HomeWizardSimulator:
    product: str = "HWE-P1"
    serial: str | None = None
    v1: bool = True
    v2: bool = True
    live: bool = False  # values move with time (demo) instead of staying at the captured body
    auto_button_after: float | None = None  # demo: "press" the button after this many seconds of pairing attempts
    tokens: set[str] = field(default_factory=set)
    api_enabled: bool = True  # v1 local API switch in the app
    # fault injection: "garbage", "slow", "500", "empty", ..., a poison of hostile.BODY_POISONS,
    # "error_surrogate" (HTTP 500 with a lone surrogate in the error code)
    broken: str | None = None
    authority: Authority | None = None
    requests: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.product not in PRODUCTS:
            raise ValueError(f"unknown product {self.product}")
        product = PRODUCTS[self.product]
        v1_file, v2_file = product.v1_data, product.v2_measurement
        self.v1 = self.v1 and v1_file is not None
        self.v2 = self.v2 and v2_file is not None
        self.v1_device = _load("v1", self.product, "device.json") if self.v1 else None
        self.v1_data = _load("v1", self.product, v1_file) if self.v1 else None
        self.v2_device = _load("v2", self.product, "device.json") if self.v2 else None
        self.v2_measurement = _load("v2", self.product, v2_file) if self.v2 else None
        self.v2_system = _load("v2", self.product, "system.json") if self.v2 else None
        batteries = DATA / "v2" / self.product / "batteries.json"
        self.batteries: dict | None = _load("v2", self.product, "batteries.json") if self.v2 and batteries.is_file() else None
        if self.serial is None:
            self.serial = (self.v2_device or self.v1_device)["serial"]
        for device in (self.v1_device, self.v2_device):
            if device:
                device["serial"] = self.serial
        self.button_until = 0.0
        self.first_pair_attempt: float | None = None
        self.started = time.time()
        self.http_port: int | None = None
        self.https_port: int | None = None
        self._runners: list[web.AppRunner] = []

    # --- control (tests, demo) ---------------------------------------------------------------
    def press_button(self) -> None:
        self.button_until = time.monotonic() + BUTTON_WINDOW

    def issue_token(self) -> str:
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return token

    @property
    def cert_name(self) -> str:
        return f"appliance/{PRODUCTS[self.product].cert_kind}/{self.serial.lower()}"

    @property
    def ca_file(self) -> Path | None:
        return self.authority.ca_file if self.authority else None

    # --- values --------------------------------------------------------------------------------
    def _live(self, body: dict, v2: bool) -> dict:
        if not self.live:
            return body
        body = copy.deepcopy(body)
        elapsed = time.time() - self.started
        wave = math.sin(elapsed / 20.0)
        power_keys = ("power_w",) if v2 else ("active_power_w",)
        for key in power_keys:
            if isinstance(body.get(key), (int, float)):
                base = body[key] if body[key] else 500
                body[key] = round(base + 350 * wave + 50 * math.sin(elapsed * 1.3), 3)
        # Counters grow at a steady 1.5 kW while the demo runs.
        grow = 1.5 * elapsed / 3600.0
        for key in list(body):
            if re.fullmatch(r"(total_power|energy)_import(_t1)?_kwh", key) and isinstance(body[key], (int, float)):
                body[key] = round(body[key] + grow, 3)
        if isinstance(body.get("total_liter_m3"), (int, float)):
            body["total_liter_m3"] = round(body["total_liter_m3"] + elapsed * 0.0002, 4)
        return body

    async def _fault(self, request: web.Request, v2: bool) -> web.Response | web.StreamResponse | None:
        """Fault injection for tests: `broken` names what the device does instead of answering."""
        broken = self.broken
        if broken is None:
            return None
        if broken == "slow":
            await asyncio.sleep(30)
        if broken == "garbage":
            return web.Response(text="<html><body>Bad gateway</body></html>", content_type="text/html")
        if broken.isdigit() or broken.startswith("status:"):  # "500", "status:429"
            status = int(broken.removeprefix("status:"))
            return web.Response(status=status, text=f"HTTP {status}", headers={"Retry-After": "30"} if status == 429 else None)
        if broken == "empty":
            return web.Response(text="", content_type="application/json")
        if broken == "truncated":
            return web.Response(text='{"active_power_w": -5', content_type="application/json")
        if broken == "wrong_types":
            return _json({"power_w": {"x": 1}} if v2 else {"active_power_w": "lots", "total_power_import_kwh": [1]})
        if broken == "nulls":
            body = self.v2_measurement if v2 else self.v1_data
            return _json({key: None for key in body})
        if broken == "huge":  # 50 MB of JSON, sent without a length as a real runaway would be
            return await self._huge(request)
        if broken in hostile.BODY_POISONS:
            body = self.v2_measurement if v2 else self.v1_data
            return web.Response(body=hostile.poisoned(body, broken, POISON_SPOTS[v2]), content_type="application/json")
        if broken == "error_surrogate":
            return web.Response(status=500, body=hostile.dumps({"error": f"request:internal{hostile.SURROGATE}"}),
                                content_type="application/json")
        return None

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b'{"x":"' + b"0" * 65536
        try:
            for _ in range(50 * 16):
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    # --- API v1 ----------------------------------------------------------------------------------
    def _v1_app(self) -> web.Application:
        app = web.Application()

        def disabled() -> web.Response:
            return _json({"error": {"id": 202, "description": "API not enabled"}}, status=403)

        async def api(request: web.Request) -> web.Response:
            self.requests.append("v1 /api")
            return _json(self.v1_device) if self.api_enabled else disabled()

        async def data(request: web.Request) -> web.Response:
            self.requests.append("v1 /api/v1/data")
            if not self.api_enabled:
                return disabled()
            fault = await self._fault(request, v2=False)
            return fault or _json(self._live(self.v1_data, v2=False))

        async def system(request: web.Request) -> web.Response:
            return _json({"cloud_enabled": True}) if self.api_enabled else disabled()

        app.router.add_get("/api", api)
        app.router.add_get("/api/v1/data", data)
        app.router.add_get("/api/v1/system", system)
        return app

    # --- API v2 ----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[len("Bearer "):] in self.tokens

    def _v2_app(self) -> web.Application:
        app = web.Application()
        unauthorized = lambda: _json({"error": "user:unauthorized"}, status=401)  # noqa: E731

        async def api(request: web.Request) -> web.Response:
            self.requests.append("v2 /api")
            return _json(self.v2_device)

        async def measurement(request: web.Request) -> web.Response:
            self.requests.append("v2 /api/measurement")
            if not self._authorized(request):
                return unauthorized()
            fault = await self._fault(request, v2=True)
            return fault or _json(self._live(self.v2_measurement, v2=True))

        async def system(request: web.Request) -> web.Response:
            self.requests.append("v2 /api/system")
            if not self._authorized(request):
                return unauthorized()
            body = dict(self.v2_system)
            body["uptime_s"] = int(body.get("uptime_s", 0) + time.time() - self.started)
            return _json(body)

        async def batteries(request: web.Request) -> web.Response:
            self.requests.append("v2 /api/batteries")
            if not self._authorized(request):
                return unauthorized()
            if self.batteries is None:
                return web.Response(status=404, text="404: Not Found")  # no documented error body for it
            return _json(self.batteries)

        async def create_user(request: web.Request) -> web.Response:
            self.requests.append("v2 POST /api/user")
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "request:json-invalid"}, status=400)
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                return _json({"error": "request:parameter-invalid"}, status=400)
            now = time.monotonic()
            if self.auto_button_after is not None:
                self.first_pair_attempt = self.first_pair_attempt or now
                if now - self.first_pair_attempt >= self.auto_button_after and now > self.button_until:
                    self.press_button()
                    self.first_pair_attempt = None
            if now > self.button_until:
                return _json({"error": "user:creation-not-enabled"}, status=403)
            self.button_until = 0.0
            return _json({"token": self.issue_token(), "name": name})

        async def delete_user(request: web.Request) -> web.Response:
            if not self._authorized(request):
                return unauthorized()
            self.tokens.discard(request.headers["Authorization"][len("Bearer "):])
            return web.Response(status=204)

        app.router.add_get("/api", api)
        app.router.add_get("/api/measurement", measurement)
        app.router.add_get("/api/system", system)
        app.router.add_get("/api/batteries", batteries)
        app.router.add_post("/api/user", create_user)
        app.router.add_delete("/api/user", delete_user)
        return app

    # --- lifecycle -------------------------------------------------------------------------------
    async def _serve(self, app: web.Application, port: int, ssl_context=None) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, ssl_context=ssl_context)
        await site.start()
        self._runners.append(runner)
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def start(self, http_port: int = 0, https_port: int = 0, authority: Authority | None = None) -> "HomeWizardSimulator":
        if self.v1:
            self.http_port = await self._serve(self._v1_app(), http_port)
        if self.v2:
            self.authority = authority or self.authority or new_authority("Appliance Access CA", "HomeWizard (simulated)")
            context = self.authority.issue(self.cert_name, name=f"hw-{self.serial}")
            self.https_port = await self._serve(self._v2_app(), https_port, context)
        return self

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    @property
    def v1_host(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def v2_host(self) -> str:
        return f"{self.host}:{self.https_port}"
