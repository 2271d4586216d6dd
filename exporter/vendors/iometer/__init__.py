"""IOmeter: the bridge's local API (`bridge`, transport `local`, the vendor's default) and the
Partner GraphQL API (`partner`)."""

from ..registry import Transport, VendorSpec

VENDOR = VendorSpec(
    name="iometer",
    title="IOmeter",
    transports=(
        Transport("local", module="bridge"),
        Transport("partner", module="partner", account="partner_id"),
    ),
    default_transport="local",
    discover="discover",
)
