"""matplotlib figures (privlab.plots, privlab.figures), risk grading, `privlab plot`, and the
terminal summary in an 80-column pipe."""

from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from markupsafe import escape as markup_escape
from test_report import EVIL, make_results
from typer.testing import CliRunner

from privlab import figures, grading, plots
from privlab.cli import app
from privlab.errors import ScenarioError


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg.replace("xlink:href", "href"))


@pytest.fixture
def results() -> dict[str, Any]:
    return make_results()


# --------------------------------------------------------------------------- plots


def test_inline_svg_escapes_labels_keeps_text_and_has_no_namespace() -> None:
    label = 'a <b> & "c"'
    svg = plots.line_plot(
        {label: ([1, 2, 3], [0.1, 0.5, 0.9]), "other": ([1, 2, 3], [0.2, 0.3, 0.4])},
        title="T <1>",
        x_label="round",
        y_label="accuracy",
    )
    root = _parse(svg)
    assert root.tag == "svg" and root.attrib["class"] == "plot"
    texts = ["".join(t.itertext()) for t in root.iter("text")]
    assert label in texts and "T <1>" in texts  # text stays text, escaped in the markup
    assert "http" not in svg and "<?xml" not in svg and "<metadata" not in svg
    assert plots.standalone_svg(svg).startswith("<?xml")
    ET.fromstring(plots.standalone_svg(svg))


def test_two_figures_never_share_an_id() -> None:
    a = plots.line_plot({"x": ([1, 2], [1, 2])}, title="a", x_label="", y_label="")
    b = plots.line_plot({"x": ([1, 2], [2, 1])}, title="b", x_label="", y_label="")
    ids = [el.attrib["id"] for svg in (a, b) for el in _parse(svg).iter() if "id" in el.attrib]
    assert ids and len(ids) == len(set(ids))
    for svg in (a, b):  # every internal reference points at an id of the same figure
        own = {el.attrib["id"] for el in _parse(svg).iter() if "id" in el.attrib}
        for el in _parse(svg).iter():
            if (ref := el.attrib.get("href")) is not None:
                assert ref[1:] in own


def test_log_axes_draw_zeros_at_the_axis_minimum() -> None:
    fig = plots.draw(
        None,
        {"roc": ([0.0, 0.0, 0.001, 0.1, 1.0], [0.0, 0.05, 0.2, 0.6, 1.0])},
        x_log=True,
        y_log=True,
        x_range=(1e-3, 1.0),
        y_range=(1e-3, 1.0),
        diagonal=True,
    )
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1e-3, 1e-3, 0.001, 0.1, 1.0]
    assert list(line.get_ydata()) == [1e-3, 0.05, 0.2, 0.6, 1.0]
    assert ax.get_xscale() == "log" and ax.get_xlim() == (1e-3, 1.0)
    assert [t.get_label() for t in ax.get_lines()][-1] == "chance"


def test_labels_stay_inside_the_figure() -> None:
    """Constrained layout: every text artist of a figure with a long legend lies inside it."""
    series = {f"variant number {i} with a long name": ([1, 2, 3], [i, i + 1, i]) for i in range(12)}
    fig = plots.draw(None, series, title="t", x_label="round", y_label="accuracy")
    fig.canvas.draw()
    box = fig.bbox
    renderer = fig.canvas.get_renderer()
    legends = fig.legends
    assert legends
    for artist in [*legends, *fig.axes[0].texts, fig.axes[0].xaxis.label, fig.axes[0].title]:
        b = artist.get_window_extent(renderer)
        assert b.x0 >= box.x0 - 1 and b.x1 <= box.x1 + 1 and b.y0 >= box.y0 - 1, artist


def test_variant_colours_are_stable_and_sweeps_share_a_base_colour() -> None:
    res = {"variants": {"fedavg|f=0.1": {}, "median|f=0.1": {}, "fedavg|f=0.2": {}}}
    colours = plots.variant_colours(res)
    assert colours["fedavg|f=0.1"] == colours["fedavg|f=0.2"] == colours["fedavg"]
    assert colours["median|f=0.1"] != colours["fedavg|f=0.1"]
    markers = plots.variant_markers(res)
    assert markers["fedavg|f=0.1"] == markers["median|f=0.1"] != markers["fedavg|f=0.2"]
    with plots.use_colours({"dp": "#123456"}):
        assert plots.colour_for("dp (AUC 0.5)", 0) == "#123456"
        assert plots.colour_for("dp / mia", 3) == "#123456"
    assert plots.colour_for("dp", 0) == plots.PALETTE[0]  # outside the block: palette order


# --------------------------------------------------------------------------- figures


