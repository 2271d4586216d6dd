"""Enphase IQ Gateway (Envoy): local HTTP(S) API, with Digest auth (firmware < 7) or a JWT
from Enlighten (firmware 7 and later)."""

from ..registry import Command, Transport, VendorSpec

VENDOR = VendorSpec(
    name="enphase",
    title="Enphase",
    transports=(Transport("local", module="local"),),
    default_transport="local",
    discover="discover",
    commands=(Command("token", help="fetch an access token from the vendor's cloud into a 0600 file "
                                    "(0 written, 1 failed, 2 bad input)",
                      arguments="command:add_arguments", run="command:token_command"),),
)
