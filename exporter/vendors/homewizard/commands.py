"""The arguments of `energy-meter-exporter pair homewizard HOST` (the pairing itself: pairing.py)."""

from __future__ import annotations

import argparse


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="address of the device (IP or host name)")
    parser.add_argument("--output", "-o", help="token file to write (default homewizard-<serial>.token)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the button (default 60)")
    parser.add_argument("--name", default="energy-meter-exporter", help="user name shown in the HomeWizard app")
    parser.add_argument("--ca-file", help="CA to verify the device with (default: HomeWizard's CA, bundled)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the device's certificate")
