"""`energy-meter-exporter discover`: find meters on the network and print targets to paste.

Two ways to find a device:
- mDNS: the services the vendors' devices announce; `discover` listens for a few seconds.
- `--scan`: addresses the user names (a network such as 192.168.1.0/24, addresses, names,
  `host:port`), on the devices' real ports (80 and 443, or `--ports`), with a bounded number of
  connections at once. Devices that do not announce themselves are found this way.

Every candidate is then asked who it is, with the requests the exporter itself uses and
without credentials. Each vendor says how (its `DeviceIdentifier`, in
exporter/vendors/<vendor>/discover.py, handed in by the command line): this module knows no
vendor. HTTPS is used without certificate checks here: only identity is read and nothing secret
is sent. The result is YAML: a `targets:` list with what was learnt (model, serial, firmware,
API version) as comments and the keys a device needs next (a token, a certificate
fingerprint) as commented lines.

Exit status: 0 at least one device found, 1 none found, 2 bad input.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

import aiohttp
import yaml

from .console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Console
from .model.errors import PollError
from .model.jsontext import label_text
from .transport.http import Response, request
from .transport.peercert import peer_fingerprint, unverified_context

DEFAULT_PORTS = (80, 443)
MAX_ADDRESSES = 8192  # a /20 on two ports; more is most likely a typo
DEFAULT_TIMEOUT = 3.0
DEFAULT_CONCURRENCY = 32
DEFAULT_MDNS_SECONDS = 5.0
MAX_BODY = 256 * 1024  # identity answers are small; a big one is some other device



# --- what is scanned -------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Address:
    host: str  # an IP address or a name, without brackets
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


def parse_scan(specs: Iterable[str], ports: Iterable[int] = DEFAULT_PORTS) -> list[Address]:
    """Addresses from `--scan` values: networks (`192.168.1.0/24`), addresses, names, each
    optionally with `:port` (then only that port), comma-separated or repeated."""
    ports = tuple(ports)
    out: dict[Address, None] = {}
    for spec in specs:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            for address in _addresses(item, ports):
                out[address] = None
                if len(out) > MAX_ADDRESSES:
                    raise ValueError(f"--scan: more than {MAX_ADDRESSES} address and port pairs; "
                                     "scan a smaller network (a /24 is 254 addresses)")
    return list(out)


def _addresses(item: str, ports: tuple[int, ...]) -> list[Address]:
    if "://" in item:
        raise ValueError(f"--scan {item!r}: give addresses without a scheme or path, e.g. 192.168.1.50 or meter.local:8080")
    if item.count(":") > 1 and not item.startswith("["):  # a bare IPv6 address (no port)
        try:
            return [Address(str(ipaddress.IPv6Address(item)), p) for p in ports]
        except ValueError:
            raise ValueError(f"--scan {item!r}: not an IPv6 address (write one with a port as [fd00::5]:80)") from None
    if "/" in item:
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"--scan {item!r}: not a network (expected e.g. 192.168.1.0/24)") from None
        if network.num_addresses > MAX_ADDRESSES:
            raise ValueError(f"--scan {item!r}: {network.num_addresses} addresses is too many; "
                             "scan a smaller network (a /24 is 254 addresses)")
        hosts = list(network.hosts()) or [network.network_address]
        return [Address(str(h), p) for h in hosts for p in ports]
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
        return [Address(host, int(port))]
    return [Address(host, p) for p in ports]


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
    title: str = ""  # the vendor's name as people write it

    @property
    def key(self) -> tuple[str, ...]:
        if self.serial:
            return (self.vendor, self.model, self.serial.lower())
        return (self.vendor, "@" + self.host)

    def describe(self) -> str:
        parts = [f"{self.title or self.vendor} {self.model or 'device'}".strip()]
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


@dataclass(frozen=True)
class DeviceIdentifier:
    """How one vendor's devices are found and told apart (exporter/vendors/<vendor>/discover.py)."""

    vendor: str
    # Asks one address whether it is one of the vendor's devices: (prober, address, scheme,
    # base URL) -> the device, or None when the answer is not the vendor's.
    identify: Callable[["Prober", Address, str, str], Awaitable[Device | None]]
    title: str = ""  # the vendor's name as people write it (filled in from its declaration)
    schemes: tuple[str, ...] = ("http", "https")  # what its devices speak
    # mDNS service types its devices announce -> the scheme the announced port speaks (None: find out)
    services: Mapping[str, str | None] = field(default_factory=dict)
    # What an announcement alone says of a device that does not answer: (device, the
    # announcement's properties, scheme) -> fills the device in.
    announced: Callable[[Device, Mapping[str, str], str | None], None] | None = None
    # The target name a person would pick (the serial's end is added where two would share one);
    # default: the vendor's name.
    name: Callable[[Device], str] | None = None
    # A device of this vendor seen twice: merges the second into the first (found_by, model,
    # serial and firmware are merged for every vendor).
    merge: Callable[[Device, Device], None] | None = None


