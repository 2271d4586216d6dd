"""Errors a poll can end in. Each carries a short machine `reason` (a label value on
`energy_meter_exporter_poll_errors_total`) and a human message without secrets."""

from __future__ import annotations

# Messages are kept per target for the status page: long ones are cut (a device's text may
# end up in them).
MAX_MESSAGE = 500


def safe_text(text: str) -> str:
    """`text` as it can be encoded to UTF-8: lone surrogates (JSON may carry "\\ud800") become
    U+FFFD. Cheap for the usual ASCII and valid text; only broken text is copied."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        # UTF-16 holds every surrogate as it is; decoding it back replaces the lone ones (and
        # joins a split pair into its character).
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def safe_message(message: str) -> str:
    """A message fit to keep and show: valid text, at most MAX_MESSAGE characters."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return safe_text(message)


class PollError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        message = safe_message(str(message))
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


# The reasons the exporter reports, with what a user should do about each. The manual's (docs/troubleshooting.md)
# troubleshooting table is generated from the same words.
REASONS: dict[str, str] = {
    "timeout": "The device did not answer within the target's timeout.",
    "connection": "The device could not be reached (refused, reset, unreachable, DNS).",
    "tls": "The TLS handshake failed (wrong CA, name mismatch, expired certificate).",
    "unauthorized": "The device or API refused the credentials (token missing, wrong or expired).",
    "api_disabled": "The device's local API is switched off in the vendor's app.",
    "http_error": "The device answered with an unexpected HTTP status.",
    "parse": "The device answered, but the answer could not be understood (broken HTTP framing, garbage, wrong types).",
    "too_large": "The answer was larger than the exporter accepts.",
    "config": "The target's configuration does not fit the device (for example v2 without a token).",
    "quota": "A cloud quota would be exceeded; the call was deferred.",
    "stale": "A push target has been silent for longer than its limit.",
    "internal": "An unexpected error inside the exporter (please report it).",
    "modbus_exception": "The device refused a Modbus read (exception response: wrong unit id or model, or device busy).",
}
