"""`energy-meter-exporter discover`: find meters on the network and print targets to paste.

Two ways to find a device:
- mDNS: HomeWizard (`_hwenergy._tcp` for API v1, `_homewizard._tcp` for API v2), the Enphase
  IQ Gateway (`_enphase-envoy._tcp`) and the IOmeter bridge (`_iometer._tcp`) announce
  themselves; `discover` listens for a few seconds.
- `--scan`: addresses the user names (a network such as 192.168.1.0/24, addresses, names,
  `host:port`), on the devices' real ports (80 and 443, or `--ports`), with a bounded number of
  connections at once. IAMMETER meters do not announce themselves, so this is how they are found.

Every candidate is then asked who it is, with the requests the exporter itself uses and
without credentials: HomeWizard `GET /api`, IOmeter `GET /v1/status`, IAMMETER
`GET /api/monitorjson` (and `/api/wifidata`; legacy firmware is recognised by the Basic-auth
challenge of `/monitorjson`), Enphase `GET /info`. HTTPS is used without certificate checks here:
only identity is read and nothing secret is sent. The result is YAML: a `targets:` list with
what was learnt (model, serial, firmware, API version) as comments and the keys a device needs
next (a token, a certificate fingerprint) as commented lines.

Exit status: 0 at least one device found, 1 none found, 2 bad input.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import aiohttp
import yaml

from .console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Console
from .errors import PollError
from .http import Response, request
from .jsontext import label_text
from .samples import ParseError

DEFAULT_PORTS = (80, 443)
MAX_ENDPOINTS = 8192  # a /20 on two ports; more is most likely a typo
DEFAULT_TIMEOUT = 3.0
DEFAULT_CONCURRENCY = 32
DEFAULT_MDNS_SECONDS = 5.0
MAX_BODY = 256 * 1024  # identity answers are small; a big one is some other device

# mDNS service type -> (vendor, scheme the announced port speaks; None: find out)
SERVICE_TYPES: dict[str, tuple[str, str | None]] = {
    "_hwenergy._tcp.local.": ("homewizard", "http"),
    "_homewizard._tcp.local.": ("homewizard", "https"),
    "_enphase-envoy._tcp.local.": ("enphase", None),
    "_iometer._tcp.local.": ("iometer", "http"),
}

# HomeWizard product types -> a target name a person would pick.
HOMEWIZARD_NAMES = {
    "HWE-P1": "p1-meter", "HWE-KWH1": "kwh-meter", "HWE-KWH3": "kwh-meter-3phase",
    "SDM230-wifi": "kwh-meter", "SDM630-wifi": "kwh-meter-3phase", "HWE-SKT": "energy-socket",
    "HWE-WTR": "water-meter", "HWE-BAT": "battery", "HWE-DSP": "display",
}
VENDOR_TITLES = {"homewizard": "HomeWizard", "enphase": "Enphase", "iometer": "IOmeter", "iammeter": "IAMMETER"}


# --- what is scanned -------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Endpoint:
    host: str  # an address or a name, without brackets
    port: int

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def target_host(self, scheme: str) -> str:
        """The target's `host` value: the port only where it is not the scheme's own."""
        if (scheme, self.port) in (("http", 80), ("https", 443)):
            return f"[{self.host}]" if ":" in self.host else self.host
        return self.netloc


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:/\[\]]+))(?::(?P<port>\d{1,5}))?$")


def parse_ports(text: str) -> tuple[int, ...]:
    ports = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise ValueError(f"--ports {text!r}: expected port numbers separated by commas, e.g. 80,443")
        ports.append(int(part))
    return tuple(dict.fromkeys(ports))


def parse_scan(specs: Iterable[str], ports: Iterable[int] = DEFAULT_PORTS) -> list[Endpoint]:
    """Endpoints from `--scan` values: networks (`192.168.1.0/24`), addresses, names, each
    optionally with `:port` (then only that port), comma-separated or repeated."""
    ports = tuple(ports)
    out: dict[Endpoint, None] = {}
    for spec in specs:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            for endpoint in _endpoints(item, ports):
                out[endpoint] = None
                if len(out) > MAX_ENDPOINTS:
                    raise ValueError(f"--scan: more than {MAX_ENDPOINTS} address and port pairs; "
                                     "scan a smaller network (a /24 is 254 addresses)")
    return list(out)


def _endpoints(item: str, ports: tuple[int, ...]) -> list[Endpoint]:
    if "://" in item:
        raise ValueError(f"--scan {item!r}: give addresses without a scheme or path, e.g. 192.168.1.50 or meter.local:8080")
    if item.count(":") > 1 and not item.startswith("["):  # a bare IPv6 address (no port)
        try:
            return [Endpoint(str(ipaddress.IPv6Address(item)), p) for p in ports]
        except ValueError:
            raise ValueError(f"--scan {item!r}: not an IPv6 address (write one with a port as [fd00::5]:80)") from None
    if "/" in item:
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"--scan {item!r}: not a network (expected e.g. 192.168.1.0/24)") from None
        if network.num_addresses > MAX_ENDPOINTS:
            raise ValueError(f"--scan {item!r}: {network.num_addresses} addresses is too many; "
                             "scan a smaller network (a /24 is 254 addresses)")
        hosts = list(network.hosts()) or [network.network_address]
        return [Endpoint(str(h), p) for h in hosts for p in ports]
    match = _HOST_PORT.match(item)
    if not match:
        raise ValueError(f"--scan {item!r}: expected an address, a name, host:port or a network such as 192.168.1.0/24")
    host = match.group("v6") or match.group("name")
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"--scan {item!r}: not an IPv6 address") from None
    port = match.group("port")
    if port is not None:
        if not 0 < int(port) < 65536:
            raise ValueError(f"--scan {item!r}: port {port} is out of range")
        return [Endpoint(host, int(port))]
    return [Endpoint(host, p) for p in ports]


# --- what is found -------------------------------------------------------------------------------------


@dataclass
class Device:
    vendor: str
    host: str  # the target's `host` value
    model: str = ""
    serial: str = ""
    firmware: str = ""
    api: str = ""  # how the exporter will talk to it, in words
    options: dict[str, Any] = field(default_factory=dict)  # further target keys
    hints: list[str] = field(default_factory=list)  # commented YAML lines: keys to fill in
    notes: list[str] = field(default_factory=list)  # what the person should know or do
    found_by: list[str] = field(default_factory=list)  # "mDNS", "scan"
    name: str = ""
    action_needed: bool = False  # it will not work before the person does what the notes say

    @property
    def key(self) -> tuple[str, ...]:
        if self.serial:
            return (self.vendor, self.model, self.serial.lower())
        return (self.vendor, "@" + self.host)

    def describe(self) -> str:
        parts = [f"{VENDOR_TITLES.get(self.vendor, self.vendor)} {self.model or 'device'}".strip()]
        if self.serial:
            parts.append(f"serial {self.serial}")
        if self.firmware:
            parts.append(f"firmware {self.firmware}")
        if self.api:
            parts.append(self.api)
        return ", ".join(parts)


@dataclass
class Announcement:
    """One mDNS service instance as resolved."""

    service_type: str
    name: str
    addresses: list[str]
    port: int
    properties: dict[str, str]


class _Prober:
    """Asks one endpoint who it is; one request at a time per device (weak Wi-Fi chips)."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self.session = session
        self.timeout = timeout
        self.insecure = ssl.create_default_context()
        self.insecure.check_hostname = False
        self.insecure.verify_mode = ssl.CERT_NONE

    async def get(self, url: str, headers: dict[str, str] | None = None) -> Response | None:
        try:
            return await asyncio.wait_for(
                request(self.session, "GET", url, headers=headers, max_bytes=MAX_BODY,
                        ssl_context=self.insecure if url.startswith("https:") else None),
                self.timeout)
        except (PollError, asyncio.TimeoutError):
            return None

    async def reachable(self, endpoint: Endpoint) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), self.timeout)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        await _closed(writer)
        return True

    async def tls_fingerprint(self, endpoint: Endpoint) -> str | None:
        """SHA-256 of the certificate the endpoint presents, or None if it speaks no TLS."""
        writer = None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port, ssl=self.insecure), self.timeout)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            return hashlib.sha256(der).hexdigest() if der else None
        except (OSError, asyncio.TimeoutError, ssl.SSLError, AttributeError):
            return None
        finally:
            if writer is not None:
                writer.close()
                await _closed(writer)

    async def scheme(self, endpoint: Endpoint) -> str:
        if endpoint.port == 80:
            return "http"
        if endpoint.port == 443:
            return "https"
        return "https" if await self.tls_fingerprint(endpoint) else "http"

    async def identify(self, endpoint: Endpoint, scheme: str | None = None, vendor: str | None = None) -> Device | None:
        scheme = scheme or await self.scheme(endpoint)
        base = f"{scheme}://{endpoint.netloc}"
        steps: list[tuple[str, Callable]] = [
            ("homewizard", self._homewizard), ("iometer", self._iometer), ("iammeter", self._iammeter),
            ("enphase", self._enphase),
        ]
        if scheme == "https":  # IOmeter bridges and IAMMETER meters speak plain HTTP only
            steps = [s for s in steps if s[0] in ("homewizard", "enphase")]
        if vendor is not None:  # an mDNS announcement says which vendor to ask first
            steps.sort(key=lambda s: s[0] != vendor)
        for _, step in steps:
            device = await step(endpoint, scheme, base)
            if device is not None:
                return device
        return None

    # --- one function per vendor: None when the answer is not that vendor's ---------------
    async def _homewizard(self, endpoint: Endpoint, scheme: str, base: str) -> Device | None:
        from .vendors.homewizard import parse as hw

        resp = await self.get(f"{base}/api", {"X-Api-Version": "2"} if scheme == "https" else None)
        if resp is None:
            return None
        payload = _json(resp)
        host = endpoint.target_host(scheme)
        if resp.status == 403 and isinstance(payload, dict) and hw.api_error(payload) == "202":
            return Device("homewizard", host, api="API v1 (switched off)", action_needed=True, notes=[
                "its local API is switched off: enable it in the HomeWizard Energy app "
                "(Settings > Meters > your meter > Local API), then run discover again"])
        if resp.status != 200 or not isinstance(payload, dict):
            return None
        try:
            info = hw.parse_device(payload)
            version = hw.api_version(payload)
        except ParseError:
            return None
        device = Device("homewizard", host, model=info.model, serial=info.serial, firmware=info.firmware)
        device.options["serial"] = info.serial
        if scheme == "http" and version == 1:
            device.api = "API v1"
        else:
            device.api = "API v2"
            _needs_pairing(device)
        return device

    async def _iometer(self, endpoint: Endpoint, scheme: str, base: str) -> Device | None:
        from .vendors.iometer import parse as io

        resp = await self.get(f"{base}/v1/status")
        payload = _json(resp) if resp is not None and resp.status == 200 else None
        if not isinstance(payload, dict) or not str(payload.get("__typename", "")).startswith("iometer.status."):
            return None
        try:
            reading = io.parse_bridge_status(payload)
        except ParseError:
            return None
        meter = next((d for d in reading.devices if d.model == io.METER_MODEL), None)
        bridge = next((d for d in reading.devices if d.model == io.BRIDGE_MODEL), None)
        device = Device("iometer", endpoint.target_host(scheme), model="bridge",
                        serial=bridge.serial if bridge else "", firmware=bridge.firmware if bridge else "",
                        api="local API /v1")
        if meter is not None and meter.serial:
            device.notes.append(f"reads electricity meter {meter.serial}")
        core = payload.get("device", {}).get("core") if isinstance(payload.get("device"), dict) else None
        if isinstance(core, dict) and core.get("pinStatus") not in (None, "entered"):
            device.notes.append("the meter's PIN is not entered in the IOmeter app: only totals will be read")
        return device

    async def _iammeter(self, endpoint: Endpoint, scheme: str, base: str) -> Device | None:
        from .vendors.iammeter import parse as iam

        resp = await self.get(f"{base}/api/monitorjson")
        if resp is not None and resp.status == 200:
            payload = _json(resp)
            if not isinstance(payload, dict) or not any(k in payload for k in ("Data", "Datas", "data")):
                return None
            try:
                reading = iam.parse_monitorjson(payload)
            except ParseError:
                return None
            own = reading.devices[0] if reading.devices else None
            device = Device("iammeter", endpoint.target_host(scheme), model=own.model if own else "",
                            serial=own.serial if own else "", firmware=own.firmware if own else "",
                            api="local HTTP API")
            if not device.serial or not device.firmware:
                wifi = await self.get(f"{base}/api/wifidata")
                try:
                    data = iam.parse_wifidata(_json(wifi)) if wifi is not None and wifi.status == 200 else None
                except ParseError:
                    data = None
                if data is not None:
                    device.serial = device.serial or data.serial
                    device.firmware = device.firmware or data.firmware
            return device
        if resp is not None and resp.status != 404:
            return None
        # Legacy firmware has only /monitorjson behind Basic auth: its challenge names the maker.
        legacy = await self.get(f"{base}/monitorjson")
        challenge = _header(legacy.headers, "WWW-Authenticate") if legacy is not None else None
        if legacy is None or legacy.status != 401 or not challenge or "iammeter" not in challenge.lower():
            return None
        device = Device("iammeter", endpoint.target_host(scheme), model="WEM3162 or similar",
                        api="legacy /monitorjson with Basic auth")
        device.options["legacy"] = True
        device.hints.append("# username: admin        # only if you changed the meter's login (default admin/admin)")
        device.hints.append("# password_file: /etc/energy-meter-exporter/iammeter.password")
        return device

    async def _enphase(self, endpoint: Endpoint, scheme: str, base: str) -> Device | None:
        from .vendors.enphase import parse as en

        resp = await self.get(f"{base}/info")
        target_endpoint, target_scheme = endpoint, scheme
        if resp is not None and resp.status in (301, 302, 303, 307, 308) and scheme == "http":
            # Firmware 7 and later answer on HTTPS; plain HTTP only redirects there.
            target_endpoint = Endpoint(endpoint.host, 443) if endpoint.port == 80 else endpoint
            target_scheme = "https"
            resp = await self.get(f"https://{target_endpoint.netloc}/info")
        if resp is None or resp.status != 200 or b"envoy_info" not in resp.body[:4096]:
            return None
        try:
            info = en.parse_info(resp.body)
        except ParseError:
            return None
        device = Device("enphase", target_endpoint.target_host(target_scheme), model=info.part_number,
                        serial=info.serial, firmware=info.firmware)
        device.options["serial"] = info.serial
        if info.needs_token:
            device.api = "HTTPS with a token (firmware 7+)"
            # A gateway that answered on plain HTTP still serves its API on HTTPS (443).
            tls_endpoint = Endpoint(endpoint.host, 443) if target_scheme == "http" and endpoint.port == 80 \
                else target_endpoint
            fingerprint = await self.tls_fingerprint(tls_endpoint)
            if fingerprint:
                device.options["tls_fingerprint"] = ":".join(
                    fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)).upper()
                device.notes.append("tls_fingerprint pins the self-signed certificate it presented now; "
                                    "compare it with the one your browser shows for https://" + device.host)
            device.hints += [
                "# username: you@example.com        # your Enlighten login: the exporter fetches and renews tokens",
                "# password_file: /etc/energy-meter-exporter/enlighten.password",
                f"# token_file: enphase-{info.serial}.token   # from `energy-meter-exporter token enphase "
                f"--host {device.host} --username EMAIL`, or entrez.enphaseenergy.com",
            ]
            device.action_needed = True
            device.notes.append("it needs a token: set username and password_file (Enlighten login), "
                                "or token_file; see the README's Enphase quick start")
        else:
            device.api = "HTTP with Digest auth (firmware below 7)"
        return device


