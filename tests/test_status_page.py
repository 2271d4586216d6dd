"""The status page, its JSON and `/metrics?target=`, against simulated devices; and the page
in a real headless Chromium: it shows the targets, fits a phone, redraws itself when one fails,
and ages its times between two fetches."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import shutil
import textwrap
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.daemon import Daemon
from exporter.runtime.quota import Limit
from exporter.vendors.enphase.token import token_info
from simulators.enphase import GatewaySimulator
from simulators.homewizard import HomeWizardSimulator
from simulators.iammeter import IammeterHttpSimulator

from .configs import load_config
from .conftest import async_wait_until


class Setup:
    def __init__(self, daemon: Daemon, base: str, kwh: HomeWizardSimulator, gateway: GatewaySimulator,
                 iammeter: IammeterHttpSimulator, token: str, state: Path) -> None:
        self.daemon, self.base, self.kwh, self.gateway, self.iammeter = daemon, base, kwh, gateway, iammeter
        self.token, self.state = token, state

    async def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(self.base + path, headers={"Accept-Encoding": "identity", **(headers or {})}) as resp:
                return resp.status, dict(resp.headers), await resp.read()

    async def targets(self) -> dict:
        status, headers, body = await self.get("/api/v1/targets")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        return {t["name"]: t for t in json.loads(body)["targets"]}


@pytest.fixture
async def setup(tmp_path):
    kwh = await HomeWizardSimulator("HWE-KWH1", v2=False, serial="3c39e7aa0101").start()
    gateway = await GatewaySimulator().start()
    iammeter = IammeterHttpSimulator("WEM3080T")
    await iammeter.start()
    token = gateway.mint_token()
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        state_directory: {state}
        targets:
          - name: kwh
            vendor: homewizard
            host: {kwh.v1_host}
            interval: 1s
          - name: solar
            vendor: enphase
            host: {gateway.host}
            token: {token}
            tls_fingerprint: {gateway.fingerprint}
            interval: 5s
          - name: grid
            vendor: iammeter
            host: {iammeter.host}
            interval: 1s
    """))
    # A quota scoped to a target's name shows on that target (and in the global list).
    daemon = Daemon(load_config(config))
    daemon.ledger.register("iammeter_cloud", "grid", [Limit(12, 3600, "hour")])
    port = await daemon.start("127.0.0.1", 0)
    s = Setup(daemon, f"http://127.0.0.1:{port}", kwh, gateway, iammeter, token, state)
    try:
        await async_wait_until(lambda: all(st.up for st in daemon.store.targets.values()), timeout=30,
                               what="every target up")
        yield s
    finally:
        await daemon.stop()
        await kwh.stop()
        await gateway.stop()
        await iammeter.stop()


async def test_json_lists_each_target_with_what_a_person_needs(setup):
    targets = await setup.targets()
    assert set(targets) == {"kwh", "solar", "grid"}
    kwh = targets["kwh"]
    assert kwh["state"] == "up" and kwh["vendor"] == "homewizard" and kwh["kind"] == "poll"
    assert kwh["devices"][0]["model"] == "HWE-KWH1" and kwh["devices"][0]["serial"] == "3c39e7aa0101"
    assert kwh["last_success"] is not None and kwh["last_error"] is None
    assert kwh["next_poll"] is not None and kwh["metrics_url"] == "metrics?target=kwh"
    # The Enphase token's expiry comes from the target's token expiry series.
    assert targets["solar"]["token_expiry"] == token_info(setup.token).expires_at
    assert targets["kwh"]["token_expiry"] is None
    assert targets["grid"]["quota"] == [{"api": "iammeter_cloud", "scope": "grid", "window": "hour", "remaining": 12}]
    assert targets["kwh"]["quota"] == []


