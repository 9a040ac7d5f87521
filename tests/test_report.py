"""The HTML report and its SVG plots: self-contained, escaped, tolerant of sparse results."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from privlab import plots, report

EVIL = "<script>alert('x')</script>"


def _per_round(accs: list[float]) -> list[dict[str, Any]]:
    return [{"round": i + 1, "accuracy": a, "loss": 1.0 - a} for i, a in enumerate(accs)]


def _mia(auc: float, tpr1: float, tpr01: float, fpr: list[float], tpr: list[float]) -> dict:
    return {
        "name": "loss_threshold",
        "family": "membership",
        "threat_model": {
            "adversary": "outsider",
            "party": None,
            "active": False,
            "knowledge": ["mean_train_loss"],
        },
        "metrics": {
            "auc": auc,
            "advantage": 2 * auc - 1,
            "n_members": 500,
            "n_nonmembers": 500,
            "tpr_at_0.1pct_fpr": tpr01,
            "tpr_at_1pct_fpr": tpr1,
        },
        "artifacts": {"roc": {"fpr": fpr, "tpr": tpr}},
    }


def make_results() -> dict[str, Any]:
    """Three variants: undefended (leaky), DP-SGD (approximate GDP epsilon), and a sparse one."""
    return {
        "schema_version": 1,
        "privlab_version": "0.1.0",
        "scenario": {
            "name": "fedavg-mia",
            "description": "Membership inference against FedAvg, with and without DP-SGD.",
            "seed": 7,
            "data": {"name": "digits", "test_fraction": 0.2, "params": {}},
            "partition": {"scheme": "iid", "num_clients": 10},
            "model": {"name": "mlp", "params": {}},
            "topology": {"name": "federated", "rounds": 5},
            "attacks": [
                {"name": "loss_threshold", "id": "mia", "params": {}},
                {"name": "gradient_inversion", "id": "inv", "params": {}},
            ],
            "variants": [{"name": "baseline"}, {"name": "dp"}, {"name": EVIL}],
        },
        "seed": 7,
        "versions": {"python": "3.11.9", "torch": "2.4.0", "opacus": "1.5.2"},
        "variants": {
            "baseline": {
                "defenses": [],
                "utility": {
                    "final_accuracy": 0.9412,
                    "final_loss": 0.21,
                    "per_round": _per_round([0.61, 0.78, 0.86, 0.91, 0.9412]),
                },
                "attacks": {
                    "mia": _mia(
                        0.7391,
                        0.0412,
                        0.0,
                        [0.0, 0.0, 0.002, 0.01, 0.1, 0.4, 1.0],
                        [0.0, 0.02, 0.03, 0.0412, 0.3, 0.8, 1.0],
                    ),
                    "inv": {
                        "name": "gradient_inversion",
                        "family": "gradient_inversion",
                        "metrics": {"psnr": 17.25, "ssim": 0.41},
                    },
                },
                "privacy": None,
                "cost": {
                    "bytes_per_round": [1_572_864] * 5,
                    "bytes_total": 7_864_320,
                    "seconds": 3.2,
                    "seconds_per_round": [0.6] * 5,
                },
                "notes": ["no defense"],
            },
            "dp": {
                "defenses": [
                    {
                        "name": "dp_sgd",
                        "id": "dp_sgd",
                        "params": {"noise_multiplier": 1.1, "max_grad_norm": 1.0},
                    }
                ],
                "utility": {
                    "final_accuracy": 0.8765,
                    "final_loss": 0.4,
                    "per_round": _per_round([0.5, 0.7, 0.8, 0.85, 0.8765]),
                },
                "attacks": {
                    "mia": _mia(
                        0.5123,
                        0.0104,
                        0.00123,
                        [0.0, 0.01, 0.1, 0.5, 1.0],
                        [0.0, 0.0104, 0.11, 0.5, 1.0],
                    )
                },
                "privacy": {
                    "epsilon": 3.14159,
                    "delta": 1e-5,
                    "accountant": "gdp",
                    "approximate": True,
                    "per_client": {str(i): 3.0 + i / 100 for i in range(10)},
                },
                "cost": {
                    "bytes_per_round": [1_000_000, 1_200_000, 1_100_000, 1_000_000, 1_050_000],
                    "bytes_total": 5_350_000,
                    "seconds": 75.0,
                },
                "notes": ["clipping at 1.0", "GDP accountant"],
            },
            EVIL: {
                "defenses": [{"name": "secure_agg", "params": {}}],
                "utility": {"final_accuracy": 0.9033, "final_loss": 0.3},
                "privacy": None,
                "cost": {},
                "notes": [],
            },
        },
        "expectations": [
            {
                "metric": "utility.final_accuracy",
                "variant": "dp",
                "min": 0.8,
                "max": None,
                "actual": 0.8765,
                "passed": True,
            },
            {
                "metric": "attacks.mia.auc",
                "variant": "baseline",
                "min": None,
                "max": 0.6,
                "actual": 0.7391,
                "passed": False,
            },
        ],
        "timing": {"started": "2024-05-01T12:00:00+00:00", "seconds": 78.2},
    }


@pytest.fixture(scope="module")
def results_module() -> dict[str, Any]:
    return make_results()


@pytest.fixture
def results(results_module: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(results_module)


@pytest.fixture(scope="module")
def rendered(results_module: dict[str, Any]) -> str:
    """Rendered once per module: matplotlib figures take a moment each."""
    return report.render_report(results_module)


def test_report_is_self_contained(rendered: str) -> None:
    lowered = rendered.lower()
    for needle in ("http://", "https://", "<script src", "<link", "@import", "url(http"):
        assert needle not in lowered
    assert "<script" not in lowered  # no scripts at all: the evil name is escaped too
    assert rendered.lstrip().startswith("<!DOCTYPE html>")


def test_variant_names_are_escaped(rendered: str) -> None:
    assert EVIL not in rendered
    assert str(escape(EVIL)) in rendered  # as jinja2 autoescape writes it


def test_every_variant_and_its_final_accuracy_appear(
    rendered: str, results: dict[str, Any]
) -> None:
    for name, variant in results["variants"].items():
        assert str(escape(name)) in rendered
        assert f"{variant['utility']['final_accuracy']:.3f}" in rendered


def test_summary_shows_key_metric_grade_epsilon_and_costs(rendered: str) -> None:
    summary = rendered.split('<table class="summary stack">')[1].split("</table>")[0]
    assert "TPR@1%FPR" in summary  # 500 non-members cannot resolve 0.1% FPR: graded at 1%
    assert "PSNR" in summary and "17.2 dB (base —)" in summary
    assert "n_non = 500" in summary  # FPR resolution is visible
    assert "0.0412 (4.1x)" in summary and "grade-medium" in summary
    assert "3.14" in summary and "1e-5" in summary and "gdp" in summary
    assert "≈ </span>3.14" in summary
    assert "≈ (approximate: GDP may undershoot)" in rendered
    assert "1.5 MiB" in summary
    assert "—" in summary  # the sparse variant has no attack metrics
    assert 'data-label="final accuracy"' in summary  # cells labelled for the stacked layout


def test_verdict_comes_first_and_says_cost_and_lack_of_benefit(rendered: str) -> None:
    verdict = rendered.split('<section id="verdict">')[1].split("</section>")[0]
    assert rendered.index('id="verdict"') < rendered.index("Privacy and utility across variants")
    assert (
        "an outsider tells training members from non-members at 4.1x the false-positive "
        "rate at 1% FPR" in verdict
    )
    assert "Highest risk in this run: medium" in verdict
    assert "An outsider can only query the final model and knows mean train loss" in verdict
    # dp against the undefended baseline: accuracy, epsilon, seconds and bytes
    assert "Cost against 'baseline'" in verdict
    assert "accuracy -0.065 (0.876 vs 0.941)" in verdict
    assert "ε ≈ 3.14" in verdict and "time 23.44x" in verdict and "bytes 0.68x" in verdict
    assert "mia: 4.12x (medium) → 1.04x (none)" in verdict
    assert "rule: TPR/FPR at 1% FPR = 4.12x" in verdict


def test_no_leak_in_reference_means_no_benefit_shown(results: dict[str, Any]) -> None:
    data = copy.deepcopy(results)
    m = data["variants"]["baseline"]["attacks"]["mia"]["metrics"]
    m["tpr_at_1pct_fpr"], m["leak_detected"] = 0.03, False
    out = report.render_report(data)
    assert "graded none because the run found no leak" in out
    assert (
        "mia found no leak in &#39;baseline&#39; (3x), so this run cannot show the "
        "defense&#39;s benefit against it" in out
    )


def test_below_resolution_marked(results: dict[str, Any]) -> None:
    data = copy.deepcopy(results)
    for v in ("baseline", "dp"):
        data["variants"][v]["attacks"]["mia"]["metrics"]["n_nonmembers"] = 50
    out = report.render_report(data)
    assert "below resolution: 100 non-members are needed to read 1% FPR" in out
    assert "0.0412† (4.1x)" in out and "<sup>†</sup> Below resolution" in out


def test_diverged_variant_and_invocation(results: dict[str, Any]) -> None:
    data = copy.deepcopy(results)
    data["variants"]["dp"].update(status="diverged", diverged_at_round=3)
    data["invocation"] = "privlab run fedavg-mia --set topology.rounds=5"
    out = report.render_report(data)
    assert "diverged at round 3" in out and "Training diverged" in out
    assert '<tr class="diverged">' in out
    assert "privlab run fedavg-mia --set topology.rounds=5" in out
    assert "The exact command this run was started with" in out
    fallback = report.render_report(results)
    assert "privlab run fedavg-mia --seed 7" in fallback and "did not record" in fallback


def test_grading_override_from_the_scenario(results: dict[str, Any]) -> None:
    data = copy.deepcopy(results)
    data["scenario"]["report"] = {"grading": {"membership": {"medium": 5.0}}}
    out = report.render_report(data)
    assert (
        "membership</strong> by TPR/FPR at low FPR: high ≥ 10x, medium ≥ 5x, low ≥ 1.5x "
        "(set by this scenario)" in out
    )
    assert "at 4.1x the false-positive rate at 1% FPR (TPR 0.0412), AUC 0.739: low" in out


def test_per_client_and_group_accuracy_figures(results: dict[str, Any]) -> None:
    data = copy.deepcopy(results)
    u = data["variants"]["baseline"]["utility"]
    u["per_client_accuracy"] = {"0": 0.95, "1": 0.91, "10": 0.72, "2": 0.88}
    u["per_group_accuracy"] = {"minority": 0.61, "majority": 0.97}
    out = report.render_report(data)
    assert 'id="fig-per_client_accuracy"' in out and 'id="fig-per_group_accuracy"' in out
    assert "the largest gap is 0.230 in baseline (client 10: 0.720, client 0: 0.950)" in out
    assert (
        "the largest gap is 0.360 in baseline (group minority: 0.610, group majority: 0.970)" in out
    )


def test_expectations_table_marks_failures(rendered: str) -> None:
    section = rendered.split("<h2>Expectations</h2>")[1].split("</section>")[0]
    assert section.count(">PASS<") == 1 and section.count(">FAIL<") == 1
    assert "attacks.mia.auc" in section and "≤ 0.6" in section
    assert "1 of 2 expectations failed" in rendered


def test_figures_and_details(rendered: str) -> None:
    # Accuracy per round, one ROC (only `mia` has ROC points), the trade-off plot (2 points).
    assert rendered.count("<svg") == 3
    assert "ROC (log-log): mia (loss_threshold)" in rendered
    assert (
        "Test accuracy after each of 5 rounds, 2 variant(s); final accuracy from 0.876 (dp) "
        "to 0.941 (baseline)." in rendered
    )
    assert "Shaded: FPR below 1/500 = 0.002" in rendered
    assert "clipping at 1.0" in rendered  # notes
    assert "9: 3.09" in rendered  # per-client epsilon
    assert "&#34;num_clients&#34;: 10" in rendered  # scenario JSON, escaped in <pre>
    assert "torch" in rendered and "2.4.0" in rendered
    assert "results schema 1" in rendered and "2024-05-01T12:00:00+00:00" in rendered


def test_inline_svgs_have_text_no_external_refs_and_unique_ids(rendered: str) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", rendered, flags=re.S)
    ids: list[str] = []
    for svg in svgs:
        root = ET.fromstring(svg.replace("xlink:href", "href"))
        assert [t for t in root.iter("text")]  # text stays text (svg.fonttype = none)
        for el in root.iter():
            ref = el.attrib.get("href")
            assert ref is None or ref.startswith("#")
            if "id" in el.attrib:
                ids.append(el.attrib["id"])
    assert len(ids) == len(set(ids))
    assert "http" not in "".join(svgs)


def test_a_variant_keeps_its_colour_in_every_figure(results: dict[str, Any]) -> None:
    ctx = report.report_context(results)
    assert ctx["colours"]["baseline"] == plots.PALETTE[0]
    assert ctx["colours"]["dp"] == plots.PALETTE[1]
    by_key = {f.key: f.svg for f in ctx["figures"]}
    for key in ("accuracy", "roc-mia", "tradeoff"):
        svg = by_key[key].lower()
        assert plots.PALETTE[0].lower() in svg and plots.PALETTE[1].lower() in svg, key


def test_sparse_results_render() -> None:
    out = report.render_report({"schema_version": 1})
    assert "<svg" not in out and "No variants" in out
    minimal = {
        "schema_version": 1,
        "variants": {"only": {"utility": {}, "attacks": {"a": {"metrics": {}}}, "privacy": None}},
        "expectations": [{"metric": "utility.final_accuracy", "min": 0.5, "actual": None}],
    }
    out = report.render_report(minimal)
    assert "only" in out and "every variant" in out and ">FAIL<" in out


def test_write_report_is_atomic(tmp_path: Path, results: dict[str, Any]) -> None:
    path = tmp_path / "out" / "report.html"
    report.write_report(results, path)
    first = path.read_text(encoding="utf-8")
    assert first == report.render_report(results)
    assert first.rstrip().endswith("</html>")

    results["scenario"]["description"] = "second run"
    report.write_report(results, path)
    assert "second run" in path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp files left


def test_failed_render_leaves_previous_report(
    tmp_path: Path, results: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.html"
    report.write_report(results, path)
    before = path.read_text(encoding="utf-8")

    def boom(_: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "report_context", boom)
    with pytest.raises(RuntimeError):
        report.write_report(results, path)
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_malformed_entries_are_tolerated(results: dict[str, Any]) -> None:
    broken = copy.deepcopy(results)
    broken["scenario"]["odd"] = object()  # shown via str() in the scenario JSON
    broken["variants"]["baseline"]["utility"]["per_round"] = [{"round": 1, "accuracy": "x"}]
    broken["variants"]["dp"]["attacks"]["mia"]["artifacts"] = {"roc": {"fpr": None}}
    broken["variants"]["dp"]["privacy"]["epsilon"] = None
    out = report.render_report(broken)
    # accuracy (dp only), ROC (baseline only), trade-off (the metrics survive)
    assert out.count("<svg") == 3


def test_formatting_filters() -> None:
    assert report.fmt_fixed(None) == "—" and report.fmt_fixed(float("nan")) == "—"
    assert report.fmt_fixed(True) == "—"
    assert report.fmt_sig(0.0412) == "0.0412" and report.fmt_sig(1.0) == "1.00"
    assert report.fmt_sig(0) == "0"
    assert report.fmt_epsilon(float("inf")) == "∞" and report.fmt_epsilon(2.345) == "2.35"
    assert report.fmt_delta(1e-5) == "1e-5" and report.fmt_delta(0.01) == "0.01"
    assert report.fmt_bytes(512) == "512 B" and report.fmt_bytes(1536) == "1.5 KiB"
    assert report.fmt_seconds(125) == "2 min 05 s"
    assert report.fmt_metric(500, "n_nonmembers") == "500"
    assert report.fmt_metric(0.73912, "auc") == "0.739"
    assert report.auc_class(0.52) == "risk-chance" and report.auc_class(0.2) == "risk-high"
    assert report.metric_label("tpr_at_0.01pct_fpr") == "TPR@0.01%FPR"