def _needs_pairing(device: Device) -> None:
    device.action_needed = True
    device.hints.append(f"# token_file: /etc/energy-meter-exporter/homewizard-{device.serial or 'SERIAL'}.token"
                        "   # from `energy-meter-exporter pair homewizard HOST`")
    device.notes.append(f"API v2 needs a token: run `energy-meter-exporter pair homewizard {device.host}`, "
                        "press the button on the device, and set token_file to the file it writes")


def _json(resp: Response | None) -> Any:
    if resp is None:
        return None
    try:
        return resp.json()
    except PollError:
        return None


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        pass


# --- mDNS ------------------------------------------------------------------------------------------


async def browse(seconds: float, interfaces: list[str] | None = None,
                 on_tick: Callable[[float, int], None] | None = None,
                 service_types: Iterable[str] = SERVICE_TYPES) -> list[Announcement]:
    """Listen for the meters' mDNS services for `seconds` and resolve what was announced.
    `interfaces`: addresses to browse on (default: all). OSError when mDNS cannot start."""
    from zeroconf import InterfaceChoice, IPVersion
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    loop = asyncio.get_running_loop()
    zc = AsyncZeroconf(interfaces=interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only)
    found: dict[tuple[str, str], asyncio.Task] = {}

    async def resolve(service_type: str, name: str) -> Announcement | None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zc.zeroconf, 3000) or not info.port:
            return None
        # Anyone on the network can announce: the values end up in the configuration printed
        # (as comments and values), so no control characters, bounded length.
        props = {label_text(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k), 64):
                 label_text(v.decode("utf-8", "replace") if isinstance(v, bytes) else "" if v is None else str(v))
                 for k, v in info.properties.items()}
        return Announcement(service_type, name, info.parsed_addresses(IPVersion.V4Only), info.port, props)

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        key = (service_type, name)
        if key not in found and state_change.name in ("Added", "Updated"):
            found[key] = loop.create_task(resolve(service_type, name))

    browser = AsyncServiceBrowser(zc.zeroconf, list(service_types), handlers=[on_change])
    try:
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            if on_tick:
                on_tick(left, len(found))
            await asyncio.sleep(min(0.25, left))
        results = await asyncio.gather(*found.values(), return_exceptions=True)
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return [r for r in results if isinstance(r, Announcement) and r.addresses]


