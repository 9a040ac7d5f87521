"""Accountants: privlab's epsilon equals Opacus' own for the same history."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from typer.testing import CliRunner

from privlab.cli import app
from privlab.defenses.dp_fedavg import DPFedAvg, accounted_epsilon, rdp_floor
from privlab.defenses.dp_sgd import epsilon_of
from privlab.scenario import ComponentSpec, load_scenario

DELTA = 1 / 48000
CASES = [
    ("rdp", RDPAccountant, 2.17),
    ("prv", PRVAccountant, 1.97),
    ("gdp", GaussianAccountant, 1.84),
]


def _opacus(cls: type, noise: float, rate: float, steps: int, delta: float) -> float:
    acc = cls()
    acc.history = [(noise, rate, steps)]
    return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize(("name", "cls", "expected"), CASES)
def test_noise3_rate02_50steps(name: str, cls: type, expected: float) -> None:
    """The issue's reference history: noise 3.0, sample rate 0.2, 50 steps, delta 1/48000."""
    ref = _opacus(cls, 3.0, 0.2, 50, DELTA)
    assert accounted_epsilon(3.0, 0.2, 50, DELTA, name) == pytest.approx(ref, rel=1e-9)
    assert epsilon_of(((3.0, 0.2, 50),), DELTA, name) == pytest.approx(ref, rel=1e-9)
    assert ref == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(("name", "cls", "expected"), CASES)
def test_dp_fedavg_ledger_over_50_rounds_equals_opacus(
    name: str, cls: type, expected: float
) -> None:
    """10 clients, 2 per round (rate 0.2), noise 3.0, 50 rounds: the defense's own ledger."""
    spec = ComponentSpec(
        name="dp_fedavg", params={"noise_multiplier": 3.0, "accountant": name, "delta": DELTA}
    )
    d = DPFedAvg(spec, "defenses.0")
    scenario = load_scenario(
        "default",
        ["partition.num_clients=10", "topology.client_fraction=0.2", "topology.rounds=50"],
    )
    d.check_setting(scenario, (1, 8, 8), 10)
    import torch

    for r in range(1, 51):
        d.start_round(r, {})
        d.aggregate([{"w": torch.ones(3)}], [1.0])
    spent = d.privacy()
    assert spent["sample_rate"] == pytest.approx(0.2) and spent["rounds_accounted"] == 50
    assert spent["epsilon"] == pytest.approx(_opacus(cls, 3.0, 0.2, 50, DELTA), rel=1e-9)
    assert spent["approximate"] is (name == "gdp")


@settings(max_examples=8, deadline=None)
@given(
    noise=st.floats(0.5, 5.0),
    rate=st.floats(0.01, 1.0),
    steps=st.integers(1, 500),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
)
def test_rdp_ledger_equals_opacus_for_any_history(
    noise: float, rate: float, steps: int, delta: float
) -> None:
    ours = accounted_epsilon(noise, rate, steps, delta, "rdp")
    assert ours == pytest.approx(_opacus(RDPAccountant, noise, rate, steps, delta), rel=1e-9)
    assert ours >= rdp_floor(delta) - 1e-9


def test_dp_sgd_unreachable_target_epsilon_exits_2() -> None:
    variants = (
        'variants=[{name="v", defenses=[{name="dp_sgd", '
        'params={target_epsilon=0.000001, accountant="gdp"}}]}]'
    )
    result = CliRunner().invoke(
        app, ["run", "default", "--set", variants, "--set", "expectations=[]",
              "--set", "topology.rounds=1"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "target_epsilon" in lines[0], lines


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{noise_multiplier=-0.5}", "noise_multiplier"),
        ("{noise_multiplier=1.0, delta=1.0}", "delta"),
    ],
)
def test_dp_sgd_bad_inputs_exit_2(params: str, field: str) -> None:
    variants = f'variants=[{{name="v", defenses=[{{name="dp_sgd", params={params}}}]}}]'
    result = CliRunner().invoke(
        app, ["run", "default", "--set", variants, "--set", "expectations=[]"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], lines
