"""IAMMETER meters in TCP upload mode (run mode `tcp`): they connect to `host:port`, or with TLS
to `tls://host:port`, and write the `/api/monitorjson` document every upload interval (2 s at the
fastest), the same JSON as the MQTT and HTTP uploads.

All TCP targets share the listeners of the `tcp_push:` section (`exporter/transport/tcp_push.py`):
`listen` for the meters' `host:port`, `tls_listen` for `tls://host:port`. A target claims the
documents that carry its SN; documents of other SNs are refused and counted. Whether a meter
keeps its connection between uploads or opens one per upload, both are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ...config.loader import Config, Settings, setting
from ...transport.tcp_push import TcpPushListener, TcpPushSettings, check_section
from ..registry import TransportSpec, register
from .mqtt import check_target
from .push import IammeterPushAdapter, check_upload_targets


@dataclass(frozen=True, kw_only=True, slots=True)
class IammeterTcpSettings(Settings):
    sn: str = setting("str", required=True, help="the meter's serial number; uploads carrying another SN are refused")


OPTIONS = IammeterTcpSettings.table()


def check_config(config: Config) -> Iterable[tuple[tuple, str]]:
    section = config.sections.get("tcp_push") or {}
    yield from check_section(section)
    listening = bool(section.get("listen") or section.get("tls_listen"))
    yield from check_upload_targets(config, "tcp", IammeterTcpSettings, listening=listening,
                                    hint="transport tcp receives on the tcp_push listeners, which have no address: "
                                         "add for example `tcp_push: {listen: \":9100\"}` (or tls_listen with a "
                                         "certificate)")


class IammeterTcpAdapter(IammeterPushAdapter):
    """A TCP upload target: claims its SN on the shared TCP/TLS listeners and waits for documents."""

    section = "tcp_push"
    section_settings = TcpPushSettings
    listener_type = TcpPushListener
    target_settings = IammeterTcpSettings


SPEC = register(TransportSpec(
    vendor="iammeter",
    transport="tcp",
    options=OPTIONS,
    create=IammeterTcpAdapter,
    delivery="push",
    default_interval=60.0,  # the meter's default upload interval
    min_interval=2.0,  # the fastest the firmware uploads
    check_target=check_target,
    check_config=check_config,
    description="IAMMETER meter in TCP upload mode (connects to the tcp_push listeners, plain or TLS)",
))