class Prober:
    """Asks one address who it is; one request at a time per device (weak Wi-Fi chips)."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float, identifiers: Sequence[DeviceIdentifier]) -> None:
        self.session = session
        self.timeout = timeout
        self.identifiers = tuple(identifiers)
        self.insecure = unverified_context()

    async def get(self, url: str, headers: dict[str, str] | None = None) -> Response | None:
        try:
            return await asyncio.wait_for(
                request(self.session, "GET", url, headers=headers, max_bytes=MAX_BODY,
                        ssl_context=self.insecure if url.startswith("https:") else None),
                self.timeout)
        except (PollError, asyncio.TimeoutError):
            return None

    async def reachable(self, address: Address) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port), self.timeout)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        await _closed(writer)
        return True

    async def tls_fingerprint(self, address: Address) -> str | None:
        """SHA-256 of the certificate the address presents, or None if it speaks no TLS."""
        return await peer_fingerprint(address.host, address.port, self.timeout, self.insecure)

    async def scheme(self, address: Address) -> str:
        if address.port == 80:
            return "http"
        if address.port == 443:
            return "https"
        return "https" if await self.tls_fingerprint(address) else "http"

    async def identify(self, address: Address, scheme: str | None = None, vendor: str | None = None) -> Device | None:
        scheme = scheme or await self.scheme(address)
        base = f"{scheme}://{address.netloc}"
        identifiers = [i for i in self.identifiers if scheme in i.schemes]
        if vendor is not None:  # an mDNS announcement says which vendor to ask first
            identifiers.sort(key=lambda i: i.vendor != vendor)
        for identifier in identifiers:
            device = await identifier.identify(self, address, scheme, base)
            if device is not None:
                device.title = identifier.title
                return device
        return None


def json_body(resp: Response | None) -> Any:
    """The answer's JSON, or None when there is no answer or it is not JSON."""
    if resp is None:
        return None
    try:
        return resp.json()
    except PollError:
        return None