def from_announcement(a: Announcement) -> Device:
    """What the announcement alone says, for a device that does not answer the identity request."""
    vendor, scheme = SERVICE_TYPES.get(a.service_type, ("unknown", "http"))
    endpoint = Endpoint(a.addresses[0], a.port)
    p = a.properties
    device = Device(vendor, endpoint.target_host(scheme or "http"))
    if vendor == "homewizard":
        device.model = p.get("product_type", "")
        device.serial = p.get("serial", "")
        device.api = "API v2" if scheme == "https" else "API v1"
        if device.serial:
            device.options["serial"] = device.serial
        if scheme == "http" and p.get("api_enabled") == "0":
            device.action_needed = True
            device.notes.append("its local API is switched off: enable it in the HomeWizard Energy app "
                                "(Settings > Meters > your meter > Local API)")
        if scheme == "https":
            _needs_pairing(device)
    elif vendor == "enphase":
        device.serial = p.get("serialnum", "")
        device.firmware = p.get("protovers", "")
    device.notes.append("announced itself but did not answer: is it busy or updating? run `probe` once it is configured")
    return device


# --- putting it together ---------------------------------------------------------------------------


@dataclass
class Options:
    scan: list[Endpoint] = field(default_factory=list)
    mdns: bool = True
    mdns_seconds: float = DEFAULT_MDNS_SECONDS
    interfaces: list[str] | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY


