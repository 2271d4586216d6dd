"""The dashboards Grafana provisions (grafana/dashboards/*.json) are what the code in dashboards/
generates, byte for byte: a board is changed in the code, then written with `python -m dashboards`."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys

import dashboards

from .conftest import ROOT

COMMITTED = ROOT / "grafana" / "dashboards"
HOW = "edit dashboards/ and run `python -m dashboards` (`make dashboards`) to rewrite grafana/dashboards/"


def first_difference(committed: str, generated: str) -> str:
    diff = difflib.unified_diff(committed.splitlines(), generated.splitlines(), "committed", "generated", n=1,
                                lineterm="")
    return "\n".join(list(diff)[:12])


def test_committed_boards_are_what_the_code_generates():
    generated = dashboards.rendered()
    committed = {path.name: path.read_text(encoding="utf-8") for path in COMMITTED.glob("*.json")}
    assert set(committed) == set(generated), f"boards without code or code without boards: {HOW}"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is not what dashboards/ generates: {HOW}\n" + \
            first_difference(committed[name], text)


def test_the_command_writes_the_same_files(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dashboards", "--output", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    written = {path.name: path.read_bytes() for path in tmp_path.glob("*.json")}
    assert written == {path.name: path.read_bytes() for path in COMMITTED.glob("*.json")}, HOW


def test_the_output_is_stable_json_with_a_final_newline():
    for name, text in dashboards.rendered().items():
        assert text.endswith("}\n") and not text.endswith("\n\n"), name
        board = json.loads(text)
        # sorted keys at every level: a regenerated file differs only where a board changed
        assert text == json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n", name


def test_the_manual_describes_every_board_and_panel():
    manual = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    for name, text in dashboards.rendered().items():
        board = json.loads(text)
        assert f"## {board['title']}" in manual and f"`{board['uid']}`" in manual, name
        missing = [p["title"] for p in board["panels"] if p["type"] != "row" and f"**{p['title']}**" not in manual]
        assert not missing, f"docs/dashboards.md does not describe {missing} of {board['title']}"
