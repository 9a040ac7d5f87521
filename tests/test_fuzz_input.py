"""Fuzzing what a user can type: random `--set` values (nested, non-finite, huge, wrong types)
and random nested params for every registered attack and defense. Whatever comes in, preparing
a run either succeeds or raises one ScenarioError line; never another exception. The same for
hand-edited results.json given to `check` and `report`."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from privlab import registry
from privlab.cli import app
from privlab.errors import ScenarioError
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario

FAST = [
    "partition.num_clients=3",
    "topology.rounds=1",
    "model.params={hidden=[8]}",
    'variants=[{name="v"}]',
    "expectations=[]",
]
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, 0.0]),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["nan", "inf", "", "digits", "mlp", "../x"]),
)
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


def toml_value(v: Any) -> str:
    """A TOML inline value (TOML has nan and inf; it has no null)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def prepare(overrides: list[str]) -> None:
    """Load and prepare (every check that runs before training); bad input -> ScenarioError."""
    try:
        ScenarioRun(load_scenario(None, [*FAST, *overrides]))
    except ScenarioError as exc:
        message = str(exc)
        assert message and "\n" not in message, message


PATHS = [
    "seed",
    "name",
    "topology.lr",
    "topology.server_lr",
    "topology.rounds",
    "topology.batch_size",
    "topology.momentum",
    "topology.params",
    "topology.params.late_dropout",
    "partition.num_clients",
    "partition.alpha",
    "partition.scheme",
    "data.test_fraction",
    "data.params",
    "data.name",
    "model.params",
    "model.params.hidden",
    "attacks",
    "attacks.0",
    "attacks.0.params",
    "defenses",
    "expectations",
    "variants",
    "variants.0.set",
]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=3))
def test_random_set_values_are_refused_in_one_line_or_accepted(
    items: list[tuple[str, Any]],
) -> None:
    prepare([f"{key}={toml_value(value)}" for key, value in items])


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "channels": st.lists(st.integers(-2, 64) | st.integers(-2, 2**40), max_size=5),
            "kernel_size": st.integers(-2, 12) | st.integers(-2, 2**40),
            "pool": st.booleans(),
            "activation": st.sampled_from(["relu", "tanh", "sigmoid"]),
        },
    )
)
def test_random_cnn_params(params: dict[str, Any]) -> None:
    """The CNN on digits' (1, 8, 8) images, with well-typed but extreme settings (other types
    are fuzzed through `model.params` above): widths, kernel sizes and pooling that cannot work
    are refused in one line before the model is allocated or trained."""
    prepare(['model.name="cnn"', f"model.params={toml_value(params)}"])


@FUZZ
@given(st.lists(keys, min_size=1, max_size=80), values)
def test_random_deep_set_keys(parts: list[str], value: Any) -> None:
    prepare([f"data.params.{'.'.join(parts)}={toml_value(value)}"])


def _component_cases() -> list[tuple[str, str]]:
    return [("attacks", n) for n in registry.attacks.names()] + [
        ("defenses", n) for n in registry.defenses.names()
    ]


def _fields(kind: str, name: str) -> list[str]:
    reg = registry.attacks if kind == "attacks" else registry.defenses
    params = getattr(reg.get(name), "Params", None)
    return sorted(getattr(params, "model_fields", {})) or ["x"]


@pytest.mark.parametrize(("kind", "name"), _component_cases())
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_nested_component_params(kind: str, name: str, data: st.DataObject) -> None:
    fields = _fields(kind, name)
    params = data.draw(st.dictionaries(st.sampled_from(fields), values, max_size=3))
    topology = data.draw(st.sampled_from(["federated", "split", "swarm", "central"]))
    body = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in params.items())
    prepare([f'topology.name="{topology}"', f'{kind}=[{{name="{name}", params={{{body}}}}}]'])


# --------------------------------------------------------------------------- results.json


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    args = [a for item in FAST for a in ("--set", item)]
    result = CliRunner().invoke(app, ["run", *args, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, (*prefix, i))
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_hand_edited_results_never_crash_check_or_report(
    results: dict, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    edited = json.loads(json.dumps(results))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(edited)[1:]))
        node = edited
        try:
            for part in path[:-1]:
                node = node[part]
            if data.draw(st.booleans()) and isinstance(node, dict):
                del node[path[-1]]
            else:
                node[path[-1]] = data.draw(values.filter(lambda v: not _non_finite(v)))
        except (KeyError, IndexError, TypeError):
            continue
    folder = tmp_path_factory.mktemp("edit")
    file = folder / "results.json"
    file.write_text(json.dumps(edited))
    runner = CliRunner()
    for args in (["check", str(file)], ["report", str(file), "--out", str(folder / "r.html")]):
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 1, 2), (args[0], result.output)
        if result.exit_code:
            assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1


def _non_finite(v: Any) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, dict):
        return any(_non_finite(x) for x in v.values())
    if isinstance(v, list):
        return any(_non_finite(x) for x in v)
    return False


def test_fuzz_helpers_write_valid_toml() -> None:
    import tomllib

    for v in [1, -2.5, math.nan, math.inf, 'a"b\\', [1, {"k": True}], {"a b": []}]:
        parsed = tomllib.loads(f"v = {toml_value(v)}")["v"]
        assert json.dumps(parsed) == json.dumps(v) or isinstance(v, float)