async def discover(options: Options, console: Console | None = None) -> list[Device]:
    console = console or Console(interactive=False)
    devices: dict[tuple[str, str], Device] = {}
    connector = aiohttp.TCPConnector(limit=options.concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        prober = _Prober(session, options.timeout)
        if options.mdns:
            await _from_mdns(options, prober, console, devices)
        if options.scan:
            await _from_scan(options, prober, console, devices)
    return _named(list(devices.values()))


async def _from_mdns(options: Options, prober: _Prober, console: Console, devices: dict) -> None:
    console.say(f"Listening for HomeWizard, Enphase and IOmeter mDNS announcements for {options.mdns_seconds:g}s ...")
    try:
        announcements = await browse(
            options.mdns_seconds, options.interfaces,
            lambda left, n: console.countdown("listening", left, f"{n} announced"))
    except (OSError, ValueError, RuntimeError) as exc:
        console.say(f"mDNS is not available here ({exc}); continuing without it. Use --scan to give addresses.")
        return
    if announcements:
        console.say(f"{len(announcements)} announced; asking each who it is ...")
    for a in announcements:
        vendor, scheme = SERVICE_TYPES.get(a.service_type, ("", None))
        device = None
        for address in a.addresses:
            device = await prober.identify(Endpoint(address, a.port), scheme, vendor)
            if device is not None:
                break
        announced = from_announcement(a)
        if device is None:
            device = announced
        else:  # what the device would not tell (its local API is off), its announcement may
            for key in ("model", "serial", "firmware"):
                if not getattr(device, key) and getattr(announced, key):
                    setattr(device, key, getattr(announced, key))
            if device.vendor == "homewizard" and device.serial:
                device.options.setdefault("serial", device.serial)
        _add(devices, device, "mDNS")


async def _from_scan(options: Options, prober: _Prober, console: Console, devices: dict) -> None:
    endpoints = options.scan
    hosts = len({e.host for e in endpoints})
    console.say(f"Scanning {hosts} address{'es' if hosts != 1 else ''} ({len(endpoints)} address:port pairs, "
                f"{options.concurrency} at a time) ...")
    done = 0
    found = 0
    semaphore = asyncio.Semaphore(options.concurrency)

    async def one(endpoint: Endpoint) -> None:
        nonlocal done, found
        try:
            async with semaphore:
                if await prober.reachable(endpoint):
                    device = await prober.identify(endpoint)
                    if device is not None:
                        _add(devices, device, "scan")
                        found += 1
        finally:
            done += 1
            console.progress("scanning", done, len(endpoints), f"{found} answered")

    console.progress("scanning", 0, len(endpoints), "0 answered")
    await asyncio.gather(*(one(e) for e in endpoints))


def _add(devices: dict[tuple[str, str], Device], device: Device, how: str) -> None:
    """Merge a device seen twice (mDNS and scan; a HomeWizard on API v1 and v2)."""
    known = devices.get(device.key) or next(
        (d for d in devices.values() if d.vendor == device.vendor and d.host == device.host), None)
    if known is None:
        device.found_by.append(how)
        devices[device.key] = device
        return
    if how not in known.found_by:
        known.found_by.append(how)
    if known.vendor == "homewizard" and known.api != device.api and "v1" in known.api + device.api:
        v1, v2 = (known, device) if "v1" in known.api else (device, known)
        # API v1 works without pairing: keep it as the target, and say that v2 is there too.
        if known is not v1:
            known.host, known.api, known.hints = v1.host, v1.api, list(v1.hints)
            known.notes = [n for n in known.notes if "API v2 needs a token" not in n]
            known.action_needed = v1.action_needed
        known.api = "API v1 (and v2)"
        known.notes.append(f"it also speaks API v2 ({v2.host}): for it, run `energy-meter-exporter pair "
                           f"homewizard {v2.host}` and set token_file and api_version: v2")
    for key in ("model", "serial", "firmware"):
        if not getattr(known, key) and getattr(device, key):
            setattr(known, key, getattr(device, key))


def _base_name(device: Device) -> str:
    if device.vendor == "homewizard":
        return HOMEWIZARD_NAMES.get(device.model, "homewizard")
    if device.vendor == "enphase":
        return "enphase-gateway"
    if device.vendor == "iometer":
        return "iometer"
    model = re.sub(r"[^a-z0-9]+", "-", device.model.lower()).strip("-")
    return f"iammeter-{model}" if model and " " not in device.model else "iammeter"


def _named(devices: list[Device]) -> list[Device]:
    """Short names; the serial's end is added only where two devices would share one."""
    devices.sort(key=lambda d: (d.vendor, d.model, d.serial, d.host))
    bases = [_base_name(d) for d in devices]
    used: set[str] = set()
    for device, base in zip(devices, bases):
        name = base
        if bases.count(base) > 1:
            tail = re.sub(r"[^a-z0-9]", "", (device.serial or device.host).lower())[-6:]
            name = f"{base}-{tail}" if tail else base
        unique, number = name, 2
        while unique in used:
            unique, number = f"{name}-{number}", number + 1
        used.add(unique)
        device.name = unique
    return devices


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def _comment(text: str) -> str:
    return label_text(text, 1000)


def render_yaml(devices: list[Device]) -> str:
    """A configuration fragment: `targets:` with one commented entry per device."""
    lines = [
        "# Found by `energy-meter-exporter discover`. Copy the entries you want under `targets:`",
        "# in your configuration; lines starting with # are keys to fill in where the notes say so.",
        "targets:",
    ]
    for device in devices:
        # A line break in what a device reports would end the comment and add YAML of its own.
        lines.append(f"  # {_comment(device.describe())} (found by {', '.join(device.found_by)})")
        lines.extend(f"  # {_comment(note)}" for note in device.notes)
        entry = {"name": device.name, "vendor": device.vendor, "host": device.host, **device.options}
        first = True
        for key, value in entry.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {_scalar(value)}")
            first = False
        lines.extend(f"    {hint}" for hint in device.hints)
    return "\n".join(lines) + "\n"


async def discover_command(args: Any, console: Console | None = None) -> int:
    console = console or Console()
    try:
        ports = parse_ports(args.ports) if args.ports else DEFAULT_PORTS
        endpoints = parse_scan(args.scan or [], ports)
        if args.timeout <= 0 or args.concurrency < 1 or args.mdns_timeout < 0:
            raise ValueError("--timeout and --mdns-timeout must be positive, --concurrency at least 1")
    except ValueError as exc:
        console.failed(str(exc))
        console.next("correct the option; `energy-meter-exporter discover --help` lists them")
        return EXIT_USAGE
    if args.no_mdns and not endpoints:
        console.failed("nothing to do: --no-mdns without --scan")
        console.next("give addresses to scan, e.g. `--scan 192.168.1.0/24`")
        return EXIT_USAGE
    options = Options(scan=endpoints, mdns=not args.no_mdns, mdns_seconds=args.mdns_timeout,
                      interfaces=args.interface or None, timeout=args.timeout, concurrency=args.concurrency)
    devices = await discover(options, console)
    if not devices:
        console.failed("no meters found" + ("" if endpoints else " by mDNS"))
        console.next("check that the device is powered and on this network; IAMMETER meters do not announce "
                     "themselves: give addresses with `--scan 192.168.1.0/24` (your network) or `--scan ADDRESS`")
        return EXIT_FAILURE
    console.product(render_yaml(devices))
    console.ok(f"found {len(devices)} device{'s' if len(devices) != 1 else ''}: "
               + ", ".join(f"{d.name} ({VENDOR_TITLES.get(d.vendor, d.vendor)} {d.model})".replace(" )", ")")
                           for d in devices))
    pending = [d.name for d in devices if d.action_needed]
    advice = "copy the targets above into your configuration (or save them: `discover ... > targets.yaml`), " \
             "run `energy-meter-exporter check-config`, then `energy-meter-exporter probe NAME` for each"
    if pending:
        advice = f"first follow the notes for {', '.join(pending)} (a token, the local API); then {advice}"
    console.next(advice)
    return EXIT_OK
