"""Where the simulators write what the vendors document on their own, the exporter must read it.

The simulators take nothing from the exporter's vendor code (an import-linter contract), so these
checks compare two independent readings of the vendors' documents, on real sockets: every
HomeWizard v2 product's certificate name, and every OBIS notation the IOmeter Partner API offers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from exporter.config.loader import Secret, TargetConfig
from exporter.model import catalogue as M
from exporter.model.samples import Reading
from exporter.runtime.context import AdapterContext
from exporter.runtime.state import StateDirectory
from exporter.vendors.homewizard.local import HomeWizardLocal
from exporter.vendors.iometer.partner import OPTIONS, IOmeterPartner
from simulators.homewizard import PRODUCTS, HomeWizardSimulator
from simulators.iometer_partner import PartnerApiSimulator, demo_installations, demo_values


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def _context(session: aiohttp.ClientSession, tmp_path: Path) -> AdapterContext:
    return AdapterContext(session, StateDirectory(tmp_path), structlog.get_logger())


@pytest.mark.parametrize("product", [name for name, spec in PRODUCTS.items() if spec.v2_measurement])
async def test_every_v2_product_is_read_over_tls_verified_against_its_appliance_name(product, session, tmp_path):
    sim = await HomeWizardSimulator(product, v1=False).start()
    try:
        target = TargetConfig(
            name="hw", vendor="homewizard", transport="local", interval=10, timeout=5, max_backoff=60,
            stale_after=60, jitter=0,
            options={"api_version": "v2", "tls_verify": True, "host": sim.v2_host,
                     "token": Secret(sim.issue_token()), "ca_file": str(sim.ca_file)},
        )
        reading = await HomeWizardLocal(target, _context(session, tmp_path)).poll()
        assert reading.devices[0].model == product
        assert reading.value_of(M.ACTIVE_POWER) == sim.v2_measurement["power_w"]
    finally:
        await sim.stop()


def _partner_target(sim: PartnerApiSimulator) -> TargetConfig:
    raw: dict[str, Any] = {"partner_id": sim.partner_id, "secret": sim.secret, "endpoint": sim.url,
                           "mode": "query", "auth": "wsse"}
    options = {key: OPTIONS[key].convert(value) for key, value in raw.items()}
    for key, option in OPTIONS.items():
        options.setdefault(key, option.default)
    return TargetConfig(name="account", vendor="iometer", transport="partner", interval=60.0, timeout=5.0,
                        max_backoff=0.1, stale_after=180.0, jitter=0.1, options=options)


async def _account_samples(obis_format: str, taken: float, session: aiohttp.ClientSession,
                           tmp_path: Path) -> set[tuple]:
    sim = PartnerApiSimulator(installations=demo_installations(1, 1), obis_format=obis_format)
    await sim.start()
    try:
        sim.publish(sim.installations[0].meters[0], taken, demo_values(12345.5, -678.0))
        reading: Reading = await IOmeterPartner(_partner_target(sim), _context(session, tmp_path / obis_format)).poll()
    finally:
        await sim.stop()
    return {(s.metric.name, tuple(sorted(dict(s.labels).items())), s.value) for s in reading.samples}


@pytest.mark.parametrize("obis_format", ["hex", "short", "decimal_full"])
async def test_an_account_reads_the_same_in_every_obis_format_the_api_offers(obis_format, session, tmp_path):
    taken = float(int(time.time()) - 60)
    expected = await _account_samples("decimal", taken, session, tmp_path)
    assert any(name.startswith("energy_meter_account_") and value == 12345.5 * 3600
               for name, _, value in expected)
    assert await _account_samples(obis_format, taken, session, tmp_path) == expected
