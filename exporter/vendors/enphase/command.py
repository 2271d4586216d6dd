"""`energy-meter-exporter token enphase`: fetch a gateway token from Enlighten into a file.

For owners who would rather not keep their Enlighten password in the exporter's configuration:
the token lasts a year (owner accounts) and the exporter reads it from `token_file`. The
gateway itself is only asked for its serial number (`/info`, no credentials) and its certificate
fingerprint; the token never goes to it from here, so an unverified certificate risks nothing.

Exit statuses: 0 token written; 1 Enlighten or the gateway refused or failed; 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from pathlib import Path
from typing import TextIO

import aiohttp

from ...console import Console, next_step
from ...model.errors import PollError
from ...model.samples import ParseError
from ...runtime.state import write_private_file
from ...transport.http import request
from ...transport.peercert import colon_hex, peer_fingerprint
from . import parse
from .gateway import split_host
from .token import ENLIGHTEN_URL, TOKEN_URL, TOKEN_WEB_PAGE, fetch_token

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--host", help="the gateway's address: its serial is read from its /info")
    where.add_argument("--serial", help="the gateway's serial number (Enphase app: System > Devices > Gateway)")
    parser.add_argument("--username", help="Enlighten account (e-mail)")
    parser.add_argument("--password-file", help="file holding the Enlighten password (default: ask, without echo)")
    parser.add_argument("--output", "-o", help="token file to write, mode 0600 (default enphase-<serial>.token)")
    parser.add_argument("--enlighten-url", default=ENLIGHTEN_URL, help=f"Enlighten login service (default {ENLIGHTEN_URL})")
    parser.add_argument("--token-url", default=TOKEN_URL, help=f"Enphase token service (default {TOKEN_URL})")


class _Usage(Exception):
    """Bad input from the user: exit 2."""


def _password(args: argparse.Namespace, out: TextIO) -> str:
    if args.password_file:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _Usage(f"cannot read --password-file {args.password_file}: {exc.__class__.__name__}") from None
        password = text.rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Enlighten password for {args.username}: ", stream=out)
    else:
        raise _Usage("no terminal to ask the password on: give --password-file")
    if not password:
        raise _Usage("the password is empty")
    return password


async def _gateway(session: aiohttp.ClientSession, host: str) -> tuple[parse.GatewayInfo, str | None]:
    """The gateway's /info (HTTPS first: firmware 7+ only redirects on HTTP) and, on HTTPS, the
    SHA-256 fingerprint of its certificate. Nothing secret is sent, so nothing is verified."""
    errors: list[str] = []
    for scheme in ("https", "http"):
        url = f"{scheme}://{host}/info"
        try:
            resp = await request(session, "GET", url, ssl_context=False if scheme == "https" else None)
        except PollError as exc:
            errors.append(exc.message)
            continue
        if resp.status != 200:
            errors.append(f"{url}: HTTP {resp.status}")
            continue
        try:
            info = parse.parse_info(resp.body)
        except ParseError as exc:
            raise PollError("parse", f"{url}: {exc}") from None
        return info, (await _fingerprint(host) if scheme == "https" else None)
    raise PollError("connection", "; ".join(errors))


async def _fingerprint(host: str) -> str | None:
    digest = await peer_fingerprint(*split_host(host, 443), timeout=10)
    return colon_hex(digest) if digest else None


async def token_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stderr
    console = Console(err=out)
    try:
        if not args.username:
            raise _Usage("give --username (the Enlighten account's e-mail)")
        if not (args.host or args.serial):
            raise _Usage("give --serial, or --host to read the serial from the gateway")
        if args.serial is not None and not args.serial.strip().isdigit():
            raise _Usage(f"--serial {args.serial!r} is not a gateway serial number (digits)")
        password = _password(args, out)
    except _Usage as exc:
        print(f"energy-meter-exporter token enphase: {exc}", file=out)
        console.next("correct the options; `energy-meter-exporter token enphase --help` lists them")
        return EXIT_USAGE

    fingerprint = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        try:
            serial = args.serial.strip() if args.serial else None
            if args.host:
                print(f"Reading the serial number of the gateway at {args.host} ...", file=out, flush=True)
                info, fingerprint = await _gateway(session, args.host)
                serial = info.serial
                print(f"  gateway {serial}, firmware {info.firmware}", file=out)
                if not info.needs_token:
                    print(f"Firmware {info.firmware} does not use tokens (it predates version 7): configure the "
                          "target with host only; no token was fetched.", file=out)
                    console.next(f"add a target with `vendor: enphase` and `host: {args.host}`, then run "
                                 "`energy-meter-exporter check-config`")
                    return EXIT_OK
            assert serial
            print(f"Logging in to Enlighten as {args.username} and asking for a token for gateway {serial} ...",
                  file=out, flush=True)
            fetch = asyncio.ensure_future(fetch_token(session, args.username, password, serial,
                                                      enlighten_url=args.enlighten_url, token_url=args.token_url))
            started = time.monotonic()
            try:
                while not fetch.done():
                    console.countdown("waiting for Enlighten", TIMEOUT - (time.monotonic() - started))
                    await asyncio.wait([fetch], timeout=0.25)
            finally:
                fetch.cancel()
            token = fetch.result()
        except PollError as exc:
            console.failed(exc.message)
            hint = next_step(exc.reason)
            console.next(f"{hint}; then run the command again" if hint else "run the command again")
            return EXIT_FAILURE

    path = Path(args.output or f"enphase-{serial}.token")
    try:
        write_private_file(path, token.token + "\n")
    except OSError as exc:
        console.failed(f"cannot write {path}: {exc.strerror or exc}")
        console.next("give a writable file with --output, then run the command again")
        return EXIT_FAILURE
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(token.expires_at))
    kind = {"owner": "an owner token", "installer": "an installer token"}.get(token.user_type or "", "a token")
    console.ok(f"got {kind} for gateway {serial}, valid until {expires}. Written to {path} (mode 0600).")
    print("Add this target to your configuration:\n", file=out)
    lines = [f"  - name: enphase-{serial[-6:]}", "    vendor: enphase", f"    host: {args.host or 'envoy.local'}",
             f"    token_file: {path.resolve()}", f"    serial: \"{serial}\""]
    if fingerprint:
        lines.append(f"    tls_fingerprint: \"{fingerprint}\"")
    print("\n".join(lines), file=out)
    if fingerprint:
        print(f"\nThe gateway's certificate has the SHA-256 fingerprint above. Check it before you trust it, e.g.\n"
              f"  openssl s_client -connect {args.host} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
              file=out)
    else:
        print("\nAdd tls_fingerprint (the SHA-256 fingerprint of the gateway's certificate) to pin it; see docs/vendors/enphase.md.",
              file=out)
    print(f"\nThe token expires on {expires}: run this command again before then (or create one at "
          f"{TOKEN_WEB_PAGE}), or give the target username and password so that the exporter renews it itself.",
          file=out)
    console.next(f"run `energy-meter-exporter check-config`, then `energy-meter-exporter probe enphase-{serial[-6:]}`")
    return EXIT_OK
