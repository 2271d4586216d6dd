"""Vendor-neutral ways to reach a device: HTTP (aiohttp and a lean keep-alive client), MQTT,
HTTP push, TLS certificate reading. Vendors supply what is theirs (topics, reply bodies)."""
