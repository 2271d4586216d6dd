"""`--shard INDEX/COUNT`: each replica polls only its share of the targets (rendezvous hashing
on a shard key: the target's name, or the account of targets that share a cloud quota)."""

from __future__ import annotations

import textwrap
from collections import Counter

import aiohttp
import pytest

from exporter import cli
from exporter.config.loader import TargetConfig
from exporter.daemon import Daemon
from exporter.runtime.shard import Shard, parse_shard, shard_of
from exporter.vendors import load_all, registry
from simulators.homewizard import HomeWizardSimulator

from .configs import load_config

load_all()


def target(name: str, vendor: str = "homewizard", transport: str = "local", **options) -> TargetConfig:
    return TargetConfig(name=name, vendor=vendor, transport=transport, interval=10.0, timeout=5.0,
                        max_backoff=300.0, stale_after=60.0, jitter=0.1, options=options)


NAMES = [f"meter-{i:05d}" for i in range(6000)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shares_are_disjoint_and_complete_and_even(count):
    targets = [target(name, host="192.0.2.1") for name in NAMES]
    shares = [[t.name for t in targets if Shard(index, count).owns(registry.shard_key(t))] for index in range(count)]
    owners = Counter(name for share in shares for name in share)
    assert set(owners) == set(NAMES)  # complete
    assert set(owners.values()) == {1}  # disjoint
    for share in shares:  # and about even
        assert abs(len(share) - len(NAMES) / count) < 0.1 * len(NAMES) / count


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 10])
def test_adding_a_replica_moves_only_its_share_and_only_to_it(count):
    moved = [name for name in NAMES if shard_of(name, count) != shard_of(name, count + 1)]
    assert all(shard_of(name, count + 1) == count for name in moved)  # nothing moves between old replicas
    assert abs(len(moved) / len(NAMES) - 1 / (count + 1)) < 0.02


def test_targets_of_one_cloud_account_stay_on_one_replica():
    targets = [target(f"iam-{a}-{i}", "iammeter", "cloud", username=f"account-{a}", password="pw")
               for a in range(4) for i in range(6)]
    targets += [target(f"partner-{p}-{i}", "iometer", "partner", partner_id=f"partner-{p}", secret="s")
                for p in range(3) for i in range(5)]
    for count in range(2, 9):
        by_account = {}
        for t in targets:
            account = t.options.get("username") or t.options.get("partner_id")
            owner = next(i for i in range(count) if Shard(i, count).owns(registry.shard_key(t)))
            by_account.setdefault(account, set()).add(owner)
        assert all(len(owners) == 1 for owners in by_account.values()), by_account
    # devices of one vendor and no account are spread by their names
    assert registry.shard_key(target("p1", host="192.0.2.1")) == "p1"


@pytest.mark.parametrize("value, problem", [
    ("3/3", "INDEX must be 0 to 2"),
    ("1/0", "COUNT must be at least 1"),
    ("x", "expected INDEX/COUNT"),
    ("-1/3", "expected INDEX/COUNT"),
    ("1", "expected INDEX/COUNT"),
])
def test_a_bad_flag_is_refused_with_exit_status_2(value, problem, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([f"--shard={value}"])
    assert exc.value.code == 2
    assert problem in capsys.readouterr().err


def test_the_flag_is_parsed():
    assert cli.build_parser().parse_args(["--shard", "2/5"]).shard == Shard(2, 5)
    assert cli.build_parser().parse_args([]).shard is None
    assert parse_shard(" 0 / 1 ") == Shard(0, 1)


async def target_ups(port: int) -> set[str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    return {line.split('device="', 1)[1].split('"', 1)[0]
            for line in text.splitlines() if line.startswith("energy_meter_exporter_target_up{")}


async def test_two_replicas_poll_the_whole_fleet_once(tmp_path):
    device = await HomeWizardSimulator("HWE-P1").start()
    names = [f"p1-{i}" for i in range(12)]
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""
        state_directory: {tmp_path / 'state'}
        defaults:
          interval: 1s
        targets:
        """) + "".join(f"  - {{name: {n}, vendor: homewizard, host: '{device.v1_host}'}}\n" for n in names))
    config = load_config(path)
    replicas = [Daemon(config, shard=Shard(index, 2)) for index in range(2)]
    try:
        ports = [await replica.start("127.0.0.1", 0) for replica in replicas]
        shares = [await target_ups(port) for port in ports]
        assert shares[0] and shares[1]
        assert not shares[0] & shares[1]
        assert shares[0] | shares[1] == set(names)
        assert set(replicas[0].runners) == shares[0]
        # a reload keeps each replica to its share
        ok, message = await replicas[1].reload()
        assert ok and f"{len(shares[1])} on this replica (shard 1/2)" in message
        assert set(replicas[1].runners) == shares[1]
    finally:
        for replica in replicas:
            await replica.stop()
        await device.stop()