async def test_a_failure_shows_reason_message_and_what_to_do(setup):
    setup.kwh.api_enabled = False
    await async_wait_until(lambda: not setup.daemon.store.targets["kwh"].up, what="kwh down")
    kwh = (await setup.targets())["kwh"]
    assert kwh["state"] == "down" and kwh["last_reason"] == "api_disabled"
    assert "enable it in the HomeWizard Energy app" in kwh["last_error"]
    assert "Local API" in kwh["next_step"]
    assert kwh["errors"]["api_disabled"] >= 1 and kwh["last_success"] is not None
    status, headers, body = await setup.get("/")
    page = body.decode()
    row = re.search(r"<tr class='down' data-target='kwh'>.*?</tr>", page)
    assert row and "api_disabled" in row.group(0) and "What to do" in row.group(0)


async def test_neither_page_nor_json_carries_secrets(setup):
    _, _, page = await setup.get("/")
    _, _, doc = await setup.get("/api/v1/targets")
    for body in (page.decode(), doc.decode()):
        assert setup.token not in body
        assert setup.token.split(".")[1] not in body  # not even the JWT's payload


async def test_server_rendered_page_works_without_javascript(setup):
    status, headers, body = await setup.get("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert '<meta http-equiv="refresh" content="30">' in page  # inside <noscript>
    for name in ("kwh", "solar", "grid"):
        assert f"<tr class='up' data-target='{name}'>" in page
        assert f"href='metrics?target={name}'" in page
    assert "3 of 3 targets up" in page
    assert "iammeter_cloud hour: 12 left" in page
    assert re.search(r"data-label='Token expires'[^>]*>in 36[45]d<", page)


async def test_metrics_of_one_target_only(setup):
    status, headers, body = await setup.get("/metrics?target=kwh")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    families = list(text_string_to_metric_families(text))
    devices = {s.labels.get("device") for f in families for s in f.samples}
    assert devices == {"kwh"}
    names = {f.name for f in families}
    assert "energy_meter_active_power_watts" in names and "energy_meter_exporter_target_up" in names
    assert "energy_meter_exporter_build_info" not in names
    # Each family's header once, as in a full scrape.
    assert text.count("# TYPE energy_meter_exporter_target_up ") == 1
    status, headers, body = await setup.get("/metrics?target=solar", {
        "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n") and 'device="solar"' in text and 'device="kwh"' not in text
    assert "energy_meter_exporter_token_expiry_timestamp_seconds" in text
    status, _, body = await setup.get("/metrics?target=nobody")
    assert status == 404 and b"No target named 'nobody'" in body


# --- in a real browser ------------------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over the DevTools protocol (websockets)."""

    def __init__(self, proc: asyncio.subprocess.Process, ws) -> None:
        self.proc, self.ws, self._id, self.exceptions = proc, ws, 0, []

    @classmethod
    async def start(cls, binary: str, profile: Path) -> "Browser":
        import websockets

        proc = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        url = None
        try:
            async with asyncio.timeout(30):
                while url is None:
                    line = (await proc.stderr.readline()).decode("utf-8", "replace")
                    if not line:
                        raise RuntimeError("chromium exited before opening its DevTools port")
                    match = re.search(r"DevTools listening on (ws://\S+)", line)
                    url = match.group(1) if match else None
            port = re.match(r"ws://[^:/]+:(\d+)/", url).group(1)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t["type"] == "page"]
            ws = await websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        asyncio.get_running_loop().create_task(cls._drain(proc))
        return cls(proc, ws)

    @staticmethod
    async def _drain(proc) -> None:
        while await proc.stderr.readline():
            pass

    async def call(self, method: str, **params):
        self._id += 1
        mine = self._id
        await self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        async with asyncio.timeout(30):
            while True:
                message = json.loads(await self.ws.recv())
                if message.get("method") == "Runtime.exceptionThrown":
                    self.exceptions.append(message["params"]["exceptionDetails"])
                if message.get("id") == mine:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]

    async def eval(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            self.proc.kill()
            await self.proc.wait()


SNAPSHOT = """JSON.stringify({
  rows: Array.from(document.querySelectorAll("#targets tr")).map(function (r) {
    return {name: r.dataset.target, state: r.className, text: r.innerText,
            link: (r.querySelector("td.series a") || {}).getAttribute ? r.querySelector("td.series a").getAttribute("href") : null}; }),
  ages: Array.from(document.querySelectorAll("#targets [data-at]")).map(function (c) { return c.textContent; }),
  renderedBy: document.getElementById("targets").dataset.renderedBy,
  refreshes: Number(document.body.dataset.refreshes || 0),
  note: document.getElementById("refreshed").dataset.by,
  noteText: document.getElementById("refreshed").textContent,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  marker: window.__sameDocument || null
})"""


async def test_the_page_in_headless_chromium_updates_when_a_target_fails(setup, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it with apt-get as root)")
    browser = await Browser.start(binary, tmp_path / "profile")
    try:
        await browser.call("Runtime.enable")
        await browser.call("Page.enable")
        # A phone: 390 CSS pixels wide.
        await browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        await browser.call("Page.navigate", url=setup.base + "/?refresh=1")

        async def snapshot() -> dict:
            return json.loads(await browser.eval(SNAPSHOT) or "{}")

        async def until(predicate, what: str, timeout: float = 30.0) -> dict:
            deadline = asyncio.get_running_loop().time() + timeout
            last = None
            while asyncio.get_running_loop().time() < deadline:
                try:
                    last = await snapshot()
                except (RuntimeError, json.JSONDecodeError):  # the page is still loading
                    last = None
                if last and predicate(last):
                    return last
                await asyncio.sleep(0.2)
            raise AssertionError(f"timed out waiting for {what}; last page state: {last}")

        first = await until(lambda s: len(s.get("rows", [])) == 3, "the three targets")
        assert {r["name"] for r in first["rows"]} == {"kwh", "solar", "grid"}
        assert all(r["state"] == "up" for r in first["rows"])
        assert {r["link"] for r in first["rows"]} == {"metrics?target=kwh", "metrics?target=solar", "metrics?target=grid"}
        assert first["overflow"] <= 0, "the page is wider than a phone's screen"

        # Mark this document: a reload (a server re-render) would lose the mark.
        await browser.eval("window.__sameDocument = 'loaded once'")
        refreshed = await until(lambda s: s["refreshes"] >= 1, "the script's first refresh")
        assert refreshed["note"] == "script" and refreshed["noteText"].startswith("Live: updated")

        setup.kwh.api_enabled = False
        failed = await until(lambda s: any(r["name"] == "kwh" and r["state"] == "down" for r in s["rows"]),
                             "kwh shown down")
        kwh = next(r for r in failed["rows"] if r["name"] == "kwh")
        assert "api_disabled" in kwh["text"] and "What to do" in kwh["text"]
        assert failed["marker"] == "loaded once", "the page was reloaded instead of redrawn by its script"
        assert failed["renderedBy"] == "script" and failed["refreshes"] > refreshed["refreshes"]
        assert all(r["state"] == "up" for r in failed["rows"] if r["name"] != "kwh")
        assert failed["overflow"] <= 0, "the error message made the page wider than a phone's screen"
        assert browser.exceptions == []

        setup.kwh.api_enabled = True
        await until(lambda s: all(r["state"] == "up" for r in s["rows"]), "kwh back up")

        # Between two fetches the script ages the times the server rendered ("1s ago", "in 4s").
        await browser.call("Page.navigate", url=setup.base + "/?refresh=3600")
        loaded = await until(lambda s: len(s.get("rows", [])) == 3 and s["marker"] is None and s["ages"],
                             "the page loaded again")
        aged = await until(lambda s: s["ages"] != loaded["ages"], "the times aged")
        assert aged["refreshes"] == 0 and aged["renderedBy"] == "server" and aged["marker"] is None
        assert all(re.fullmatch(r"\d+[smhd] ago|in \d+[smhd]|now|expired \d+[smhd] ago", age) for age in aged["ages"])
        assert browser.exceptions == []
    finally:
        await browser.close()
