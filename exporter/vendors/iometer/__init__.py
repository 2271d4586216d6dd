"""IOmeter: the bridge's local API (`bridge`, transport `local`) and the Partner GraphQL API
(`partner`). The local transport is the vendor's default, so it registers first whichever
module is imported first."""

from . import bridge as _bridge  # noqa: F401