def header(headers: Any, name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        pass


def _titles(identifiers: Iterable[DeviceIdentifier]) -> str:
    """"A, B and C"."""
    titles = [i.title or i.vendor for i in identifiers]
    return ", ".join(titles[:-1]) + " and " + titles[-1] if len(titles) > 1 else "".join(titles)


# --- mDNS ------------------------------------------------------------------------------------------


async def browse(seconds: float, interfaces: list[str] | None = None,
                 on_tick: Callable[[float, int], None] | None = None, *,
                 service_types: Iterable[str]) -> list[Announcement]:
    """Listen for these mDNS services for `seconds` and resolve what was announced.
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


def _services(identifiers: Iterable[DeviceIdentifier]) -> dict[str, tuple[DeviceIdentifier, str | None]]:
    """mDNS service type -> (its vendor's identifier, the scheme the announced port speaks)."""
    return {service: (identifier, scheme)
            for identifier in identifiers for service, scheme in identifier.services.items()}


def from_announcement(a: Announcement, identifiers: Iterable[DeviceIdentifier]) -> Device:
    """What the announcement alone says, for a device that does not answer the identity request."""
    identifier, scheme = _services(identifiers).get(a.service_type, (None, "http"))
    address = Address(a.addresses[0], a.port)
    device = Device(identifier.vendor if identifier else "unknown", address.target_host(scheme or "http"))
    if identifier is not None:
        device.title = identifier.title
        if identifier.announced is not None:
            identifier.announced(device, a.properties, scheme)
    device.notes.append("announced itself but did not answer: is it busy or updating? run `probe` once it is configured")
    return device


# --- putting it together ---------------------------------------------------------------------------


@dataclass
class Options:
    scan: list[Address] = field(default_factory=list)
    mdns: bool = True
    mdns_seconds: float = DEFAULT_MDNS_SECONDS
    interfaces: list[str] | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY


async def discover(options: Options, identifiers: Sequence[DeviceIdentifier],
                   console: Console | None = None) -> list[Device]:
    """The devices found, each recognised by one of `identifiers` (one per vendor)."""
    console = console or Console(interactive=False)
    devices: dict[tuple[str, str], Device] = {}
    connector = aiohttp.TCPConnector(limit=options.concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        prober = Prober(session, options.timeout, identifiers)
        if options.mdns:
            await _from_mdns(options, prober, console, devices)
        if options.scan:
            await _from_scan(options, prober, console, devices)
    return _named(list(devices.values()), identifiers)


async def _from_mdns(options: Options, prober: Prober, console: Console, devices: dict) -> None:
    services = _services(prober.identifiers)
    announcing = [i for i in prober.identifiers if i.services]
    if not announcing:
        return
    console.say(f"Listening for {_titles(announcing)} mDNS announcements for {options.mdns_seconds:g}s ...")
    try:
        announcements = await browse(
            options.mdns_seconds, options.interfaces,
            lambda left, n: console.countdown("listening", left, f"{n} announced"), service_types=services)
    except (OSError, ValueError, RuntimeError) as exc:
        console.say(f"mDNS is not available here ({exc}); continuing without it. Use --scan to give addresses.")
        return
    if announcements:
        console.say(f"{len(announcements)} announced; asking each who it is ...")
    for a in announcements:
        identifier, scheme = services.get(a.service_type, (None, None))
        device = None
        for address in a.addresses:
            device = await prober.identify(Address(address, a.port), scheme, identifier.vendor if identifier else None)
            if device is not None:
                break
        announced = from_announcement(a, prober.identifiers)
        if device is None:
            device = announced
        else:  # what the device would not tell (its local API is off), its announcement may
            for key in ("model", "serial", "firmware"):
                if not getattr(device, key) and getattr(announced, key):
                    setattr(device, key, getattr(announced, key))
            for key, value in announced.options.items():
                device.options.setdefault(key, value)
        _add(devices, device, "mDNS", prober.identifiers)


async def _from_scan(options: Options, prober: Prober, console: Console, devices: dict) -> None:
    addresses = options.scan
    hosts = len({e.host for e in addresses})
    console.say(f"Scanning {hosts} address{'es' if hosts != 1 else ''} ({len(addresses)} address:port pairs, "
                f"{options.concurrency} at a time) ...")
    done = 0
    found = 0
    semaphore = asyncio.Semaphore(options.concurrency)

    async def one(address: Address) -> None:
        nonlocal done, found
        try:
            async with semaphore:
                if await prober.reachable(address):
                    device = await prober.identify(address)
                    if device is not None:
                        _add(devices, device, "scan", prober.identifiers)
                        found += 1
        finally:
            done += 1
            console.progress("scanning", done, len(addresses), f"{found} answered")

    console.progress("scanning", 0, len(addresses), "0 answered")
    await asyncio.gather(*(one(e) for e in addresses))


def _identifier(identifiers: Iterable[DeviceIdentifier], vendor: str) -> DeviceIdentifier | None:
    return next((i for i in identifiers if i.vendor == vendor), None)


def _add(devices: dict[tuple[str, str], Device], device: Device, how: str,
         identifiers: Iterable[DeviceIdentifier]) -> None:
    """Merge a device seen twice (mDNS and scan; a device answering on two ports)."""
    known = devices.get(device.key) or next(
        (d for d in devices.values() if d.vendor == device.vendor and d.host == device.host), None)
    if known is None:
        device.found_by.append(how)
        devices[device.key] = device
        return
    if how not in known.found_by:
        known.found_by.append(how)
    identifier = _identifier(identifiers, known.vendor)
    if identifier is not None and identifier.merge is not None:
        identifier.merge(known, device)
    for key in ("model", "serial", "firmware"):
        if not getattr(known, key) and getattr(device, key):
            setattr(known, key, getattr(device, key))


def _base_name(device: Device, identifiers: Iterable[DeviceIdentifier]) -> str:
    identifier = _identifier(identifiers, device.vendor)
    return identifier.name(device) if identifier is not None and identifier.name is not None else device.vendor


def _named(devices: list[Device], identifiers: Iterable[DeviceIdentifier]) -> list[Device]:
    """Short names; the serial's end is added only where two devices would share one."""
    devices.sort(key=lambda d: (d.vendor, d.model, d.serial, d.host))
    bases = [_base_name(d, identifiers) for d in devices]
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


async def discover_command(args: Any, identifiers: Sequence[DeviceIdentifier],
                           console: Console | None = None) -> int:
    console = console or Console()
    try:
        ports = parse_ports(args.ports) if args.ports else DEFAULT_PORTS
        addresses = parse_scan(args.scan or [], ports)
        if args.timeout <= 0 or args.concurrency < 1 or args.mdns_timeout < 0:
            raise ValueError("--timeout and --mdns-timeout must be positive, --concurrency at least 1")
    except ValueError as exc:
        console.failed(str(exc))
        console.next("correct the option; `energy-meter-exporter discover --help` lists them")
        return EXIT_USAGE
    if args.no_mdns and not addresses:
        console.failed("nothing to do: --no-mdns without --scan")
        console.next("give addresses to scan, e.g. `--scan 192.168.1.0/24`")
        return EXIT_USAGE
    options = Options(scan=addresses, mdns=not args.no_mdns, mdns_seconds=args.mdns_timeout,
                      interfaces=args.interface or None, timeout=args.timeout, concurrency=args.concurrency)
    devices = await discover(options, identifiers, console)
    if not devices:
        silent = [i for i in identifiers if not i.services]
        console.failed("no meters found" + ("" if addresses else " by mDNS"))
        console.next("check that the device is powered and on this network; "
                     + (f"{_titles(silent)} meters do not announce themselves: " if silent else "")
                     + "give addresses with `--scan 192.168.1.0/24` (your network) or `--scan ADDRESS`")
        return EXIT_FAILURE
    console.product(render_yaml(devices))
    console.ok(f"found {len(devices)} device{'s' if len(devices) != 1 else ''}: "
               + ", ".join(f"{d.name} ({d.title or d.vendor} {d.model})".replace(" )", ")")
                           for d in devices))
    pending = [d.name for d in devices if d.action_needed]
    advice = "copy the targets above into your configuration (or save them: `discover ... > targets.yaml`), " \
             "run `energy-meter-exporter check-config`, then `energy-meter-exporter probe NAME` for each"
    if pending:
        advice = f"first follow the notes for {', '.join(pending)} (a token, the local API); then {advice}"
    console.next(advice)
    return EXIT_OK
