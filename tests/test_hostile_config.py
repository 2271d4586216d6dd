"""Hostile and broken configuration files: each is a configuration error naming the file (and
the line), found quickly and cheaply; `check-config` and the daemon's start exit with 2, a
reload answers 400 and keeps the running configuration; never a traceback, a hang, a frozen
event loop or memory that stays taken."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import daemon as daemon_module
from exporter.config.loader import _CEILINGS, COMMON_OPTIONS, MAX_DEPTH, MAX_FILE_BYTES, Config, ConfigError, Option
from exporter.daemon import Daemon

from .configs import load_config
from .conftest import ExporterProcess, free_port, http_get, sample_value, wait_until

# --- Files ---------------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """The classic: nine aliases of nine aliases of ... (9^9 strings from about 340 bytes)."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for index in range(1, levels):
        name, previous = chr(ord("a") + index), chr(ord("a") + index - 1)
        text += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    return text


def merge_bomb(levels: int = 40) -> str:
    text = "m0: &m0 {k0: 1, j0: 2}\n"
    for index in range(1, levels):
        text += f"m{index}: &m{index} {{<<: [*m{index - 1}, *m{index - 1}], k{index}: 1}}\n"
    return text


def deep_behind_anchor(depth: int = 500) -> str:
    return "x: &deep " + "[" * depth + "]" * depth + "\ny: *deep\ntargets: []\n"


def deep_through_aliases() -> str:
    """Each anchor 60 levels deep, nested in the next: no part of the text is deeper than 61."""
    return ("a: &a " + "[" * 60 + "1" + "]" * 60 + "\n"
            "b: &b " + "[" * 60 + "*a" + "]" * 60 + "\ntargets: []\n")


HOSTILE_YAML = {
    "billion_laughs": (billion_laughs(), "alias bomb"),
    "billion_laughs_of_mappings": ("a: &a {x: 1, y: 2, z: 3, w: 4}\n" + "".join(
        f"{n}: &{n} {{p: *{p}, q: *{p}, r: *{p}, s: *{p}, t: *{p}, u: *{p}, v: *{p}, w: *{p}}}\n"
        for p, n in zip("abcdefghi", "bcdefghij")), "alias bomb"),
    "merge_bomb": (merge_bomb(), "alias bomb"),
    "recursive_alias": ("targets: &t [*t]\n", "refers to a node that contains it"),
    "deep_behind_anchor": (deep_behind_anchor(), f"nested more than {MAX_DEPTH} levels"),
    "deep_through_aliases": (deep_through_aliases(), f"nested more than {MAX_DEPTH} levels"),
    "deep_flow": ("targets: []\nx: " + "[" * 150 + "]" * 150 + "\n", f"nested more than {MAX_DEPTH} levels"),
    "deep_block": ("targets: []\nx:\n" + "".join("  " * i + "- \n" for i in range(150)),
                   f"nested more than {MAX_DEPTH}"),
    "deep_libyaml_limit": ("targets: []\nx: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
    "impossible_date": ("targets: []\nstate_directory: 2024-13-45\n", "month must be in 1..12"),
    "impossible_date_as_key": ("targets: []\n2024-02-31: x\n", "day is out of range"),
    "impossible_date_after_anchor": ("a: &a 1\ntargets: []\nstate_directory: 2024-13-45\n", "month must be in 1..12"),
    "huge_decimal": ("targets: []\nstate_directory: " + "9" * 5000 + "\n", "thousands of digits"),
    "huge_hex": ("targets: []\nstate_directory: 0x" + "f" * 20000 + "\n", "thousands of digits"),
    "huge_hex_key": ("targets: []\n? 0x" + "f" * 20000 + "\n: 1\n", "thousands of digits"),
    "unknown_tag": ("targets: []\nx: !foo bar\n", "!foo"),
    "python_tag": ("targets: !!python/name:os.system ''\n", "python/name"),
    "bad_base64": ("targets: []\nx: !!binary 'a'\n", "base64"),
    "merge_of_a_scalar": ("targets: []\nx: {<<: 5}\n", "merging"),
    "unhashable_key": ("targets: []\n? {[1]: 2}\n: 3\n", "unhashable"),
    "two_documents": ("targets: []\n---\ntargets: []\n", "another document"),
    "control_character": ("targets: []\nx: a\x01b\n", "U+0001"),
    "nul_character": ("targets: []\nx: a\x00b\n", "U+0000"),
    "undefined_alias": ("targets: *nowhere\n", "undefined alias"),
}


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refusal(path: Path, environ: dict | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=environ or {})
    return str(err.value)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout)


