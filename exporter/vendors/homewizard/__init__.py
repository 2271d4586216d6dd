"""HomeWizard Energy devices: local API v1 (HTTP) and v2 (HTTPS with a token)."""

from ..registry import Command, Transport, VendorSpec

VENDOR = VendorSpec(
    name="homewizard",
    title="HomeWizard",
    transports=(Transport("local", module="local"),),
    default_transport="local",
    discover="discover",
    commands=(Command("pair", help="pair with a device and store the token it issues",
                      arguments="commands:add_pair_arguments", run="pairing:pair_command"),),
)
