"""Bad input, case by case: every one is refused in one line with its exit code, before any
training, and leaves the output folder as it was (issue 10's list, one row per case)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privlab import registry
from privlab.cli import app

runner = CliRunner()
DEEP = 3000


def assert_one_line(result, code: int, fragments: tuple[str, ...]) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def s(*items: str) -> list[str]:
    """--set options."""
    return [arg for item in items for arg in ("--set", item)]


def npz(tmp: Path, **arrays: object) -> list[str]:
    path = tmp / "d.npz"
    np.savez(path, **arrays)
    return s('data.name="file"', f'data.params={{path="{path}"}}')


def file_with(tmp: Path, name: str, content: bytes) -> str:
    path = tmp / name
    path.write_bytes(content)
    return str(path)


RNG = np.random.default_rng(0)
X40 = RNG.normal(size=(40, 3))
Y40 = np.arange(40) % 2

Make = Callable[[Path], list[str]]

# (case id, arguments of `privlab run` (built in a temporary folder), exit code, fragments)
RUN_CASES: list[tuple[str, Make, int, tuple[str, ...]]] = [
    # ---- non-finite and absurd numbers, in the scenario and in any component's params
    ("lr-inf", lambda t: s("topology.lr=inf"), 2, ("topology.lr", "finite", "inf")),
    ("lr-nan", lambda t: s("topology.lr=nan"), 2, ("topology.lr", "finite")),
    ("lr-huge", lambda t: s("topology.lr=1e30"), 2, ("topology.lr", "less than or equal to 100")),
    ("server-lr-inf", lambda t: s("topology.server_lr=inf"), 2, ("topology.server_lr", "finite")),
    ("rounds-huge", lambda t: s("topology.rounds=1000000000"), 2, ("topology.rounds",)),
    (
        "dp-target-epsilon-inf",
        lambda t: s('defenses=[{name="dp_sgd", params={target_epsilon=inf}}]'),
        2,
        ("defenses.0.params.target_epsilon", "finite"),
    ),
    (
        "backdoor-trigger-nan",
        lambda t: s('attacks=[{name="backdoor", params={trigger_value=nan}}]'),
        2,
        ("attacks.0.params.trigger_value", "finite"),
    ),
    (
        "alie-z-nan",
        lambda t: s('attacks=[{name="alie", params={z=nan}}]'),
        2,
        ("attacks.0.params.z", "finite"),
    ),
    (
        "alie-z-nan-as-text",  # pydantic parses "nan" as a float: still refused
        lambda t: s('attacks=[{name="alie", params={z="nan"}}]'),
        2,
        ("attacks.0.params.z", "finite"),
    ),
    (
        "nested-component-param-inf",
        lambda t: s('attacks=[{name="loss_threshold", params={a={b=[1, -inf]}}}]'),
        2,
        ("attacks.0.params.a.b.1", "finite"),
    ),
    (
        "variant-set-nan",
        lambda t: s('variants=[{name="v", set={"topology.lr"=nan}}]'),
        2,
        ("variants.0.set.topology.lr", "finite"),
    ),
    ("data-param-nan", lambda t: s("data.params.x=nan"), 2, ("data.params.x", "finite")),
    (
        "expectation-bound-nan",
        lambda t: s('expectations=[{metric="utility.final_accuracy", min=nan}]'),
        2,
        ("expectations.0.min", "finite"),
    ),
    (
        "seed-2-to-the-64",
        lambda t: ["--seed", "18446744073709551616"],
        2,
        ("seed", "less than or equal to 9223372036854775807"),
    ),
    ("seed-negative", lambda t: ["--seed", "-1"], 2, ("seed", "greater than or equal to 0")),
    # ---- expectations that cannot be met are refused while preparing
    (
        "expectation-unknown-attack-metric",
        lambda t: s('expectations=[{metric="attacks.mia_loss.aucc", max=0.6}]'),
        2,
        ("expectations.0.metric", "no metric 'aucc'", "did you mean 'auc'"),
    ),
    (
        "expectation-unknown-utility-key",
        lambda t: s('expectations=[{metric="utility.acc", min=0.5}]'),
        2,
        ("expectations.0.metric", "names no field of utility", "utility.final_accuracy"),
    ),
    (
        "expectation-unknown-attack-id",
        lambda t: s('expectations=[{metric="attacks.mia_los.auc", max=0.6}]'),
        2,
        ("expectations.0.metric", "no attack with id 'mia_los'", "did you mean 'mia_loss'"),
    ),
    (
        "expectation-unknown-cost-key",
        lambda t: s('expectations=[{metric="cost.bytes", max=1}]'),
        2,
        ("expectations.0.metric", "cost.bytes_total"),
    ),
    (
        "expectation-min-above-max",
        lambda t: s('expectations=[{metric="utility.final_accuracy", min=0.9, max=0.1}]'),
        2,
        ("expectations.0", "above max"),
    ),
    # ---- files and nesting that used to crash (exit 3)
    (
        "scenario-not-utf8",
        lambda t: [file_with(t, "latin1.toml", 'name = "caf\xe9"\n'.encode("latin-1"))],
        2,
        ("scenario", "not UTF-8", "0xe9"),
    ),
    (
        "scenario-nested-3000-arrays",
        lambda t: [file_with(t, "deep.toml", f"x = {'[' * DEEP}{']' * DEEP}\n".encode())],
        2,
        ("scenario", "nested too deeply"),
    ),
    (
        "scenario-nested-100-tables",  # below the recursion limit, above privlab's
        lambda t: [file_with(t, "deep.toml", ("data.params." + "a." * 100 + "b = 1\n").encode())],
        2,
        ("data.params.a.a", "nested too deeply"),
    ),
    (
        "set-value-nested-3000",
        lambda t: s(f"data.params.x={'[' * DEEP}{']' * DEEP}"),
        2,
        ("--set data.params.x", "nested too deeply"),
    ),
    (
        "set-key-nested-3000",
        lambda t: s("data.params." + ".".join(["a"] * DEEP) + "=1"),
        2,
        ("data.params.a.a", "nested too deeply"),
    ),
    ("scenario-is-a-directory", lambda t: [str(t)], 2, ("scenario", "is a directory")),
    ("scenario-is-dev-null", lambda t: ["/dev/null"], 2, ("scenario", "character device")),
    # ---- nonsense data
    (
        "npz-no-records",
        lambda t: npz(t, x=np.zeros((0, 3)), y=np.zeros(0)),
        2,
        ("data.params.path", "x is empty"),
    ),
    (
        "npz-no-features",
        lambda t: npz(t, x=np.zeros((40, 0)), y=Y40),
        2,
        ("data.params.path", "x is empty"),
    ),
    (
        "npz-nan-labels",
        lambda t: npz(t, x=X40, y=np.where(Y40 == 1, np.nan, 0.0)),
        2,
        ("data.params.path", "NaN or infinite labels"),
    ),
    (
        "npz-fractional-labels",
        lambda t: npz(t, x=X40, y=Y40 * 0.5),
        2,
        ("data.params.path", "fractional"),
    ),
    (
        "npz-complex-features",
        lambda t: npz(t, x=X40 + 1j, y=Y40),
        2,
        ("data.params.path", "x is complex"),
    ),
    (
        "npz-complex-labels",
        lambda t: npz(t, x=X40, y=Y40 + 0j),
        2,
        ("data.params.path", "y is complex"),
    ),
    (
        "test-set-of-one-record",
        lambda t: s("data.test_fraction=0.0001"),
        2,
        ("data.test_fraction", "test set of 1 record", "at least 10"),
    ),
    (
        "data-path-is-a-directory",
        lambda t: s('data.name="file"', f'data.params={{path="{t}"}}'),
        2,
        ("data.params.path", "is a directory"),
    ),
    (
        "data-path-is-dev-null",
        lambda t: s('data.name="file"', 'data.params={path="/dev/null"}'),
        2,
        ("data.params.path", "character device"),
    ),
    (
        "ledger-tamper-entry-that-cannot-exist",
        lambda t: s(
            'topology.name="swarm"',
            "partition.num_clients=10",
            'variants=[{name="v"}]',
            "expectations=[]",
            'attacks=[{name="ledger_tamper", params={entry=999, at_round=2}}]',
        ),
        2,
        ("attacks.0.params.entry", "cannot exist", "at most 11 entries"),
    ),
    (
        "ledger-tamper-after-the-last-round",
        lambda t: s(
            'topology.name="swarm"',
            "topology.rounds=3",
            'variants=[{name="v"}]',
            "expectations=[]",
            'attacks=[{name="ledger_tamper", params={entry=1, at_round=9}}]',
        ),
        2,
        ("attacks.0.params.at_round", "never comes"),
    ),
    # ---- names that would leave the reports folder
    ("name-dot-dot", lambda t: s('name=".."'), 2, ("name", "folder name")),
    ("name-dot", lambda t: s('name="."'), 2, ("name", "folder name")),
    ("name-hidden", lambda t: s('name=".x"'), 2, ("name", "folder name")),
    ("name-with-slash", lambda t: s('name="a/b"'), 2, ("name", "folder name")),
    # ---- usage errors: the same one line as every other error
    ("threads-zero", lambda t: ["--threads", "0"], 2, ("--threads", "greater than or equal")),
    ("threads-huge", lambda t: ["--threads", "100000"], 2, ("--threads", "less than or equal")),
    ("unknown-option", lambda t: ["--thread", "2"], 2, ("No such option: --thread",)),
    ("workers-zero", lambda t: ["--workers", "0"], 2, ("--workers", "greater than or equal")),
    ("workers-text", lambda t: ["--workers", "many"], 2, ("--workers", "valid integer")),
    ("workers-field", lambda t: s("workers=0"), 2, ("workers", "greater than or equal")),
    ("client-tasks-local", lambda t: s("client_tasks=true"), 2, ("client_tasks", "backend")),
    ("client-tasks-zero", lambda t: s("client_tasks=0"), 2, ("client_tasks", "tasks per round")),
    ("client-tasks-text", lambda t: s('client_tasks="all"'), 2, ("client_tasks", "true, false")),
]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any case that reaches training fails loudly: every refusal must come before it."""
    from privlab import runner as runner_module

    def trained(self: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(runner_module.ScenarioRun, "run", trained)


@pytest.fixture
def earlier(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "results.json").write_text('{"earlier": true}\n')
    (folder / "report.html").write_text("<html>earlier</html>\n")
    return folder


def assert_intact(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "results.json"]
    assert (folder / "results.json").read_text() == '{"earlier": true}\n'


@pytest.mark.parametrize(
    ("make", "code", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in RUN_CASES],
)
def test_run_refuses_bad_input_in_one_line(
    make: Make,
    code: int,
    fragments: tuple[str, ...],
    tmp_path: Path,
    earlier: Path,
    no_training: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a default reports/ folder would land here
    args = make(tmp_path)
    assert_one_line(runner.invoke(app, ["run", *args, "--out", str(earlier)]), code, fragments)
    assert_intact(earlier)
    fresh = tmp_path / "fresh" / "sub"
    assert_one_line(runner.invoke(app, ["run", *args, "--out", str(fresh)]), code, fragments)
    assert not (tmp_path / "fresh").exists()  # a failed run leaves no (empty) folder
    assert not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------- plugins


@pytest.mark.parametrize(
    ("value", "module_source", "fragments"),
    [
        pytest.param("no_such_module_xyz:Attack", None, ("ModuleNotFoundError",), id="missing"),
        pytest.param("plugin_ok:Missing", "X = 1\n", ("AttributeError", "Missing"), id="no-attr"),
        pytest.param(
            "plugin_boom:Attack",
            "raise RuntimeError('broken at import')\n",
            ("broken",),
            id="raises",
        ),
        pytest.param("plugin_syntax:Attack", "def (:\n", ("SyntaxError",), id="syntax-error"),
    ],
)
def test_a_plugin_that_fails_to_import_is_a_configuration_error(
    value: str,
    module_source: str | None,
    fragments: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    earlier: Path,
    no_training: None,
) -> None:
    if module_source is not None:
        (tmp_path / f"{value.partition(':')[0]}.py").write_text(module_source)
        monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint(name="evil", value=value, group="privlab.attacks")]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if "attacks" in group else [])
    monkeypatch.setattr(registry.attacks, "_entries", dict(registry.attacks._entries))
    monkeypatch.setattr(registry.attacks, "_plugins_loaded", False)
    result = runner.invoke(app, ["run", "--set", 'attacks=[{name="evil"}]', "--out", str(earlier)])
    assert_one_line(result, 2, ("attacks.0.name", "plugin 'evil'", value, *fragments))
    assert_intact(earlier)


@pytest.mark.parametrize(
    "metric",
    [
        "attacks.mia_loss.auc",
        "attacks.mia_loss.metrics.auc",
        "attacks.mia_loss.tpr_at_0.1pct_fpr",  # a metric key holding a dot
        "attacks.mia_loss.auc_ci.0",
        "attacks.mia_loss.auc_baseline",
        "utility.final_accuracy",
        "utility.per_client_accuracy.0",
        "cost.bytes_total",
        "privacy.epsilon",
    ],
)
def test_expectations_that_can_be_met_are_accepted(metric: str) -> None:
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    scenario = load_scenario(None, [f'expectations=[{{metric="{metric}", min=0}}]'])
    assert len(ScenarioRun(scenario).variants) == 3  # prepared, nothing refused