def test_figure_functions_draw_on_a_given_axes(results: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert figures.roc(results, "mia", ax=ax1) is fig
    assert figures.accuracy(results, ax=ax2) is fig
    assert len(ax1.get_lines()) == 3  # the ROC of baseline and of dp, and chance
    assert figures.roc(results, "inv") is None and figures.epsilon(results) is None
    assert figures.per_client(results) is None  # no per-client accuracy in these results


def test_pareto_front_matches_a_brute_force_skyline() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 12))
        acc = rng.choice([0.5, 0.6, 0.7, 0.8, 0.9], size=n)
        leak = rng.choice([0.1, 0.2, 0.3, 0.4], size=n)
        points = {
            f"v{i}": (float(a), float(b)) for i, (a, b) in enumerate(zip(acc, leak, strict=True))
        }
        # Independent: sort by accuracy descending, keep strictly new leakage minima (ties on
        # both coordinates are all kept).
        order = sorted(points, key=lambda k: (-points[k][0], points[k][1]))
        front, best = set(), math.inf
        for _, group in itertools.groupby(order, key=lambda k: points[k][0]):
            group = list(group)
            low = min(points[k][1] for k in group)
            if low < best:
                front |= {k for k in group if points[k][1] == low}
                best = low
        assert set(figures.pareto_front(points)) == front


def test_tradeoff_marks_the_front(results: dict[str, Any]) -> None:
    fig = figures.tradeoff(results)
    assert fig is not None
    what, points = figures.leakage_points(results)
    assert what == "mia: TPR/FPR at low FPR (x)"
    assert points["baseline"] == pytest.approx((0.9412, 4.12))
    assert points["dp"] == pytest.approx((0.8765, 1.04))
    assert figures.pareto_front(points) == ["dp", "baseline"]


# --------------------------------------------------------------------------- grading


def test_membership_grade_uses_the_lowest_resolvable_fpr() -> None:
    m = {"tpr_at_0.1pct_fpr": 0.012, "tpr_at_1pct_fpr": 0.05, "n_nonmembers": 2000}
    g = grading.grade("membership", m)
    assert (g.fpr, g.level, g.below_resolution) == (0.001, "high", False)
    assert g.value == pytest.approx(12.0)
    g = grading.grade("membership", {**m, "n_nonmembers": 500})  # 0.1% needs 1,000
    assert (g.fpr, g.level) == (0.01, "medium") and g.value == pytest.approx(5.0)
    g = grading.grade("membership", {**m, "n_nonmembers": 50})  # 1% needs 100
    assert g.below_resolution and "100 non-members are needed to read 1% FPR" in g.rule
    assert grading.grade("membership", {**m, "leak_detected": False}).level == "none"
    ci = {**m, "tpr_at_0.1pct_fpr_ci": [0.0, 0.02]}
    assert grading.grade("membership", ci).level == "none"  # the CI includes chance (0.001)


def test_reconstruction_gain_from_mse_is_the_psnr_difference() -> None:
    """10 log10(MSE_baseline / MSE) equals PSNR(recon) - PSNR(baseline): checked with
    scikit-image's PSNR on images in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(1)
    truth = rng.random((8, 8))
    recon = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    guess = np.full_like(truth, truth.mean())
    mse = float(np.mean((truth - recon) ** 2))
    mse_base = float(np.mean((truth - guess) ** 2))
    expected = peak_signal_noise_ratio(truth, recon, data_range=1) - peak_signal_noise_ratio(
        truth, guess, data_range=1
    )
    assert grading.reconstruction_gain({"mse": mse, "mse_baseline": mse_base}) == pytest.approx(
        expected
    )
    assert grading.reconstruction_gain({"psnr": 30.0, "psnr_gain": 12.5}) == 12.5
    g = grading.grade("input_reconstruction", {"mse": mse, "mse_baseline": mse_base})
    assert g.family == "reconstruction" and g.level == "high"
    assert grading.grade("gradient_inversion", {"psnr": 40.0}).level == "not graded"


def test_backdoor_label_leakage_and_ungraded_families() -> None:
    assert grading.grade("poisoning", {"backdoor_success": 0.91}).level == "high"
    assert grading.grade("poisoning", {"backdoor_success": 0.01}).level == "none"
    assert grading.grade("poisoning", {"malicious_fraction": 0.2}).level == "not graded"
    assert grading.grade("label_leakage", {"auc": 0.75}).level == "medium"
    assert grading.grade("audit", {"epsilon_lower_bound": 1.0}).level == "not graded"
    over = {"backdoor": {"high": 0.95}}
    assert grading.grade("poisoning", {"backdoor_success": 0.91}, over).level == "medium"


def test_inference_grade_is_kappa_against_the_class_prior() -> None:
    """Multi-class label inference and property inference: (acc - prior) / (1 - prior),
    hand-computed, and none when the accuracy's CI holds the prior."""
    g = grading.grade("property_inference", {"accuracy": 0.8, "accuracy_baseline": 1 / 3})
    assert g.family == "inference" and g.value == pytest.approx(0.7) and g.level == "high"
    m = {"accuracy": 0.36, "accuracy_baseline": 0.2, "accuracy_ci": [0.3, 0.42]}
    assert grading.grade("label_leakage", m).level == "low"  # 0.2 of the headroom
    m["accuracy_ci"] = [0.15, 0.6]
    assert grading.grade("label_leakage", m).level == "none"
    assert grading.grade("property_inference", {"accuracy": 0.9}).level == "not graded"
    assert grading.grade("label_leakage", {"auc": 0.95}).family == "label_leakage"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("report.grading.membrship.high=3", "unknown family; allowed: membership"),
        ("report.grading.membership.hgh=3", "membership.hgh: unknown band"),
        ("report.grading.membership.low=30", "bands must satisfy high >= medium >= low"),
        ("report.grading.membership.high=-1", "expected a finite number >= 0"),
    ],
)
def test_scenario_grading_overrides_are_validated(override: str, message: str) -> None:
    from privlab.scenario import load_scenario

    with pytest.raises(ScenarioError, match=r"report\.grading") as err:
        load_scenario("default", [override], None)
    assert message in str(err.value)
    s = load_scenario("default", ["report.grading.membership.high=20"], None)
    assert s.report.grading == {"membership": {"high": 20.0}}


