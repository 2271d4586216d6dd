"""IOmeter: the bridge's local API (`bridge`, transport `local`, the vendor's default) and the
Partner GraphQL API (`partner`)."""
