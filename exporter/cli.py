"""Command line, in the style of Prometheus exporters.

Exit statuses: 0 success; 1 a runtime failure (device unreachable in `probe`, port in use);
2 bad input from the user (flags, configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import os
import stat
import sys
from typing import Any, Callable

from . import __version__
from .config.loader import ConfigError, load_config
from .runtime import logs
from .vendors import registry

DEFAULT_CONFIG = "config.yaml"
DEFAULT_LISTEN = ":9896"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _common(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    # Subcommands take the same flags; SUPPRESS keeps a flag given before the subcommand.
    default = (lambda v: v) if with_defaults else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--config.file", dest="config_file", default=default(DEFAULT_CONFIG),
                        metavar="PATH", help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default=default("info"),
                        help="only log messages of this level or above (default info)")
    parser.add_argument("--log.format", dest="log_format", choices=logs.FORMATS, default=default("logfmt"),
                        help="log format (default logfmt)")


def _shard(value: str):
    from .runtime.shard import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:  # argparse prints it and exits with 2
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shard ")) from None


def _seconds(value: str) -> float:
    from .config.loader import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds < 86400:  # also NaN
        raise argparse.ArgumentTypeError(f"{value!r}: expected a duration above 0 and below a day, e.g. 10s")
    return seconds


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be at least 1")
    return number


class _LazyParser(argparse.ArgumentParser):
    """A subcommand's parser whose arguments are added (by `extend`) only when the subcommand is
    used or its help shown: they come from modules that import much code (a vendor's, the
    discovery's) the daemon would carry for nothing."""

    def __init__(self, *args: Any, extend: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extend = extend

    def _complete(self) -> None:
        extend, self._extend = self._extend, None
        if extend is not None:
            extend(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()


def _titles(titles: list[str]) -> str:
    return ", ".join(titles[:-1]) + " and " + titles[-1] if len(titles) > 1 else "".join(titles)


def _discover_arguments(p: argparse.ArgumentParser) -> None:
    from .discover import DEFAULT_CONCURRENCY, DEFAULT_MDNS_SECONDS, DEFAULT_TIMEOUT

    identifiers = registry.identifiers()
    announcing = ", ".join(i.title for i in identifiers if i.services)
    silent = [i.title for i in identifiers if not i.services]
    p.description = (f"Listen for meters that announce themselves ({announcing}) and probe addresses given with "
                     f"--scan ({_titles(silent + ['the others'])}); print YAML targets.")
    p.add_argument("--scan", action="append", metavar="ADDRESSES",
                   help="network (192.168.1.0/24), address, name or host:port to probe; "
                        "comma-separated or repeated")
    p.add_argument("--ports", metavar="PORTS", help="ports to probe where --scan gives none (default 80,443)")
    p.add_argument("--no-mdns", action="store_true", help="do not listen for mDNS announcements")
    p.add_argument("--mdns-timeout", type=float, default=DEFAULT_MDNS_SECONDS, metavar="SECONDS",
                   help=f"how long to listen for announcements (default {DEFAULT_MDNS_SECONDS:g})")
    p.add_argument("--interface", action="append", metavar="ADDRESS",
                   help="local address to listen for mDNS on (repeatable; default all)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"per connection and request (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"devices probed at once (default {DEFAULT_CONCURRENCY})")


def build_parser() -> argparse.ArgumentParser:
    """The parser: the daemon's flags, its commands, and the vendors' helper commands
    (`COMMAND VENDOR ...`, from the vendor registry)."""
    parser = argparse.ArgumentParser(
        prog="energy-meter-exporter",
        description=f"Prometheus exporter for {_titles([v.title for v in registry.vendor_specs()])} energy meters.",
    )
    _common(parser, with_defaults=True)
    parser.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN, metavar="[HOST]:PORT",
                        help=f"address to serve /metrics on (default {DEFAULT_LISTEN})")
    parser.add_argument("--web.config.file", dest="web_config", metavar="PATH",
                        help="TLS and basic auth settings, in the format of Prometheus's exporter-toolkit")
    parser.add_argument("--web.read-header-timeout", dest="read_header_timeout", type=_seconds, default="10s",
                        metavar="DURATION", help="close a connection whose request head has not arrived within "
                                                 "this (default 10s)")
    parser.add_argument("--web.max-connections", dest="max_connections", type=_positive, default=512, metavar="N",
                        help="at most this many connections at once; at the limit the oldest waiting one is "
                             "closed (default 512)")
    parser.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                        help="allow POST /-/reload (off by default, as in Prometheus; SIGHUP always reloads)")
    parser.add_argument("--shard", type=_shard, metavar="INDEX/COUNT",
                        help="poll only this replica's share of the targets: INDEX from 0 to COUNT-1 "
                             "(targets of one cloud account stay together; see docs/operations.md, Several replicas)")
    parser.add_argument("--version", action="version", version=f"energy-meter-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_LazyParser)

    p = sub.add_parser("check-config", help="validate the configuration and exit (0 valid, 2 invalid)")
    _common(p, with_defaults=False)
    p.add_argument("--no-secrets", action="store_true",
                   help="do not resolve secrets: ${VAR} not set here and *_file paths are checked for form only "
                        "(for a file written for another machine)")

    p = sub.add_parser("probe", help="poll one configured target once and print what it would export")
    _common(p, with_defaults=False)
    p.add_argument("name", help="the target's name in the configuration")

    p = sub.add_parser("discover", help="find meters (mDNS, --scan) and print ready-to-paste targets (0 found, 1 none)",
                       extend=_discover_arguments)
    _common(p, with_defaults=False)

    for name, offered in registry.commands().items():
        p = sub.add_parser(name, help=offered[0][1].help)
        _common(p, with_defaults=False)
        by_vendor = p.add_subparsers(dest="vendor", required=True, parser_class=_LazyParser)
        for vendor, _ in offered:
            v = by_vendor.add_parser(vendor.name, help=vendor.title,
                                     extend=functools.partial(_command_arguments, vendor.name, name))
            _common(v, with_defaults=False)
    return parser


def _command_arguments(vendor: str, command: str, parser: argparse.ArgumentParser) -> None:
    registry.load_command(vendor, command).add_arguments(parser)


def load_or_exit(path: str, next_step: str | None = None, *, read_secrets: bool = True):
    """The configuration, or its problems on stderr and exit status 2, never a traceback."""
    try:
        return load_config(path, vendors=registry, read_secrets=read_secrets)
    except Exception as exc:  # whatever reading the file raises, it is bad input, not a crash
        problems = exc.problems if isinstance(exc, ConfigError) else [
            f"{path}: cannot read the configuration ({type(exc).__name__})"]
        print(f"energy-meter-exporter: invalid configuration {path}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if next_step:
            print(f"Next: {next_step}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def check_config(path: str, read_secrets: bool = True) -> int:
    """`check-config`: the verdict and the targets on stdout, the next step on stderr."""
    from .console import Console

    again = "" if read_secrets else " --no-secrets"
    config = load_or_exit(path, f"correct the lines above and run `energy-meter-exporter check-config{again} "
                                f"--config.file {path}` again", read_secrets=read_secrets)
    console = Console()
    lines = [f"{path}: valid, {len(config.targets)} targets"
             + ("" if read_secrets else " (secrets not read: environment variables and files are checked where "
                                        "the exporter runs)")]
    lines += [f"  {t.name}: {t.vendor} {t.transport}, every {t.interval:g}s" for t in config.targets]
    console.product("\n".join(lines))
    if config.targets:
        console.next(f"run `energy-meter-exporter probe {config.targets[0].name}` to poll a target once, then start "
                     "the exporter and open its status page (http://localhost:9896/)")
    else:
        console.next("add targets (`energy-meter-exporter discover` prints them for the meters it finds)")
    return EXIT_OK


def warn_if_world_readable(path: str, config, log) -> None:
    from .config.loader import ReferencedSecret, Secret

    # secrets sit in targets and in shared sections (an MQTT broker's password); those read from
    # files or the environment (a Kubernetes Secret, systemd's credentials) are not in the file
    items = [dict(t.options) for t in config.targets]
    for section in config.sections.values():
        items.extend(section if isinstance(section, (list, tuple)) else [section])
    if not any(isinstance(v, Secret) and not isinstance(v, ReferencedSecret)
               for item in items if isinstance(item, dict) for v in item.values()):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("configuration file is readable by other users; if it holds secrets, chmod 600 it "
                    "or move them to *_file / ${ENV} references", file=path)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    log = logs.get()

    if args.command == "check-config":
        return check_config(args.config_file, read_secrets=not args.no_secrets)
    if args.command == "probe":
        from .probe import probe

        config = load_or_exit(args.config_file, "correct the lines above, then run `energy-meter-exporter check-config`")
        return asyncio.run(probe(config, args.name))
    if args.command == "discover":
        from .discover import discover_command

        return asyncio.run(discover_command(args, registry.identifiers()))
    if args.command in registry.commands():  # a vendor's helper command: COMMAND VENDOR ...
        status = registry.load_command(args.vendor, args.command).run(args)
        return asyncio.run(status) if inspect.iscoroutine(status) else status

    from .daemon import serve
    from .web.serving import parse_listen_address

    try:
        host, port = parse_listen_address(args.listen)
    except ValueError as exc:
        print(f"energy-meter-exporter: --web.listen-address {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = load_or_exit(args.config_file)
    from .config.webconfig import load_web_config

    try:
        web_config = load_web_config(args.web_config)
    except ConfigError as exc:
        print(f"energy-meter-exporter: invalid web configuration {args.web_config}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    warn_if_world_readable(args.config_file, config, log)
    log.info("starting", version=__version__, config=args.config_file)
    from .web.serving import Limits

    limits = Limits(head_timeout=args.read_header_timeout, max_connections=args.max_connections)
    return asyncio.run(serve(config, host, port, web_config, shard=args.shard, limits=limits,
                             lifecycle=args.enable_lifecycle))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
