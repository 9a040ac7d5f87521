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
        "threat_model": {"observer": "server", "knowledge": "final model"},
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


@pytest.fixture
def results() -> dict[str, Any]:
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
                    "inv": {"name": "gradient_inversion", "metrics": {"psnr": 17.25, "ssim": 0.41}},
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


@pytest.fixture
def rendered(results: dict[str, Any]) -> str:
    return report.render_report(results)


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


def test_summary_shows_headline_metrics_epsilon_and_costs(rendered: str) -> None:
    summary = rendered.split('<table class="summary">')[1].split("</table>")[0]
    headers = re.findall(r'<th class="num[^"]*">([^<]+)</th>', summary)
    assert headers[:3] == ["AUC", "TPR@1%FPR", "TPR@0.1%FPR"]  # headline first, in this order
    assert "advantage" in headers and "PSNR" in headers and "SSIM" in headers
    assert "n_nonmembers = 500" in summary  # FPR resolution is visible
    assert "0.739" in summary and "risk-high" in summary and "risk-chance" in summary
    assert "0.00123" in summary  # TPR with 3 significant digits
    assert "3.14" in summary and "1e-5" in summary and "gdp" in summary
    assert "≈ </span>3.14" in summary
    assert "≈ (approximate: GDP may undershoot)" in rendered
    assert "1.5 MiB" in summary
    assert "—" in summary  # the sparse variant has no attack metrics


def test_expectations_table_marks_failures(rendered: str) -> None:
    section = rendered.split("<h2>Expectations</h2>")[1].split("</section>")[0]
    assert section.count(">PASS<") == 1 and section.count(">FAIL<") == 1
    assert "attacks.mia.auc" in section and "≤ 0.6" in section
    assert "1 of 2 expectations failed" in rendered


def test_svg_count_and_details(rendered: str) -> None:
    # Accuracy per round plus one ROC (only `mia` has ROC points).
    assert rendered.count("<svg") == 2
    assert "ROC, log-log: mia" in rendered
    assert "clipping at 1.0" in rendered  # notes
    assert "9: 3.09" in rendered  # per-client epsilon
    assert "&#34;num_clients&#34;: 10" in rendered  # scenario JSON, escaped in <pre>
    assert "torch" in rendered and "2.4.0" in rendered
    assert "results schema 1" in rendered and "2024-05-01T12:00:00+00:00" in rendered


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
    assert out.count("<svg") == 2  # accuracy (dp only) + ROC (baseline only)


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


# --------------------------------------------------------------------------- plots


def _polyline_points(svg: str) -> list[tuple[float, float]]:
    root = ET.fromstring(svg)
    pts = []
    for el in root.iter("polyline"):
        for pair in el.attrib["points"].split():
            x, y = pair.split(",")
            pts.append((float(x), float(y)))
    return pts


def test_line_plot_parses_as_xml_and_escapes_labels() -> None:
    label = 'a <b> & "c"'
    svg = plots.line_plot(
        {label: ([1, 2, 3], [0.1, 0.5, 0.9]), "other": ([1, 2, 3], [0.2, 0.3, 0.4])},
        title="T <1>",
        x_label="round",
        y_label="accuracy",
    )
    root = ET.fromstring(svg)
    assert root.tag == "svg"
    texts = ["".join(t.itertext()) for t in root.iter("text")]
    assert label in texts and "T <1>" in texts
    assert len(list(root.iter("polyline"))) == 2


def test_log_axes_clip_zeros_to_axis_minimum() -> None:
    svg = plots.line_plot(
        {"roc": ([0.0, 0.0, 0.001, 0.1, 1.0], [0.0, 0.05, 0.2, 0.6, 1.0])},
        title="roc",
        x_label="fpr",
        y_label="tpr",
        x_log=True,
        y_log=True,
        x_range=(1e-3, 1.0),
        y_range=(1e-3, 1.0),
        diagonal=True,
    )
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    root = ET.fromstring(svg)
    width, height = (float(v) for v in root.attrib["viewBox"].split()[2:])
    pts = _polyline_points(svg)
    assert pts and all(0 <= x <= width and 0 <= y <= height for x, y in pts)
    series = next(p for p in root.iter("polyline") if p.attrib.get("stroke") == plots.PALETTE[0])
    first = series.attrib["points"].split()[0]
    diag = next(p for p in root.iter("polyline") if p.attrib.get("stroke-dasharray") == "5 4")
    assert first == diag.attrib["points"].split()[0]  # (0, 0) sits at the (min, min) corner
    labels = ["".join(t.itertext()) for t in root.iter("text")]
    assert {"0.001", "0.01", "0.1", "1"} <= set(labels)  # decade ticks


def test_log_axis_without_positive_values_and_empty_plots() -> None:
    for series in ({"z": ([0, 0], [0, 0])}, {}):
        svg = plots.line_plot(series, title="t", x_label="x", y_label="y", x_log=True, y_log=True)
        ET.fromstring(svg)
    with pytest.raises(ValueError):
        plots.line_plot({}, title="t", x_label="x", y_label="y", x_log=True, x_range=(0, 1))


def test_scatter_plot_and_result_plots(results: dict[str, Any]) -> None:
    svg = plots.scatter_plot(
        {"dp": ([0.87], [17.2]), "none": ([0.94], [24.0])},
        title="PSNR vs accuracy",
        x_label="accuracy",
        y_label="PSNR (dB)",
        point_labels={"dp": ["σ=1.1"]},
    )
    root = ET.fromstring(svg)
    assert not list(root.iter("polyline"))
    assert "σ=1.1" in ["".join(t.itertext()) for t in root.iter("text")]
    assert plots.roc_plot(results, "inv") == ""  # no ROC artifacts
    assert plots.roc_plot(results, "missing") == ""
    ET.fromstring(plots.roc_plot(results, "mia"))
    ET.fromstring(plots.accuracy_plot(results))
    assert plots.accuracy_plot({"variants": {"v": {"utility": {}}}}) == ""
    assert plots.standalone_svg(svg).startswith("<?xml")