# --------------------------------------------------------------------------- CLI


def test_plot_command_writes_pdf_svg_png(tmp_path: Path, results: dict[str, Any]) -> None:
    from privlab.results import write_results

    data = copy.deepcopy(results)
    data["variants"].pop(EVIL)
    path = tmp_path / "results.json"
    write_results(path, data)
    runner = CliRunner()
    magic = {".pdf": b"%PDF", ".png": b"\x89PNG", ".svg": b"<?xml"}
    for kind, suffix in (("roc", ".pdf"), ("accuracy", ".png"), ("tradeoff", ".svg")):
        out = tmp_path / f"fig{suffix}"
        r = runner.invoke(app, ["plot", str(path), "--kind", kind, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert out.read_bytes().startswith(magic[suffix])
    svg = (tmp_path / "fig.svg").read_text()
    assert "http://www.w3.org/2000/svg" in svg and "<text" in svg
    r = runner.invoke(app, ["plot", str(path), "--kind", "pie", "-o", str(tmp_path / "x.pdf")])
    assert r.exit_code == 2 and "--kind: unknown kind 'pie'" in r.output
    r = runner.invoke(app, ["plot", str(path), "--kind", "epsilon", "-o", str(tmp_path / "e.pdf")])
    assert r.exit_code == 2 and "holds no data" in r.output
    r = runner.invoke(app, ["plot", str(path), "-o", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and "must end in .pdf, .svg or .png" in r.output


def test_cli_help_does_not_import_matplotlib() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom privlab.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported by --help'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _summary(data: dict[str, Any]) -> str:
    """The summary table as `privlab run` prints it into a non-terminal 80-column pipe."""
    from rich.console import Console

    from privlab.cli_console import summary_table

    console = Console(width=80, force_terminal=False, color_system=None, record=True)
    with console.capture() as cap:
        console.print(summary_table(data))
    return cap.get()


def test_summary_names_key_metrics_and_fits_80_columns(results: dict[str, Any]) -> None:
    data = copy.deepcopy(results)
    v = data["variants"]["baseline"]["attacks"]
    v["bd"] = {"family": "poisoning", "metrics": {"backdoor_success": 0.914}}
    v["leak"] = {"family": "label_leakage", "metrics": {"auc": 0.912}}
    v["inv"]["metrics"]["psnr_baseline"] = 11.0
    text = _summary(data)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "TPR@1%FPR 0.0412 (4.1x)" in text and "medium" in text
    assert "PSNR 17.2 dB (base 11.0)" in text
    assert "backdoor success 0.914" in text and "leak AUC 0.912" in text
    assert "ε: gdp, δ=1e-05" in text and "≈3.14" in text
    assert "\x1b[" not in text  # no colour codes in a pipe


def test_run_shows_attack_progress_and_records_the_command(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    from privlab.results import read_results

    args = ["run", "default", "--out", str(tmp_path)]
    for item in tiny_overrides:
        args += ["--set", item]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "[plain] attack 1/1 mia_loss" in r.output and "[dp] attacks 1/1 done" in r.output
    data = read_results(tmp_path / "results.json")
    import shlex

    expected = ["privlab", "run", "default"] + [a for i in tiny_overrides for a in ("--set", i)]
    assert shlex.split(data["invocation"]) == expected  # the exact command, quoted for a shell
    assert "--out" not in data["invocation"]  # same results wherever they are written
    assert str(markup_escape(data["invocation"])) in (tmp_path / "report.html").read_text()
