"""HomeWizard Energy devices: local API v1 (HTTP) and v2 (HTTPS with a token)."""
