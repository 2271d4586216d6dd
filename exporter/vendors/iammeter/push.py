"""IAMMETER meters in HTTP upload mode: they POST the `/api/monitorjson` document to an address
of the user's choosing every upload interval (port 443 means HTTPS to the meter, any other port
plain HTTP; the firmware sends the body as text/plain).

All push targets share the one listener of the `http_push:` section (`exporter/transport/http_push.py`); a
target claims the uploads that carry its SN. The meter's address field takes `host:port`, so the
listener accepts any path unless `http_push.path` names one; where the address takes a path
too, `http_push.path_token` keeps out uploads that do not carry the secret. For HTTPS the meter
uploads to port 443: the listener serves TLS (`tls_cert_file`, `tls_key_file`) on `listen`
443, or behind a port forward from 443.

The answer is `{"successful":true,"message":"ok"}`: the meters upload to their cloud's
`/api/v1/sensor/UploadSensor`, whose answer has that shape, and the push documents ask for no
other; refusals carry `"successful":false` and a message.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ...config.loader import Config, Settings, TargetConfig, setting
from ...model.errors import PollError
from ...model.samples import Emit
from ...runtime import logs
from ...runtime.backoff import Backoff
from ...runtime.context import AdapterContext
from ...transport.http_push import (PushFormat, PushListener, PushSettings, Sink, check_section, normalize_id,
                                    parse_networks)
from ...web.serving import parse_listen_address
from ..registry import TransportSpec, register
from .mqtt import check_target
from .parse import parse_monitorjson

# After a failure to listen (port taken), the listener is tried again after 1 s, doubling up to
# a minute. No jitter: the port is local, and the targets share one listener anyway.
LISTEN_RETRY = Backoff(base=1.0, ceiling=60.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterPushSettings(Settings):
    sn: str = setting("str", required=True, help="the meter's serial number; uploads carrying another SN are refused")


OPTIONS = IammeterPushSettings.table()

# The SN of a body that is not valid JSON (a truncated upload still names its meter).
_SN_IN_BROKEN_JSON = re.compile(r'"SN"\s*:\s*"([^"\\]{1,64})"')


def body_sn(document: Any) -> Any:
    return document.get("SN") if isinstance(document, dict) else None


def broken_body_sn(text: str) -> str | None:
    match = _SN_IN_BROKEN_JSON.search(text)
    return match.group(1) if match else None


def reply(ok: bool, message: str) -> Mapping[str, Any]:
    return {"successful": ok, "message": message}


FORMAT = PushFormat(device_id=body_sn, reply=reply, device_id_in_text=broken_body_sn, id_name="SN")


def check_config(config: Config) -> Iterable[tuple[tuple, str]]:
    section = config.sections.get("http_push") or {}
    if section.get("listen"):
        try:
            parse_listen_address(section["listen"], ":8088")
        except ValueError as exc:
            yield ("http_push", "listen"), str(exc)
    try:
        parse_networks(section.get("allowed_networks"))
    except ValueError as exc:
        yield ("http_push", "allowed_networks"), str(exc)
    yield from check_section(section)
    yield from check_upload_targets(config, "push", IammeterPushSettings, listening=bool(section.get("listen")),
                                    hint="transport push receives on the http_push listener, which has no `listen` "
                                         "address: add for example `http_push: {listen: \":8088\"}`")


def check_upload_targets(config: Config, transport: str, settings: Any, *, listening: bool,
                         hint: str) -> Iterable[tuple[tuple, str]]:
    """One upload transport's targets: a listener to receive on, and each SN claimed once."""
    seen: dict[str, str] = {}
    # The loader runs this only when every target is valid, so the index is the file's index.
    for index, target in enumerate(config.targets):
        if (target.vendor, target.transport) != ("iammeter", transport):
            continue
        if not listening and not seen:  # said once, at the first target
            yield ("targets", index, "transport"), hint
        sn = normalize_id(settings.of(target).sn)
        if sn in seen:
            yield ("targets", index, "sn"), f"SN {sn} is already received by {transport} target {seen[sn]!r}"
        else:
            seen[sn] = target.name


class IammeterPushAdapter:
    """An upload target: claims its SN on the shared listener of its section and waits for the
    meter's uploads. The HTTP upload's; `tcp.py` gives it the TCP/TLS listener instead."""

    section = "http_push"
    section_settings: Any = PushSettings  # .from_section(mapping) -> settings with .key()
    listener_type: Any = PushListener  # (settings, log, store, format=) with start/attach/detach
    target_settings: Any = IammeterPushSettings  # the transport's Settings: .of(target).sn

    def __init__(self, target: TargetConfig, context: AdapterContext) -> None:
        self.target = target
        self._context = context
        self.sn = normalize_id(self.target_settings.of(target).sn)
        self.listener: Any = None
        self._key: tuple | None = None
        self._sink: Sink | None = None

    async def run(self, emit: Emit) -> None:
        try:
            settings = self.section_settings.from_section(self._context.sections.get(self.section) or {})
        except PollError as exc:
            emit(exc)
            await asyncio.Event().wait()
        store, shared = self._context.store, self._context.shared

        async def new_listener() -> Any:
            return await self.listener_type(settings, logs.get(listener=self.section), store, format=FORMAT).start()

        failures = 0
        while True:
            try:
                listener = await shared.acquire(settings.key(), new_listener)
                break
            except PollError as exc:  # a port is taken: say so, and try again later
                emit(exc)
                failures += 1
                await asyncio.sleep(LISTEN_RETRY.delay(failures))
        self._sink = Sink(self.target.name, emit, parse_monitorjson)
        self.listener, self._key = listener, settings.key()
        listener.attach(self.sn, self._sink)
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is None:
            return
        listener.detach(self.sn, self._sink)
        await self._context.shared.release(self._key)


SPEC = register(TransportSpec(
    vendor="iammeter",
    transport="push",
    options=OPTIONS,
    create=IammeterPushAdapter,
    delivery="push",
    default_interval=60.0,  # the meter's default upload interval
    min_interval=2.0,  # the fastest the firmware uploads
    check_target=check_target,
    check_config=check_config,
    description="IAMMETER meter in HTTP upload mode (POSTs to the http_push listener)",
))
