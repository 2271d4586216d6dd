"""Errors a poll can end in. Each carries a short machine `reason` (a label value on
`energy_meter_exporter_poll_errors_total`) and a human message without secrets."""

from __future__ import annotations


class PollError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


# The reasons the exporter reports, with what a user should do about each. The README's
# troubleshooting table is generated from the same words.
REASONS: dict[str, str] = {
    "timeout": "The device did not answer within the target's timeout.",
    "connection": "The device could not be reached (refused, reset, unreachable, DNS).",
    "tls": "The TLS handshake failed (wrong CA, name mismatch, expired certificate).",
    "unauthorized": "The device or API refused the credentials (token missing, wrong or expired).",
    "api_disabled": "The device's local API is switched off in the vendor's app.",
    "http_error": "The device answered with an unexpected HTTP status.",
    "parse": "The device answered, but the body could not be understood (garbage, wrong types).",
    "too_large": "The answer was larger than the exporter accepts.",
    "config": "The target's configuration does not fit the device (for example v2 without a token).",
    "quota": "A cloud quota would be exceeded; the call was deferred.",
    "stale": "A push target has been silent for longer than its limit.",
    "internal": "An unexpected error inside the exporter (please report it).",
    "modbus_exception": "The device refused a Modbus read (exception response: wrong unit id or model, or device busy).",
}
