"""The CLI as a user meets it: commands, exit codes, one-line errors, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privlab import cli
from privlab.cli import app
from privlab.results import strip_timing

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def overrides(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def assert_one_line_error(result, *fragments: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def earlier_report(tmp_path: Path) -> Path:
    """An output folder holding an earlier run's files, which bad input must not touch."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "results.json").write_text('{"earlier": true}\n')
    (folder / "report.html").write_text("<html>earlier</html>\n")
    return folder


def assert_intact(folder: Path) -> None:
    assert (folder / "results.json").read_text() == '{"earlier": true}\n'
    assert (folder / "report.html").read_text() == "<html>earlier</html>\n"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "results.json"]


def test_run_writes_results_and_report(tmp_path: Path, tiny_overrides: list[str]) -> None:
    out = tmp_path / "run"
    result = invoke("run", *overrides(tiny_overrides), "--out", str(out), "--seed", "3")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["seed"] == 3 and set(data["variants"]) == {"plain", "dp"}
    assert data["variants"]["dp"]["privacy"]["accountant"] == "prv"
    assert data["variants"]["plain"]["privacy"] is None
    assert len(data["variants"]["plain"]["utility"]["per_round"]) == 3
    html = (out / "report.html").read_text()
    assert "plain" in html and "https://" not in html
    assert not list(out.glob(".*tmp"))