# --- Alias bombs and nesting ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_a_configuration_error_naming_file_and_line(tmp_path, name):
    text, expected = HOSTILE_YAML[name]
    path = write(tmp_path, text)
    tracemalloc.start()
    try:
        message = refusal(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert expected in message
    assert message.startswith(f"{path}:")
    assert message.split(":")[1].isdigit(), message  # the line
    assert peak < 64 * 1024 * 1024  # nothing was expanded


def test_a_billion_laughs_is_a_few_hundred_bytes():
    assert len(billion_laughs().encode()) < 400


@pytest.mark.timeout(120)
def test_check_config_and_the_daemon_refuse_a_billion_laughs(tmp_path):
    path = write(tmp_path, billion_laughs())
    checked = run_cli("check-config", f"--config.file={path}")
    assert checked.returncode == 2, checked.stderr
    assert f"{path}:6: the aliases here would expand" in checked.stderr
    assert "Traceback" not in checked.stderr
    started = run_cli(f"--config.file={path}", "--web.listen-address=127.0.0.1:0")
    assert started.returncode == 2 and "alias bomb" in started.stderr
    assert "Traceback" not in started.stderr


def test_anchors_and_merge_keys_in_ordinary_use_still_work(tmp_path):
    path = write(tmp_path, """\
defaults: &defaults
  interval: 30s
targets:
  - &p1 {name: p1, vendor: homewizard, host: 192.0.2.1}
  - <<: *p1
    name: p2
    host: 192.0.2.2
  - <<: [*p1]
    name: p3
    host: 192.0.2.3
    interval: 1m
""")
    config = load_config(path, environ={})
    assert [(t.name, t.options["host"], t.interval) for t in config.targets] == [
        ("p1", "192.0.2.1", 30.0), ("p2", "192.0.2.2", 30.0), ("p3", "192.0.2.3", 60.0)]
    assert config.targets[1].source.endswith(":5")
    # A key given twice in the mapping itself is still a mistake.
    path.write_text("targets:\n  - &p1 {name: p1, vendor: homewizard, host: a}\n"
                    "  - <<: *p1\n    name: p2\n    name: p3\n")
    assert f"{path}:5: targets[1].name: duplicate key" in refusal(path)


def test_a_fleet_of_anchored_targets_is_not_mistaken_for_a_bomb(tmp_path):
    lines = ["targets:", "  - &first {name: t0, vendor: homewizard, timeout: 2s, host: 10.0.0.1}"]
    lines += [f"  - {{<<: *first, name: t{i}, host: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(1, 3000)]
    config = load_config(write(tmp_path, "\n".join(lines) + "\n"), environ={})
    assert len(config.targets) == 3000 and config.targets[-1].timeout == 2.0


# --- Every failure to read is a configuration error ----------------------------------------------


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = write(tmp_path, b"targets:\n  - name: caf\xe9\n")
    message = refusal(path)
    assert message.startswith(f"{path}:2: cannot read the configuration: not valid UTF-8 at byte offset 22")


def test_a_directory_a_fifo_a_missing_or_huge_file(tmp_path):
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert "is a directory" in refusal(directory)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in refusal(fifo)  # and it did not wait for a writer
    assert "No such file" in refusal(tmp_path / "gone.yaml")
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as out:
        out.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    assert f"{huge}: cannot read the configuration: larger than 16 MiB" == refusal(huge)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(tmp_path):
    path = write(tmp_path, "targets: []\n")
    path.chmod(0)
    assert "Permission denied" in refusal(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["latin1", "deep_behind_anchor", "directory", "impossible_date", "huge_decimal",
                                  "unknown_tag", "nan_jitter"])
def test_check_config_exits_2_without_a_traceback(tmp_path, name):
    path = tmp_path / "c.yaml"
    if name == "latin1":
        path.write_bytes(b"targets:\n  - name: caf\xe9\n")
    elif name == "directory":
        path.mkdir()
    elif name == "nan_jitter":
        path.write_text("targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    jitter: .nan\n")
    else:
        path.write_text(HOSTILE_YAML[name][0])
    proc = run_cli("check-config", f"--config.file={path}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and f"{path}" in proc.stderr
    assert "valid," not in proc.stdout


# --- Numbers -------------------------------------------------------------------------------------

NOT_FINITE = [".nan", ".NaN", ".inf", "-.inf", "+.inf", "nan", "inf", "'nan'", "1.0e+400", "-1.0e+400",
              "1e400s", "1" + "0" * 400 + "s", "1" + "0" * 400, "1" + "0" * 400 + ".5ms"]


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("key", sorted(k for k, o in COMMON_OPTIONS.items() if o.type in ("float", "duration")))
def test_every_number_refuses_nan_and_infinity_with_file_and_line(tmp_path, key, value):
    path = write(tmp_path, f"targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    {key}: {value}\n")
    assert f"{path}:5: targets[0].{key}: " in refusal(path)
    path = write(tmp_path, f"defaults:\n  {key}: {value}\n"
                           "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n")
    assert f"{path}:2: defaults.{key}: " in refusal(path)


@pytest.mark.parametrize("snippet,expected", [
    ("mqtt_brokers:\n  - name: b\n    host: h\n    keepalive: .nan\n", "mqtt_brokers[0].keepalive: expected a finite"),
    ("mqtt_brokers:\n  - name: b\n    host: h\n    port: 70000\n", "mqtt_brokers[0].port: must be at most 65535"),
    ("mqtt_brokers:\n  - name: b\n    host: h\n    port: -" + "9" * 400 + "\n",
     "mqtt_brokers[0].port: must be at least"),
    ("http_push:\n  listen: ':0'\n  read_timeout: .inf\n", "http_push.read_timeout: expected a finite"),
    ("http_push:\n  listen: ':0'\n  max_body_bytes: " + "9" * 40 + "\n", "http_push.max_body_bytes: must be at most"),
])
def test_numbers_in_sections_have_sane_ranges(tmp_path, snippet, expected):
    path = write(tmp_path, snippet + "targets: []\n")
    message = refusal(path)
    assert expected in message and message.startswith(f"{path}:")


@pytest.mark.parametrize("snippet,expected", [
    ("jitter: 5", "targets[0].jitter: must be at most 1"),
    ("jitter: -0.5", "targets[0].jitter: must be at least 0"),
    ("interval: 400d", "targets[0].interval: must be at most"),
    ("max_backoff: 1.0e+300", "targets[0].max_backoff: must be at most"),
])
def test_numbers_out_of_any_sane_range(tmp_path, snippet, expected):
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    " + snippet + "\n")
    assert f"{path}:5: {expected}" in refusal(path)


def test_check_config_never_prints_every_nans(tmp_path):
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    interval: .nan\n")
    proc = run_cli("check-config", f"--config.file={path}")
    assert proc.returncode == 2 and "nans" not in proc.stdout + proc.stderr
    assert f"{path}:5: targets[0].interval: expected a finite duration" in proc.stderr


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["int", "float", "duration"]),
       value=st.one_of(st.floats(), st.integers(min_value=-10**400, max_value=10**400),
                       st.text(max_size=30), st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,5})?(ms|s|m|h|d)?\Z")))
def test_a_numeric_option_is_a_finite_number_in_range_or_a_value_error(kind, value):
    option = Option(kind, minimum=0.0)
    try:
        number = option.convert(value)
    except ValueError as exc:
        assert str(exc)
        return
    assert math.isfinite(number) and 0 <= number <= _CEILINGS[kind]


# --- Secrets and strings with control characters -------------------------------------------------

SECRET = "s3cr3t-t0ken-abcdef0123456789"


@pytest.mark.parametrize("content,ok", [
    (f"{SECRET}\n", True), (f"{SECRET}\r\n", True), (f"  {SECRET}  \n\n", True),
    (f"{SECRET[:10]}\n{SECRET[10:]}\n", False), (f"{SECRET[:10]}\r{SECRET[10:]}", False),
    (f"{SECRET[:10]}\x00{SECRET[10:]}", False), (f"{SECRET[:10]}\t{SECRET[10:]}", False),
    (f"{SECRET[:10]}\x85{SECRET[10:]}", False),
])
def test_a_token_file_must_hold_one_line(tmp_path, content, ok):
    (tmp_path / "hw.token").write_text(content, encoding="utf-8", newline="")
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    token_file: hw.token\n")
    if ok:
        assert load_config(path, environ={}).targets[0].options["token"].reveal() == SECRET
        return
    message = refusal(path)
    assert message.startswith(f"{path}:5: targets[0].token_file: ")
    assert "control character" in message
    assert SECRET[:10] not in message and SECRET[10:] not in message


def test_a_binary_or_huge_token_file(tmp_path):
    (tmp_path / "bin.token").write_bytes(b"\xff\xfe" + SECRET.encode())
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    token_file: bin.token\n")
    message = refusal(path)
    assert "not valid UTF-8" in message and SECRET not in message
    with open(tmp_path / "bin.token", "wb") as out:
        out.truncate(10 * 1024 * 1024)
    assert "larger than 64 KiB" in refusal(path)
    os.unlink(tmp_path / "bin.token")
    os.mkfifo(tmp_path / "bin.token")  # would block a plain open() for ever
    assert "not a regular file" in refusal(path)


@pytest.mark.parametrize("lines,key", [
    ('    host: a\n    token: "abc\\r\\nX-Injected: 1"\n', "token"),
    ("    host: a\n    token: ${TOKEN}\n", "token"),
    ('    host: "192.0.2.1\\n"\n', "host"),
    ('    host: a\n    ca_file: "ca.pem\\0"\n', "ca_file"),
    ('    host: a\n    name: "p1\\n"\n', "name"),
])
def test_strings_with_control_characters_are_refused(tmp_path, lines, key):
    name = "" if "name:" in lines else "    name: p1\n"
    path = write(tmp_path, "targets:\n  - vendor: homewizard\n" + name + lines)
    message = refusal(path, environ={"TOKEN": f"{SECRET}\n"})
    assert f"targets[0].{key}: " in message
    assert "abc" not in message and SECRET not in message


def test_environment_references_cannot_multiply_a_long_variable(tmp_path):
    path = write(tmp_path, "targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    token: "
                 + "${LONG}" * 5_000 + "\n")
    message = refusal(path, environ={"LONG": "x" * 10_000})
    assert f"{path}:5: targets[0].token: expands to more than 64 KiB" in message
    assert load_config(path, environ={"LONG": "x"}).targets[0].options["token"].reveal() == "x" * 5_000


# --- Fuzz: any bytes, any YAML-ish text: a Config or a ConfigError -------------------------------

YAML_PIECES = ["targets:", "defaults:", "mqtt_brokers:", "http_push:", "- ", "  ", "\n", ": ", "&a ", "&b ", "*a",
               "*b", "<<: ", "[", "]", "{", "}", ", ", "? ", "!!str ", "!!binary ", "!x ", "'", '"', "\\", "|",
               ">", "#", "---", "...", "name: p1", "vendor: homewizard", "host: h", "interval: ", "jitter: ",
               ".nan", ".inf", "-1", "0x1f", "1e9", "2024-13-45", "10s", "~", "null", "\t", "\x00", "\u2028",
               "\ufeff", "é", "9" * 50, "token_file: ", "state_directory: "]


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def load_or_config_error(path: Path) -> None:
    try:
        config = load_config(path, environ={})
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(config, Config)
    for target in config.targets:
        assert all(math.isfinite(v) for v in (target.interval, target.timeout, target.jitter, target.max_backoff))


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_fuzz_any_bytes(fuzz_dir, data):
    path = fuzz_dir / "bytes.yaml"
    path.write_bytes(data)
    load_or_config_error(path)


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=60))
def test_fuzz_yaml_ish_text(fuzz_dir, pieces):
    path = fuzz_dir / "text.yaml"
    path.write_text("".join(pieces), encoding="utf-8", errors="surrogatepass")
    load_or_config_error(path)


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.lists(st.sampled_from(YAML_PIECES), max_size=20), value=st.sampled_from(YAML_PIECES + NOT_FINITE))
def test_fuzz_values_of_a_valid_target(fuzz_dir, head, value):
    path = fuzz_dir / "target.yaml"
    key = ["interval", "timeout", "jitter", "stale_after", "host", "token", "name", "max_backoff"][len(head) % 8]
    path.write_text(f"targets:\n  - name: p1\n    vendor: homewizard\n    host: a\n    {key}: {''.join(head)}{value}\n")
    load_or_config_error(path)


