"""The CI gate: baselines with directions, never passing vacuously, JUnit valid against the
schema, markdown summaries, the ratchet, and the demonstration a team would run."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from typer.testing import CliRunner

from privlab.cli import app
from privlab.gate import (
    BaselineEntry,
    compare_entry,
    evaluate_gate,
    make_entries,
    metric_paths,
    ratchet,
    read_baseline,
)
from privlab.gate_output import junit_xml, markdown_summary
from privlab.results import lookup

runner = CliRunner()
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit.xsd"))
EXAMPLE = Path(__file__).parents[1] / "examples" / "github-actions"


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def results_with(auc: float, acc: float = 0.9, expectations: list | None = None) -> dict:
    return {
        "schema_version": 1,
        "scenario": {"name": "s"},
        "variants": {
            "v": {
                "utility": {"final_accuracy": acc, "per_round": [{"accuracy": acc}]},
                "privacy": {"epsilon": 2.0, "delta": 1e-5},
                "cost": {"bytes_total": 100, "seconds": 1.5},
                "attacks": {
                    "mia": {"metrics": {"auc": auc, "tpr_at_0.1pct_fpr": 0.01, "plugin_score": 3.0}}
                },
            }
        },
        "expectations": expectations or [],
    }


def test_lookup_reads_metric_keys_that_contain_dots() -> None:
    v = results_with(0.7)["variants"]["v"]
    assert lookup(v, "attacks.mia.tpr_at_0.1pct_fpr") == 0.01
    assert lookup(v, "attacks.mia.metrics.auc") == 0.7
    assert lookup(v, "utility.acc") is None


def test_metric_paths_cover_plugin_metrics_and_skip_timing() -> None:
    paths = metric_paths(results_with(0.7)["variants"]["v"])
    assert "attacks.mia.plugin_score" in paths and "attacks.mia.tpr_at_0.1pct_fpr" in paths
    assert "cost.bytes_total" in paths and "cost.seconds" not in paths
    assert not any("per_round" in p for p in paths)


@pytest.mark.parametrize(
    ("direction", "relative", "actual", "passed"),
    [
        ("higher_is_worse", False, 0.719, True),  # within +0.02
        ("higher_is_worse", False, 0.73, False),
        ("higher_is_worse", False, 0.40, True),  # less leakage never breaches
        ("lower_is_worse", False, 0.681, True),
        ("lower_is_worse", False, 0.67, False),
        ("two_sided", False, 0.67, False),
        ("two_sided", False, 0.73, False),
        ("higher_is_worse", True, 0.7139, True),  # 2% of 0.7 = 0.014
        ("higher_is_worse", True, 0.7141, False),
    ],
)
def test_compare_entry_follows_direction_and_tolerance(
    direction: str, relative: bool, actual: float, passed: bool
) -> None:
    entry = BaselineEntry("v", "attacks.mia.auc", 0.7, direction, 0.02, relative)  # type: ignore[arg-type]
    assert compare_entry(entry, actual)[0] is passed


def test_a_gate_that_compares_nothing_fails() -> None:
    outcome = evaluate_gate(results_with(0.7))
    assert not outcome.passed and "nothing was checked" in outcome.problems[0]
    empty = evaluate_gate(results_with(0.7), ("s", []))
    assert not empty.passed and any("no entries" in p for p in empty.problems)


def test_missing_baseline_variant_metric_or_scenario_fails() -> None:
    entries = [
        BaselineEntry("gone", "utility.final_accuracy", 0.9, "lower_is_worse", 0.02),
        BaselineEntry("v", "attacks.mia.vanished", 0.5, "higher_is_worse", 0.02),
    ]
    outcome = evaluate_gate(results_with(0.7), ("other", entries))
    text = " | ".join(outcome.problems)
    assert "baseline variant 'gone' is not in the results" in text
    assert "'attacks.mia.vanished' is missing" in text
    assert "the baseline is for scenario 'other'" in text
    assert not outcome.passed


def test_default_entries_take_known_directions_and_plugin_metrics_on_request() -> None:
    data = results_with(0.7)
    by_metric = {e.metric: e for e in make_entries(data, None, 0.02)}
    assert by_metric["attacks.mia.auc"].direction == "higher_is_worse"
    assert by_metric["utility.final_accuracy"].direction == "lower_is_worse"
    assert by_metric["privacy.epsilon"].relative
    assert "attacks.mia.plugin_score" not in by_metric  # no known direction: only on request
    plugin = make_entries(data, ["attacks.*.plugin_score"], 0.1, "higher_is_worse")
    assert [(e.metric, e.direction) for e in plugin] == [
        ("attacks.mia.plugin_score", "higher_is_worse")
    ]
    outcome = evaluate_gate(results_with(0.7) | {}, ("s", plugin))
    assert outcome.passed
    worse = results_with(0.7)
    worse["variants"]["v"]["attacks"]["mia"]["metrics"]["plugin_score"] = 3.5
    assert not evaluate_gate(worse, ("s", plugin)).passed


def test_ratchet_keeps_worse_values_unless_accepted() -> None:
    old = [BaselineEntry("v", "attacks.mia.auc", 0.7, "higher_is_worse", 0.02)]
    better = [BaselineEntry("v", "attacks.mia.auc", 0.6, "higher_is_worse", 0.02)]
    worse = [BaselineEntry("v", "attacks.mia.auc", 0.71, "higher_is_worse", 0.02)]
    merged, changes = ratchet(old, better, accept_worse=False)
    assert merged[0].value == 0.6 and "updated" in changes[0]
    merged, changes = ratchet(old, worse, accept_worse=False)
    assert merged[0].value == 0.7 and "kept" in changes[0] and "worse" in changes[0]
    merged, _ = ratchet(old, worse, accept_worse=True)
    assert merged[0].value == 0.71


def test_junit_is_valid_against_the_schema_and_the_schema_bites() -> None:
    expectations = [
        {
            "metric": "attacks.mia.auc",
            "variant": "v",
            "min": None,
            "max": 0.6,
            "actual": 0.7,
            "passed": False,
        },
        {
            "metric": "utility.final_accuracy",
            "variant": "v",
            "min": 0.5,
            "max": None,
            "actual": 0.9,
            "passed": True,
        },
    ]
    data = results_with(0.7, expectations=expectations)
    entries = [BaselineEntry("gone", "utility.final_accuracy", 0.9, "lower_is_worse", 0.02)]
    xml = junit_xml(data, evaluate_gate(data, ("s", entries)))
    SCHEMA.validate(xml)  # raises when invalid
    root = ET.fromstring(xml)
    assert root.get("tests") == "3" and root.get("failures") == "2"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "s.v"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["attacks.mia.auc"] == "0.7" and props["attacks.mia.tpr_at_0.1pct_fpr"] == "0.01"
    failures = [f.get("message") for f in root.iter("failure")]
    assert any("attacks.mia.auc = 0.7 breached" in m for m in failures)
    assert any("baseline variant 'gone'" in m for m in failures)
    # The validator is not vacuous: JUnit consumers reject properties inside a testcase.
    bad = xml.replace("<testcase ", "<testcase ><properties /></testcase><testcase ", 1)
    assert not SCHEMA.is_valid(bad)


def test_markdown_summary_puts_failures_first() -> None:
    expectations = [
        {
            "metric": "utility.final_accuracy",
            "variant": "v",
            "min": 0.5,
            "max": None,
            "actual": 0.9,
            "passed": True,
        },
        {
            "metric": "attacks.mia.auc",
            "variant": "v",
            "min": None,
            "max": 0.6,
            "actual": 0.7,
            "passed": False,
        },
    ]
    data = results_with(0.7, expectations=expectations)
    text = markdown_summary(data, evaluate_gate(data))
    assert text.startswith("## privlab check: s: FAILED")
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert rows[1].startswith("| **FAIL** | v | expectation | `attacks.mia.auc` | 0.7 |")


def test_read_baseline_refuses_bad_files(tmp_path: Path) -> None:
    from privlab.errors import ScenarioError

    path = tmp_path / "b.json"
    path.write_text(json.dumps({"privlab_baseline": 1, "entries": [{"variant": "v"}]}))
    with pytest.raises(ScenarioError, match=r"entries\.0\.metric: expected a string"):
        read_baseline(path)
    path.write_text(
        json.dumps(
            {
                "privlab_baseline": 1,
                "entries": [{"variant": "v", "metric": "m", "value": 1, "direction": "up"}],
            }
        )
    )
    with pytest.raises(ScenarioError, match="direction: expected one of"):
        read_baseline(path)
    with pytest.raises(ScenarioError, match="does not exist"):
        read_baseline(tmp_path / "none.json")


def write_results(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def test_check_cli_nothing_to_compare_json_junit_and_summary(tmp_path: Path) -> None:
    path = write_results(tmp_path, results_with(0.7))
    result = invoke("check", str(path))
    assert result.exit_code == 1 and "nothing was checked" in result.stderr
    expectations = [
        {
            "metric": "attacks.mia.auc",
            "variant": "v",
            "min": None,
            "max": 0.8,
            "actual": 0.7,
            "passed": True,
        }
    ]
    path = write_results(tmp_path, results_with(0.7, expectations=expectations))
    result = invoke(
        "check",
        str(path),
        "--json",
        "--junit",
        str(tmp_path / "j.xml"),
        "--summary",
        str(tmp_path / "s.md"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
    SCHEMA.validate(str(tmp_path / "j.xml"))
    assert "passed" in (tmp_path / "s.md").read_text().splitlines()[0]
    bad = invoke("check", str(path), "--junit", str(tmp_path))
    assert bad.exit_code == 2 and "--junit" in bad.stderr and "directory" in bad.stderr


def test_baseline_update_says_what_changed_and_ratchets(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    first = write_results(tmp_path, results_with(0.7))
    result = invoke("baseline", "update", str(first), "--baseline", str(base))
    assert result.exit_code == 0, result.output
    assert "added v: attacks.mia.auc = 0.7" in result.stdout
    assert invoke("check", str(first), "--baseline", str(base)).exit_code == 0
    worse = write_results(tmp_path, results_with(0.75))
    failed = invoke("check", str(worse), "--baseline", str(base))
    assert failed.exit_code == 1 and "attacks.mia.auc moved the wrong way" in failed.stderr
    kept = invoke("baseline", "update", str(worse), "--baseline", str(base))
    assert "kept v: attacks.mia.auc = 0.7 (new 0.75 is worse" in kept.stdout
    accepted = invoke("baseline", "update", str(worse), "--baseline", str(base), "--accept-worse")
    assert "updated v: attacks.mia.auc 0.7 -> 0.75" in accepted.stdout
    assert invoke("check", str(worse), "--baseline", str(base)).exit_code == 0


def test_version_and_short_help() -> None:
    from privlab import __version__

    assert invoke("--version").stdout.strip() == f"privlab {__version__}"
    assert "Usage" in invoke("-h").stdout and "Usage" in invoke("run", "-h").stdout


def test_show_fills_component_defaults_and_refuses_unknown_params() -> None:
    result = invoke("show", "default")
    assert result.exit_code == 0, result.output
    comps = json.loads(result.stdout)["resolved_components"]
    dp = next(v for name, v in comps.items() if v["defenses"])["defenses"][0]
    assert dp["name"] == "dp_sgd" and "max_grad_norm" in dp["params"]
    bad = invoke("show", "default", "--set", "attacks.0.params={bogus=1}")
    assert bad.exit_code == 2 and "attacks.0.params.bogus: unknown field" in bad.stderr


def test_sweep_keeps_expectations_over_a_product_grid(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    items = [o for o in tiny_overrides if not o.startswith(("variants", "expectations"))]
    items += [
        'variants=[{name="plain"}]',
        'expectations=[{variant="plain", metric="utility.final_accuracy", min=1.01}]',
        "topology.rounds=1",
    ]
    args = [a for item in items for a in ("--set", item)]
    result = invoke(
        "sweep",
        *args,
        "-p",
        "topology.lr=0.05,0.2",
        "-p",
        "topology.batch_size=16,64",
        "--out",
        str(tmp_path / "s"),
        "-q",
    )
    assert result.exit_code == 1  # every grid point keeps the (unreachable) expectation
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(data["variants"]) == 4
    assert {e["variant"] for e in data["expectations"]} == set(data["variants"])
    assert all(not e["passed"] for e in data["expectations"])


def test_demonstration_dp_passes_without_dp_fails_mismatched_baseline_fails(
    tmp_path: Path,
) -> None:
    """The issue's demonstration: the same gate passes with DP and fails without it."""
    scenario = str(EXAMPLE / "privacy" / "scenario.toml")
    ok = invoke("check", scenario, "--out", str(tmp_path / "dp"))
    assert ok.exit_code == 0, ok.output
    base = tmp_path / "baseline.json"
    assert (
        invoke(
            "baseline", "update", str(tmp_path / "dp" / "results.json"), "--baseline", str(base)
        ).exit_code
        == 0
    )
    assert invoke("check", str(tmp_path / "dp"), "--baseline", str(base)).exit_code == 0

    no_dp = invoke(
        "check",
        scenario,
        "--out",
        str(tmp_path / "nodp"),
        "--set",
        'variants=[{name="shipped"}]',
        "--set",
        'expectations=[{variant="shipped", metric="attacks.mia.auc", max=0.58}]',
    )
    assert no_dp.exit_code == 1
    assert "shipped: attacks.mia.auc" in no_dp.stderr and "breached (max 0.58)" in no_dp.stderr
    regressed = invoke("check", str(tmp_path / "nodp"), "--baseline", str(base), "--json")
    assert regressed.exit_code == 1
    report = json.loads(regressed.stdout)
    failed = {c["metric"] for c in report["checks"] if not c["passed"]}
    assert "attacks.mia.auc" in failed  # the leak rose against the baseline
    assert any("privacy.epsilon' is missing" in p for p in report["problems"])  # DP is gone

    renamed = json.loads(base.read_text())
    for entry in renamed["entries"]:
        entry["variant"] = "renamed"
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    mismatch = invoke("check", str(tmp_path / "dp"), "--baseline", str(tmp_path / "renamed.json"))
    assert mismatch.exit_code == 1
    assert "baseline variant 'renamed' is not in the results" in mismatch.stderr