def test_same_scenario_and_seed_give_identical_results(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    for name in ("a", "b"):
        assert (
            invoke("run", *overrides(tiny_overrides), "--out", str(tmp_path / name)).exit_code == 0
        )
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert strip_timing(a) == strip_timing(b)
    assert "timing" in a and "seconds" in a["variants"]["dp"]["cost"]
    c_dir = tmp_path / "c"
    invoke("run", *overrides(tiny_overrides), "--out", str(c_dir), "--seed", "1")
    c = json.loads((c_dir / "results.json").read_text())
    assert strip_timing(c)["variants"] != strip_timing(a)["variants"]


def test_report_rerenders_from_results_alone(tmp_path: Path, tiny_overrides: list[str]) -> None:
    out = tmp_path / "r"
    invoke("run", *overrides(tiny_overrides), "--out", str(out))
    original = (out / "report.html").read_text()
    (out / "report.html").unlink()
    result = invoke("report", str(out / "results.json"))
    assert result.exit_code == 0
    assert (out / "report.html").read_text() == original


def test_expectation_breach_exits_1(tmp_path: Path, tiny_overrides: list[str]) -> None:
    items = [*tiny_overrides[:-1], 'expectations=[{metric="utility.final_accuracy", min=1.01}]']
    result = invoke("run", *overrides(items), "--out", str(tmp_path / "x"))
    assert result.exit_code == 1
    assert "utility.final_accuracy" in result.stderr
    assert (tmp_path / "x" / "results.json").exists()
    check = invoke("check", str(tmp_path / "x" / "results.json"))
    assert check.exit_code == 1


def test_check_against_baseline(tmp_path: Path, tiny_overrides: list[str]) -> None:
    out = tmp_path / "base"
    invoke("run", *overrides(tiny_overrides), "--out", str(out))
    path = out / "results.json"
    assert invoke("check", str(path), "--baseline", str(path)).exit_code == 0
    worse = json.loads(path.read_text())
    worse["variants"]["plain"]["utility"]["final_accuracy"] -= 0.2
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    result = invoke("check", str(tmp_path / "worse.json"), "--baseline", str(path))
    assert result.exit_code == 1 and "utility.final_accuracy moved the wrong way" in result.stderr


def test_list_names_every_component() -> None:
    result = invoke("list")
    assert result.exit_code == 0
    for name in (
        "digits",
        "breast_cancer",
        "mnist1d",
        "mlp",
        "cnn",
        "federated",
        "central",
        "loss_threshold",
        "dp_sgd",
        "default",
    ):
        assert name in result.output


def test_show_prints_resolved_scenario_with_overrides() -> None:
    result = invoke("show", "--set", "topology.rounds=7", "--seed", "5")
    data = json.loads(result.stdout)
    assert data["topology"]["rounds"] == 7 and data["seed"] == 5
    assert data["topology"]["batch_size"] > 0  # defaults filled in


def test_sweep_makes_one_variant_per_value(tmp_path: Path, tiny_overrides: list[str]) -> None:
    items = [o for o in tiny_overrides if not o.startswith("variants")] + ["variants=[]"]
    result = invoke(
        "sweep", *overrides(items), "--param", "topology.lr=0.05,0.2", "--out", str(tmp_path / "s")
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    assert set(data["variants"]) == {"lr=0.05", "lr=0.2"}


BAD_INPUTS = [
    (["--set", "data.name=digitz"], ("data.name", "did you mean 'digits'")),
    (["--set", "model.name=mpl"], ("model.name", "did you mean 'mlp'")),
    (["--set", 'attacks=[{name="loss_treshold"}]'], ("attacks.0.name", "loss_threshold")),
    (["--set", 'defenses=[{name="dp_sdg"}]'], ("defenses.0.name", "dp_sgd")),
    (["--set", "topology.name=federatd"], ("topology.name", "federated")),
    (["--set", "partition.num_clients=0"], ("partition.num_clients", "greater than 0")),
    (["--set", "partition.num_clients=-3"], ("partition.num_clients",)),
    (["--set", "partition.num_clients=5000"], ("partition.num_clients", "training samples")),
    (["--set", "topology.rounds=abc"], ("topology.rounds", "integer")),
    (["--set", "topology.lr=fast"], ("topology.lr", "number")),
    (["--set", "topology.rouns=3"], ("topology.rouns", "did you mean 'rounds'")),
    (
        ["--set", 'data.name="file"', "--set", 'data.params={path="missing.npz"}'],
        ("data.params.path", "does not exist"),
    ),
    (["--set", "nonsense"], ("--set", "KEY=VALUE")),
    (["no-such-scenario"], ("scenario", "no bundled scenario")),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_keeps_earlier_report(
    args: list[str], fragments: tuple[str, ...], earlier_report: Path
) -> None:
    result = invoke("run", *args, "--out", str(earlier_report))
    assert_one_line_error(result, *fragments)
    assert_intact(earlier_report)


def test_invalid_toml(tmp_path: Path, earlier_report: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[data\nname = "digits"\n')
    result = invoke("run", str(path), "--out", str(earlier_report))
    assert_one_line_error(result, "invalid TOML")
    assert_intact(earlier_report)


def test_missing_scenario_file(tmp_path: Path) -> None:
    assert_one_line_error(invoke("run", str(tmp_path / "nope.toml")), "does not exist")


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("run", "--set", "topology.rounds=1", "--out", str(blocker / "sub"))
    assert_one_line_error(result, "--out", "cannot write")
    assert blocker.read_text() == "not a folder"


def test_report_of_a_non_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert_one_line_error(invoke("report", str(bad)), "not a privlab results file")


def test_internal_error_exits_3_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "_execute", explode)
    result = invoke("run", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "internal error", "boom", code=3)


def test_a_failing_report_render_leaves_earlier_files_intact(
    monkeypatch: pytest.MonkeyPatch, earlier_report: Path, tiny_overrides: list[str]
) -> None:
    import privlab.report

    def broken(results: dict) -> str:
        raise RuntimeError("template exploded")

    monkeypatch.setattr(privlab.report, "render_report", broken)
    items = [*tiny_overrides[:-2], 'variants=[{name="plain"}]', "expectations=[]"]
    result = invoke("run", *overrides(items), "--out", str(earlier_report), "--quiet")
    assert_one_line_error(result, "template exploded", code=3)
    assert_intact(earlier_report)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "topology.params.late_dropot=0.2"], "did you mean 'late_dropout'"),
        (["--set", "topology.params.late_dropout=1.5"], "less than 1"),
        (
            [
                *("--set", 'topology.name="central"', "--set", "attacks=[]"),
                *("--set", "topology.params.x=1"),
            ],
            "no fields",
        ),
    ],
)
def test_topology_params_are_strict(args: list[str], fragment: str, earlier_report: Path) -> None:
    result = invoke("run", *args, "--out", str(earlier_report))
    assert_one_line_error(result, "topology.params.", fragment)
    assert_intact(earlier_report)