# --- Reloads in a running daemon -----------------------------------------------------------------

GOOD = ("state_directory: state\n"
        "targets:\n  - name: p1\n    vendor: homewizard\n    host: 127.0.0.1:9\n    interval: 60s\n")


def hostile_files() -> dict[str, object]:
    return {
        "billion_laughs": billion_laughs(),
        "latin1": b"targets:\n  - name: caf\xe9\n",
        "deep_behind_anchor": deep_behind_anchor(),
        "impossible_date": HOSTILE_YAML["impossible_date"][0],
        "nan_jitter": GOOD + "    jitter: .nan\n",
        "token_with_newline": GOOD + '    token: "a\\nb"\n',
        "directory": None,
        "vanished": None,
    }


def make_hostile(path: Path, name: str) -> None:
    content = hostile_files()[name]
    if name == "directory":
        path.unlink()
        path.mkdir()
    elif name == "vanished":
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


async def metrics_reload_ok(daemon: Daemon) -> float | None:
    status, _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{daemon.port}/metrics")
    assert status == 200
    return sample_value(body.decode(), "energy_meter_exporter_config_last_reload_successful")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(hostile_files()))
async def test_a_failed_reload_keeps_the_running_configuration(tmp_path, name):
    path = write(tmp_path, GOOD)
    daemon = Daemon(load_config(path))
    await daemon.start("127.0.0.1", 0)
    try:
        runner = daemon.runners["p1"]
        make_hostile(path, name)
        ok, message = await daemon.reload()
        assert not ok and str(path) in message
        assert message.startswith("Reload failed; the previous configuration keeps running")
        assert daemon.runners == {"p1": runner} and daemon.config.targets[0].name == "p1"
        assert await metrics_reload_ok(daemon) == 0
        if path.is_dir():
            path.rmdir()
        path.write_text(GOOD.replace("name: p1", "name: p2"))
        ok, message = await daemon.reload()
        assert ok, message
        assert set(daemon.runners) == {"p2"} and await metrics_reload_ok(daemon) == 1
    finally:
        await daemon.stop()


