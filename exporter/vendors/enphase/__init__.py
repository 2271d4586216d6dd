"""Enphase IQ Gateway (Envoy): local HTTP(S) API, with Digest auth (firmware < 7) or a JWT
from Enlighten (firmware 7 and later)."""
