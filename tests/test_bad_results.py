"""Hand-edited or broken results.json given to `check` and `report`, and bad arguments of those
commands: one line naming the wrong field, exit 2, never a crash (issue 10)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_bad_input import DEEP, assert_one_line, file_with, s
from typer.testing import CliRunner

from privlab.cli import app

runner = CliRunner()


# --------------------------------------------------------------------------- check and report


@pytest.fixture(scope="module")
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real results.json of a tiny run (one variant, two rounds)."""
    out = tmp_path_factory.mktemp("res") / "run"
    result = runner.invoke(
        app,
        [
            "run",
            *s(
                "partition.num_clients=3",
                "topology.rounds=2",
                "model.params={hidden=[8]}",
                'variants=[{name="plain"}]',
                "expectations=[]",
            ),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return out / "results.json"


def edited(results_file: Path, tmp_path: Path, edit: Callable[[dict], None]) -> str:
    data = json.loads(results_file.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return str(path)


def _del(keys: list[str]) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return edit


def _put(keys: list[str], value: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


RESULTS_CASES = [
    (
        "missing-final-accuracy",
        _del(["variants", "plain", "utility", "final_accuracy"]),
        ("variants.plain.utility.final_accuracy", "missing"),
    ),
    ("missing-variants", _del(["variants"]), ("variants", "missing")),
    (
        "accuracy-is-text",
        _put(["variants", "plain", "utility", "final_accuracy"], "high"),
        ("variants.plain.utility.final_accuracy", "'high'"),
    ),
    (
        "accuracy-is-bool",
        _put(["variants", "plain", "utility", "final_accuracy"], True),
        ("variants.plain.utility.final_accuracy",),
    ),
    (
        "metric-is-a-table",
        _put(["variants", "plain", "attacks", "mia_loss", "metrics", "auc"], {"x": 1}),
        ("variants.plain.attacks.mia_loss.metrics.auc", "wrong type"),
    ),
    (
        "variants-is-a-list",
        _put(["variants"], [1, 2]),
        ("variants", "valid dictionary"),
    ),
    (
        "per-round-not-a-list",
        _put(["variants", "plain", "utility", "per_round"], 3),
        ("variants.plain.utility.per_round",),
    ),
    (
        "missing-metrics",
        _del(["variants", "plain", "attacks", "mia_loss", "metrics"]),
        ("variants.plain.attacks.mia_loss.metrics", "missing"),
    ),
    (
        "round-is-text",
        _put(["variants", "plain", "utility", "per_round", 0, "round"], "one"),
        ("variants.plain.utility.per_round.0.round",),
    ),
    (
        "expectation-passed-missing",
        _put(
            ["expectations"],
            [{"metric": "utility.final_accuracy", "variant": "plain", "min": 0, "max": 1}],
        ),
        ("expectations.0.actual", "missing"),
    ),
    ("scenario-name-number", _put(["scenario", "name"], 5), ("scenario.name",)),
    ("bytes-total-text", _put(["variants", "plain", "cost", "bytes_total"], "9"), ("bytes_total",)),
]


@pytest.mark.parametrize("command", ["check", "report"])
@pytest.mark.parametrize(
    ("edit", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in RESULTS_CASES]
)
def test_hand_edited_results_name_the_wrong_field(
    command: str,
    edit: Callable[[dict], None],
    fragments: tuple[str, ...],
    results_file: Path,
    tmp_path: Path,
) -> None:
    path = edited(results_file, tmp_path, edit)
    extra = ["--out", str(tmp_path / "r.html")] if command == "report" else []
    assert_one_line(runner.invoke(app, [command, path, *extra]), 2, ("results:", *fragments))
    assert not (tmp_path / "r.html").exists()


def test_extra_keys_in_results_are_fine(results_file: Path, tmp_path: Path) -> None:
    def add(d: dict) -> None:
        d["variants"]["plain"]["utility"]["per_group_accuracy"] = {"a": 0.5}
        d["variants"]["plain"]["my_plugin"] = {"anything": [1, "x"]}
        d["extra_top_level"] = True

    path = edited(results_file, tmp_path, add)
    assert runner.invoke(app, ["check", path]).exit_code in (0, 1)  # 1: nothing to check
    assert runner.invoke(app, ["report", path, "--out", str(tmp_path / "r.html")]).exit_code == 0


OTHER_CASES: list[tuple[str, Callable[[Path, Path], list[str]], tuple[str, ...]]] = [
    (
        "report-out-is-a-directory",
        lambda r, t: ["report", str(r), "--out", str(t)],
        ("--out", "is a directory"),
    ),
    (
        "report-out-unwritable",
        lambda r, t: ["report", str(r), "--out", file_with(t, "f", b"x") + "/sub/r.html"],
        ("--out", "cannot write"),
    ),
    (
        "check-tolerance-negative",
        lambda r, t: ["check", str(r), "--tolerance", "-1"],
        ("--tolerance",),
    ),
    ("check-tolerance-nan", lambda r, t: ["check", str(r), "--tolerance", "nan"], ("--tolerance",)),
    ("check-missing-argument", lambda r, t: ["check"], ("Missing argument",)),
    (
        "results-not-json",
        lambda r, t: ["check", file_with(t, "x.json", b"{not json")],
        ("not valid JSON",),
    ),
    (
        "results-nested-3000",
        lambda r, t: ["check", file_with(t, "x.json", b"[" * DEEP + b"]" * DEEP)],
        ("results:",),
    ),
    (
        "results-not-utf8",
        lambda r, t: ["check", file_with(t, "x.json", b'{"a": "\xff"}')],
        ("not valid JSON",),
    ),
    (
        "results-is-a-directory",
        lambda r, t: ["report", str(t)],
        ("results:", "is a directory"),
    ),
    ("results-missing", lambda r, t: ["report", str(t / "nope.json")], ("does not exist",)),
    ("show-name-dot-dot", lambda r, t: ["show", "--set", 'name=".."'], ("name",)),
]


@pytest.mark.parametrize(
    ("make", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in OTHER_CASES]
)
def test_other_commands_refuse_bad_input_in_one_line(
    make: Callable[[Path, Path], list[str]],
    fragments: tuple[str, ...],
    results_file: Path,
    tmp_path: Path,
) -> None:
    assert_one_line(runner.invoke(app, make(results_file, tmp_path)), 2, fragments)


@pytest.mark.skipif(os.geteuid() == 0 or sys.platform == "win32", reason="root writes anywhere")
def test_report_out_in_a_read_only_folder(results_file: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = runner.invoke(app, ["report", str(results_file), "--out", str(locked / "r.html")])
    assert_one_line(result, 2, ("--out", "cannot write"))