async def test_reload_reads_the_file_off_the_event_loop_and_one_at_a_time(tmp_path, monkeypatch):
    """While a reload reads and checks the file, the daemon answers; a second reload waits for the
    first (each read below waits until a health check has been answered meanwhile)."""
    path = write(tmp_path, GOOD)
    daemon = Daemon(load_config(path))
    await daemon.start("127.0.0.1", 0)
    reading = threading.Semaphore(0)
    answered = threading.Event()
    seen = {"answered_during_read": [], "concurrent": 0, "most_concurrent": 0}
    lock = threading.Lock()

    def slow_load(config_path, *args, **kwargs):
        with lock:
            seen["concurrent"] += 1
            seen["most_concurrent"] = max(seen["most_concurrent"], seen["concurrent"])
        reading.release()
        seen["answered_during_read"].append(answered.wait(5))  # on the loop, nothing could answer
        answered.clear()
        try:
            return load_config(config_path, *args, **kwargs)
        finally:
            with lock:
                seen["concurrent"] -= 1

    def health_checks(count: int) -> None:
        for _ in range(count):
            if not reading.acquire(timeout=20):
                return
            if http_get(f"http://127.0.0.1:{daemon.port}/-/healthy", timeout=10)[0] == 200:
                answered.set()

    monkeypatch.setattr(daemon_module, "load_config", slow_load)
    checker = threading.Thread(target=health_checks, args=(2,))
    checker.start()
    try:
        fleet = ["state_directory: state", "targets:"] + [
            f"  - {{name: p{i}, vendor: homewizard, host: 127.0.0.1:9, interval: 60s}}" for i in range(1, 2001)]
        path.write_text("\n".join(fleet) + "\n")
        results = await asyncio.gather(daemon.reload(), daemon.reload())
        assert all(ok for ok, _ in results), results
        assert seen["answered_during_read"] == [True, True]
        assert seen["most_concurrent"] == 1
        assert len(daemon.runners) == 2000
    finally:
        await asyncio.to_thread(checker.join, 30)
        await daemon.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(180)
