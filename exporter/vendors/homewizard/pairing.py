"""`energy-meter-exporter pair homewizard HOST`: get an API v2 token by pressing the device's button.

The device refuses `POST /api/user` with 403 `user:creation-not-enabled` until its button is
pressed; then, for 30 seconds, it answers with a token. We ask the user to press it, retry
every second with a countdown, and write the token to a file only its owner can read.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ...model.errors import PollError
from ...runtime.state import write_private_file
from ...transport.http import request
from . import parse
from .local import BUNDLED_CA

RETRY_EVERY = 1.0


@dataclass
class PairResult:
    token: str
    serial: str
    product: str


class PairingError(Exception):
    pass


def _tls(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=ca_file or str(BUNDLED_CA))
    if hasattr(ssl, "VERIFY_X509_STRICT"):
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.check_hostname = False  # the name is checked below, once the serial is known
    return context


async def pair(host: str, name: str, timeout: float, ca_file: str | None = None, insecure: bool = False,
               progress=None, clock=time.monotonic) -> PairResult:
    """Retry `POST /api/user` until the button is pressed or `timeout` passes."""
    user = f"local/{name}"
    if not parse_name_ok(user):
        raise PairingError(f"--name {name!r}: use 1 to 40 letters, digits, spaces or - _ / \\ #")
    headers = {"X-Api-Version": "2", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        context = _tls(ca_file, insecure)
        try:
            resp = await request(session, "GET", f"https://{host}/api", headers=headers, ssl_context=context)
            info = parse.parse_device(resp.json())
        except (PollError, ValueError) as exc:
            raise PairingError(f"cannot reach a HomeWizard device with API v2 at {host}: {exc}") from None
        named = None
        if not insecure:
            named = _tls(ca_file, insecure)
            named.check_hostname = True
        cert_name = f"appliance/{parse.CERT_KINDS.get(info.model, info.model.lower())}/{info.serial.lower()}"
        deadline = clock() + timeout
        while True:
            try:
                resp = await request(session, "POST", f"https://{host}/api/user", headers=headers,
                                     json_body={"name": user}, ssl_context=named or context,
                                     server_hostname=cert_name if named else None)
            except PollError as exc:
                raise PairingError(f"pairing request failed: {exc}") from None
            if resp.status == 200:
                token = resp.json().get("token") if isinstance(resp.json(), dict) else None
                if not isinstance(token, str) or not re.fullmatch(r"[0-9A-Fa-f]{32}", token):
                    raise PairingError("the device answered without a valid token")
                return PairResult(token=token, serial=info.serial, product=info.model)
            code = parse.api_error(_safe_json(resp))
            if resp.status != 403 or code != "user:creation-not-enabled":
                raise PairingError(f"the device refused pairing: HTTP {resp.status} {code or ''}".rstrip())
            left = deadline - clock()
            if left <= 0:
                raise PairingError(f"the button was not pressed within {timeout:g} seconds; run the command again")
            if progress:
                progress(left)
            await asyncio.sleep(min(RETRY_EVERY, left))


def parse_name_ok(user: str) -> bool:
    return bool(re.fullmatch(r"local/[a-zA-Z0-9\-_/\\# ]{1,40}", user))


def _safe_json(resp):
    try:
        return resp.json()
    except PollError:
        return None


async def pair_command(args) -> int:
    """Exit status: 0 paired (token written), 1 pairing failed."""
    from ...console import EXIT_FAILURE, EXIT_OK, Console

    console = Console()
    console.say(f"Pairing with the HomeWizard device at {args.host}.")
    console.say("Press the button on the device now (you have "
                f"{args.timeout:g} seconds; its light blinks once it accepts).")

    def progress(left: float) -> None:
        console.countdown("waiting for the button", left)

    try:
        result = await pair(args.host, args.name, args.timeout, args.ca_file, args.insecure, progress)
    except PairingError as exc:
        console.failed(str(exc))
        console.next(f"check that {args.host} is the device's address, then run the command again "
                     "and press the button while the countdown runs")
        return EXIT_FAILURE
    path = Path(args.output or f"homewizard-{result.serial}.token")
    write_private_file(path, result.token + "\n")
    console.ok(f"paired with {result.product} {result.serial}. Token written to {path} (mode 0600).")
    console.next("add this target to your configuration, then run `energy-meter-exporter check-config` "
                 f"and `energy-meter-exporter probe {result.product.lower()}-{result.serial[-6:]}`:")
    console.block(f"- name: {result.product.lower()}-{result.serial[-6:]}\n  vendor: homewizard\n"
                  f"  host: {args.host}\n  token_file: {path.resolve()}\n  serial: {result.serial}")
    return EXIT_OK
