"""`energy-meter-exporter backfill iammeter`: a meter's IAMMETER cloud history as OpenMetrics, for
`promtool tsdb create-blocks-from openmetrics`, so that moving to Prometheus keeps the history.

History comes from `GET /api/v1/site/meterdatalist/{sn}` (or `meterdatalist2`, with power factor)
with `startTime`/`endTime` (dates in the account's time zone, the end date included) and
`interval` (seconds). The API gives at most 2000 points per call, so the range is cut into
chunks of whole days that hold at most 2000 points (1-minute data: one day per call; 5-minute
data: six days), fetched one after the other with a pause between calls. Points outside the
asked range or seen twice are dropped.

The series are the ones the `cloud` transport exports for the same meters (same names, labels
`vendor`, `device`, `installation`, `meter`, `phase`, `obis`), plus any `--label` (give the
`job` and `instance` of the live scrape, so history and live data are one series). The file
groups every series' samples together, family by family, and ends with `# EOF`; the samples are
written to one temporary file per series while the chunks come in, so memory stays small
whatever the range.

Login and token handling are the transport's (`cloud.CloudClient`): the token is reused from
the state directory and a login goes through the quota ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ...model.catalogue import BASE_LABELS, IAMMETER, Metric
from ...model.errors import PollError
from ...model.samples import ParseError
from . import cloud_parse as cp

MAX_POINTS = 2000  # per call (seed)
DAY_SECONDS = 86400
APIS = ("meterdatalist", "meterdatalist2")


@dataclass(frozen=True)
class Plan:
    sns: tuple[str, ...]
    start: date
    end: date  # included
    interval: int = 300
    api: str = "meterdatalist"
    device: str = "iammeter-cloud"
    installation: str = ""
    names: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)  # added to every series
    zone: tzinfo | None = None
    pause: float = 1.0


@dataclass
class Result:
    points: int = 0
    samples: int = 0
    series: int = 0
    first: float | None = None
    last: float | None = None
    calls: int = 0


def chunks(start: date, end: date, interval: int) -> list[tuple[date, date]]:
    """Inclusive date ranges covering start..end, each within MAX_POINTS points."""
    days = max(1, MAX_POINTS * interval // DAY_SECONDS)
    out = []
    day = start
    while day <= end:
        last = min(end, day + timedelta(days=days - 1))
        out.append((day, last))
        day = last + timedelta(days=1)
    return out


def validate(plan: Plan) -> list[str]:
    problems = []
    if plan.end < plan.start:
        problems.append(f"--end {plan.end} is before --start {plan.start}")
    if plan.interval < 60 or plan.interval % 60:
        problems.append(f"--interval {plan.interval}: a whole number of minutes in seconds (60, 300, 900, ...)")
    elif DAY_SECONDS // plan.interval > MAX_POINTS:
        problems.append(f"--interval {plan.interval}: more than {MAX_POINTS} points a day")
    if plan.api not in APIS:
        problems.append(f"--api must be one of {', '.join(APIS)}")
    if not plan.sns:
        problems.append("no meter: give --sn (or a target whose sns lists meters)")
    for name in plan.labels:
        if name in BASE_LABELS or name in ("installation", "meter", "phase", "obis"):
            problems.append(f"--label {name}: that label is set by the exporter")
    return problems


# --- OpenMetrics ------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else f"{int(value)}"


class OpenMetricsWriter:
    """Samples per series in temporary files, joined family by family at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.files: dict[tuple[Metric, str], Any] = {}
        self.last: dict[tuple[Metric, str], float] = {}
        self.samples = 0

    def add(self, metric: Metric, labels: Iterable[tuple[str, str]], timestamp: float, value: float) -> None:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        key = (metric, text)
        if self.last.get(key, float("-inf")) >= timestamp:
            return  # OpenMetrics wants increasing timestamps per series; a repeat adds nothing
        handle = self.files.get(key)
        if handle is None:
            handle = self.files[key] = open(self.workdir / f"{len(self.files)}.om", "w", encoding="utf-8")
        handle.write(f"{metric.name}{{{text}}} {_number(value)} {timestamp:.3f}\n")
        self.last[key] = timestamp
        self.samples += 1

    def finish(self, output: Path) -> int:
        """Write the file (atomically); the number of series."""
        families: dict[Metric, list[Any]] = {}
        for (metric, _), handle in self.files.items():
            handle.close()
            families.setdefault(metric, []).append(handle.name)
        tmp = output.with_name(f".{output.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            for metric in sorted(families, key=lambda m: m.name):
                out.write(f"# HELP {metric.om_name} {_escape(metric.help)}\n")
                out.write(f"# TYPE {metric.om_name} {metric.type}\n")
                for name in families[metric]:
                    with open(name, encoding="utf-8") as part:
                        for line in part:
                            out.write(line)
            out.write("# EOF\n")
        os.replace(tmp, output)
        return len(self.files)


# --- Fetching ---------------------------------------------------------------------------------


def _midnight(day: date, zone: tzinfo | None) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


async def run_backfill(client: Any, plan: Plan, output: Path, *, progress: Callable[[str], None] = lambda _: None,
                       sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> Result:
    """Fetch every chunk of every meter and write `output`. PollError on a failed call (nothing
    is written then)."""
    result = Result()
    begin = _midnight(plan.start, plan.zone)
    finish = _midnight(plan.end + timedelta(days=1), plan.zone)
    base = (("vendor", IAMMETER), ("device", plan.device))
    extra = tuple(sorted(plan.labels.items()))
    with tempfile.TemporaryDirectory(prefix="iammeter-backfill-") as workdir:
        writer = OpenMetricsWriter(Path(workdir))
        try:
            for sn in plan.sns:
                labels = cp.MeterLabels(plan.installation, plan.names.get(sn) or sn)
                for first, last in chunks(plan.start, plan.end, plan.interval):
                    if result.calls:
                        await sleep(plan.pause)
                    params = {"startTime": first.isoformat(), "endTime": last.isoformat(), "interval": plan.interval}
                    what = f"{plan.api} {sn} {first}..{last}"
                    data = await client.get(f"/site/{plan.api}/{quote(sn, safe='')}", params, None, what)
                    result.calls += 1
                    try:
                        points = cp.parse_meterdatalist(data, sn)
                        count = 0
                        for point in points:
                            if not begin <= point.time < finish:
                                continue
                            reading = cp.history_reading(point, sn, labels)
                            for sample in reading.samples:
                                writer.add(sample.metric, base + sample.labels + extra, point.time, sample.value)
                            count += 1
                            result.first = point.time if result.first is None else min(result.first, point.time)
                            result.last = point.time if result.last is None else max(result.last, point.time)
                    except ParseError as exc:
                        raise PollError("parse", f"{what}: {exc}") from None
                    result.points += count
                    progress(f"{sn} {first}..{last}: {count} points")
        except BaseException:
            for handle in writer.files.values():
                handle.close()
            raise
        result.series = writer.finish(output) if writer.samples else 0
        result.samples = writer.samples
    return result


# --- The command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="take account, meters, names and time zone from this target "
                                         "of --config.file (transport cloud)")
    parser.add_argument("--username", help="IAMMETER account (without --target)")
    parser.add_argument("--password-file", help="file holding the password (else $IAMMETER_PASSWORD)")
    parser.add_argument("--base-url", help="the cloud's address (default https://www.iammeter.com)")
    parser.add_argument("--sn", action="append", default=[], help="meter SN (repeat for several)")
    parser.add_argument("--start", required=True, type=date.fromisoformat, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", type=date.fromisoformat, help="last day, YYYY-MM-DD (default: yesterday)")
    parser.add_argument("--interval", type=int, default=300, help="seconds between points (60, 300, ...; default 300)")
    parser.add_argument("--api", choices=APIS, default="meterdatalist",
                        help="meterdatalist, or meterdatalist2 (adds the power factor)")
    parser.add_argument("--output", "-o", required=True, help="OpenMetrics file to write")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                        help="label for every series, e.g. job=energy-meter (repeat)")
    parser.add_argument("--device", help="value of the device label (default: the target's name, or iammeter-cloud)")
    parser.add_argument("--timezone", help="the account's time zone (IANA name; default: the target's, or the system's)")
    parser.add_argument("--state-directory", help="where the token and quota ledger are kept "
                                                  "(default: the configuration's, or ./state)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between calls (default 1)")


class UsageError(Exception):
    pass


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Account settings from --target (in --config.file) or the flags; and the state directory."""
    if args.target:
        from ...config.loader import ConfigError, load_config
        from .. import registry
        from .cloud_settings import IammeterCloudSettings

        try:
            config = load_config(args.config_file, vendors=registry)
        except ConfigError as exc:
            raise UsageError(f"invalid configuration {args.config_file}:\n  " + "\n  ".join(exc.problems)) from None
        target = config.target(args.target)
        if target is None or (target.vendor, target.transport) != ("iammeter", "cloud"):
            raise UsageError(f"{args.config_file} has no target {args.target!r} with vendor iammeter, transport cloud")
        typed = IammeterCloudSettings.of(target)
        settings = {k: getattr(typed, k) for k in ("username", "password", "base_url", "sns", "names",
                                                   "installation", "timezone")}
        settings["device"] = target.name
        settings["base_url"] = args.base_url or settings["base_url"]
        return settings, args.state_directory or config.state_directory
    if not args.username:
        raise UsageError("give --target NAME (with --config.file) or --username")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read {args.password_file}: {exc.strerror or exc}") from None
    else:
        password = os.environ.get("IAMMETER_PASSWORD", "")
    if not password:
        raise UsageError("no password: give --password-file or set IAMMETER_PASSWORD")
    from ...config.loader import Secret

    return {"username": args.username, "password": Secret(password), "base_url": args.base_url, "sns": (), "names": (),
            "installation": "", "timezone": "", "device": None}, args.state_directory or "state"


def _plan(args: argparse.Namespace, settings: Mapping[str, Any]) -> Plan:
    zone_name = args.timezone or settings.get("timezone") or ""
    try:
        zone = ZoneInfo(zone_name) if zone_name else None
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {zone_name!r} is not a known time zone") from None
    labels = {}
    for entry in args.label:
        name, sep, value = entry.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--label {entry!r}: expected NAME=VALUE")
        labels[name] = value
    names = dict(cp.labels_from(settings.get("names") or (), "").items())
    end = args.end or (datetime.now(zone).date() - timedelta(days=1))
    return Plan(
        sns=tuple(args.sn) or tuple(settings.get("sns") or ()), start=args.start, end=end, interval=args.interval,
        api=args.api, device=args.device or settings.get("device") or "iammeter-cloud",
        installation=str(settings.get("installation") or ""), names={sn: m.meter for sn, m in names.items()},
        labels=labels, zone=zone, pause=max(0.0, args.pause),
    )


def backfill_command(args: argparse.Namespace) -> int:
    """Exit status: 0 written, 1 the cloud failed (unreachable, refused, quota), 2 bad input."""
    try:
        settings, state_path = _settings(args)
        plan = _plan(args, settings)
    except UsageError as exc:
        print(f"energy-meter-exporter backfill: {exc}", file=sys.stderr)
        return 2
    # Without any SN, every meter of the account is backfilled (found with one metersdata call).
    problems = [p for p in validate(plan) if not p.startswith("no meter")]
    if problems:
        for problem in problems:
            print(f"energy-meter-exporter backfill: {problem}", file=sys.stderr)
        return 2
    output = Path(args.output)
    if not output.parent.is_dir():
        print(f"energy-meter-exporter backfill: directory {output.parent} does not exist", file=sys.stderr)
        return 2
    return asyncio.run(_run(plan, settings, state_path, output))


async def _run(plan: Plan, settings: Mapping[str, Any], state_path: str, output: Path) -> int:
    import aiohttp

    from ...runtime import logs
    from ...runtime.quota import QuotaLedger
    from ...runtime.state import StateDirectory
    from .cloud_client import CloudClient
    from .cloud_quota import METERSDATA, METERSDATA_LIMITS, Quota
    from .cloud_settings import DEFAULT_BASE_URL

    state = StateDirectory(state_path)
    log = logs.get()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        # A process of its own: its ledger starts from the calls the state directory records.
        client = CloudClient(session, state, QuotaLedger(state), time.time, log,
                             settings.get("base_url") or DEFAULT_BASE_URL, str(settings["username"]),
                             settings["password"])
        try:
            if not plan.sns:  # every meter of the account: one metersdata call, within its quota
                data = await client.get("/site/metersdata", None,
                                        Quota(METERSDATA, client.username, METERSDATA_LIMITS), "metersdata")
                sns = tuple(m.sn for m in cp.parse_metersdata_list(data))
                if not sns:
                    print("energy-meter-exporter backfill: the account has no meters", file=sys.stderr)
                    return 1
                plan = Plan(**{**plan.__dict__, "sns": sns})
            result = await run_backfill(client, plan, output, progress=lambda line: print(line, file=sys.stderr))
        except PollError as exc:
            print(f"energy-meter-exporter backfill: {exc.reason}: {exc.message}", file=sys.stderr)
            return 1
        except ParseError as exc:
            print(f"energy-meter-exporter backfill: parse: {exc}", file=sys.stderr)
            return 1
    if not result.samples:
        print(f"energy-meter-exporter backfill: the cloud has no data for {', '.join(plan.sns)} "
              f"between {plan.start} and {plan.end}; nothing written", file=sys.stderr)
        return 1
    first = datetime.fromtimestamp(result.first or 0).isoformat(timespec="minutes")
    last = datetime.fromtimestamp(result.last or 0).isoformat(timespec="minutes")
    print(f"wrote {output}: {result.series} series, {result.samples} samples from {result.points} points "
          f"({first} .. {last}), {result.calls} calls.\n"
          f"Next: promtool tsdb create-blocks-from openmetrics --max-block-duration=24h {output} "
          f"<prometheus data dir> (then restart Prometheus; history older than its retention is dropped)")
    return 0