def test_sighup_and_http_reload_of_hostile_files_in_a_running_exporter(tmp_path):
    config = write(tmp_path, GOOD)
    proc = ExporterProcess(config, free_port(), extra=["--web.enable-lifecycle"])
    try:
        def reload_ok() -> float | None:
            return sample_value(proc.metrics(), "energy_meter_exporter_config_last_reload_successful")

        assert reload_ok() == 1
        rss_before = rss_bytes(proc.proc.pid)
        # SIGHUP with a billion laughs: refused, logged, the loop answers, memory stays.
        config.write_text(billion_laughs())
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "alias bomb" in proc.logs(), timeout=30, what="the bomb refused")
        assert http_get(proc.url("/-/healthy"), timeout=5)[0] == 200
        assert reload_ok() == 0
        assert rss_bytes(proc.proc.pid) - rss_before < 64 * 1024 * 1024
        # SIGHUP with lists nested 500 deep behind an anchor, and with a Latin-1 byte.
        config.write_text(GOOD)
        proc.signal(signal.SIGHUP)
        wait_until(lambda: reload_ok() == 1, what="a good reload")
        config.write_text(deep_behind_anchor())
        proc.signal(signal.SIGHUP)
        wait_until(lambda: reload_ok() == 0, what="the deep file refused")
        wait_until(lambda: "nested more than" in proc.logs(), what="the reason logged")
        # POST /-/reload answers 400 with the reason, never 500.
        config.write_bytes(b"targets:\n  - name: caf\xe9\n")
        status, _, body = post(proc.url("/-/reload"))
        assert status == 400 and b"not valid UTF-8 at byte offset 22" in body
        config.write_text(billion_laughs())
        status, _, body = post(proc.url("/-/reload"))
        assert status == 400 and b"alias bomb" in body
        logs = proc.logs()
        assert "configuration reload failed" in logs
        assert "Task exception was never retrieved" not in logs and "Traceback" not in logs
        assert 'device="p1"' in proc.metrics()  # the running configuration stayed
    finally:
        proc.stop()


def post(url: str) -> tuple[int, dict, bytes]:
    """POST with no body, as `curl -X POST` sends it (no form content type)."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", parts.path, headers={"Content-Length": "0"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()



@pytest.mark.parametrize("text, expected", [("1e7", 1e7), ("2E+4", 2e4), ("1.0e7", 1e7), ("50000", 5e4)])
def test_a_number_written_with_an_exponent_is_a_number(tmp_path, text, expected):
    """YAML 1.1 reads `1e7` (no dot) as a string; a float option takes it as the number it is."""
    path = write(tmp_path, f"defaults:\n  max_power: {text}\ntargets:\n  - name: p1\n    vendor: homewizard\n"
                           "    host: 127.0.0.1\n")
    config = load_config(str(path))
    assert config.targets[0].option("max_power") == expected
