"""IAMMETER Wi-Fi energy meters: local HTTP API (`http`), Modbus/TCP (`modbus`), the meter
publishing to an MQTT broker (`mqtt`) or uploading to the exporter over HTTP(S) (`push`) or
TCP/TLS (`tcp`), and the IAMMETER cloud (`cloud`); `backfill iammeter` writes the cloud's history
for Prometheus."""

from ..registry import Command, Transport, VendorSpec

VENDOR = VendorSpec(
    name="iammeter",
    title="IAMMETER",
    transports=(
        Transport("http", module="http"),
        Transport("modbus", module="modbus"),
        Transport("mqtt", module="mqtt", sections=("mqtt_brokers",)),
        Transport("push", module="push", sections=("http_push",)),
        Transport("tcp", module="tcp", sections=("tcp_push",)),
        Transport("cloud", module="cloud", account="username"),
    ),
    default_transport="http",
    discover="discover",
    commands=(Command("backfill", help="write a meter's cloud history as OpenMetrics for promtool tsdb "
                                       "create-blocks-from openmetrics (0 written, 1 failed, 2 bad input)",
                      arguments="backfill:add_arguments", run="backfill:backfill_command"),),
)
