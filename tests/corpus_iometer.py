"""Every IOmeter measurement body, parsed (for the catalogue checks).

The conformance corpus has the local bridge's two bodies. There is no public capture of a
bridge on a three-phase meter nor of the Partner API, so two more entries come from the
simulators and say so in their names: the bridge's three-phase reading (hex OBIS codes as the
bridge writes them), and a partner account built by running the real queries against the
simulator's implementation of the seed's schema and parsing the answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from graphql import print_ast

from exporter.model.samples import Reading
from exporter.vendors.iometer import parse
from exporter.vendors.iometer.account import AccountReadings
from exporter.vendors.iometer.partner import INSTALLATIONS, READINGS
from simulators.iometer import THREE_PHASE_READING
from simulators.iometer_partner import PartnerApiSimulator, demo_installations, demo_values

SIMULATED_BRIDGE = "iometer-local/(simulator) three-phase reading"
SIMULATED_ACCOUNT = "iometer-partner/(simulator) account with two installations"


def readings(conformance_root: Path) -> Iterator[tuple[str, Reading]]:
    root = conformance_root / "iometer-local"
    for name, parser in (("reading.json", parse.parse_bridge_reading), ("status.json", parse.parse_bridge_status)):
        path = root / name
        if path.is_file():
            yield path.relative_to(conformance_root).as_posix(), parser(json.loads(path.read_bytes()))
    yield SIMULATED_BRIDGE, parse.parse_bridge_reading(THREE_PHASE_READING)
    yield SIMULATED_ACCOUNT, simulated_account()


def simulated_account() -> Reading:
    """A partner account as the exporter sees it: discovery, then one page of readings."""
    sim = PartnerApiSimulator(installations=demo_installations(2, 2))
    base = 1_740_000_000.0
    for step in range(3):
        for installation in sim.installations:
            for meter in installation.meters:
                sim.publish(meter, base + 60 * step, demo_values(5000.0 + step, 800.0))
    account = AccountReadings()
    body = sim.execute(print_ast(INSTALLATIONS.document), {"pagination": {"limit": 100, "offset": 0}})
    account.set_installations(parse.parse_installations(parse.graphql_result(body).data))
    body = sim.execute(print_ast(READINGS.document), {"startTime": None, "limit": 100, "cursor": None})
    items, _ = parse.parse_readings_page(parse.graphql_result(body).data)
    for item in items:
        account.offer(item)
    return account.snapshot()
