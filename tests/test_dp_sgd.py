"""DP-SGD: epsilon comes from Opacus' accountants; DP removes measurable leakage."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

from privlab.defenses.dp_sgd import DPSGD, DPSGDTrainer, FastDPSGDTrainer, epsilon_of
from privlab.errors import ScenarioError
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario
from privlab.training import TrainSettings, seeded_generator


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [("rdp", RDPAccountant, 2.17), ("prv", PRVAccountant, 1.97), ("gdp", GaussianAccountant, 1.84)],
)
def test_epsilon_equals_opacus_for_same_history(name: str, cls: type, expected: float) -> None:
    history = ((3.0, 0.2, 50),)
    ref = cls()
    ref.history = list(history)
    ours = epsilon_of(history, 1 / 48000, name)
    assert ours == pytest.approx(ref.get_epsilon(delta=1 / 48000), rel=1e-9)
    assert ours == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(("path", "cls"), [("auto", FastDPSGDTrainer), ("opacus", DPSGDTrainer)])
def test_trainer_steps_the_accountant_once_per_step(path: str, cls: type) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    settings = TrainSettings(batch_size=8, lr=0.1, local_epochs=2)
    params = {"noise_multiplier": 1.5, "accountant": "rdp", "path": path}
    spec = ComponentSpec(name="dp_sgd", params=params)
    trainer = DPSGD(spec, "defenses.0").make_trainer(
        model, x, y, settings, seeded_generator(0), planned_epochs=2
    )
    assert isinstance(trainer, cls)
    assert trainer.privacy()["path"] == cls.path
    trainer.train(trainer.state())
    spent = trainer.privacy()
    assert spent["steps"] == 10 and spent["sample_rate"] == pytest.approx(0.2)
    ref = RDPAccountant()
    ref.history = [(1.5, 0.2, 10)]
    assert spent["epsilon"] == pytest.approx(ref.get_epsilon(1e-5))
    assert spent["approximate"] is False


def test_gdp_is_labelled_approximate() -> None:
    spec = ComponentSpec(name="dp_sgd", params={"noise_multiplier": 1.0, "accountant": "gdp"})
    defense = DPSGD(spec, "defenses.0")
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    trainer = defense.make_trainer(
        model,
        torch.randn(10, 4),
        torch.randint(0, 2, (10,)),
        TrainSettings(batch_size=5, lr=0.1, local_epochs=1),
        seeded_generator(1),
        planned_epochs=1,
    )
    trainer.train(trainer.state())
    assert trainer.privacy()["approximate"] is True


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "delta": 1.0}, "delta"),
        ({}, "params"),
        ({"noise_multiplier": 1.0, "target_epsilon": 1.0}, "params"),
    ],
)
def test_bad_dp_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(ScenarioError, match=field):
        DPSGD(ComponentSpec(name="dp_sgd", params=params), "defenses.0")


def test_unreachable_target_epsilon_is_a_scenario_error() -> None:
    spec = ComponentSpec(name="dp_sgd", params={"target_epsilon": 1e-6, "delta": 1e-5})
    with pytest.raises(ScenarioError, match="target_epsilon"):
        DPSGD(spec, "defenses.0").noise_for(sample_rate=0.5, steps=2000)


def test_dp_at_small_epsilon_removes_leakage_where_the_undefended_model_leaks() -> None:
    """Issue 2's done-when: on a leaky setup (AUC >= 0.6), DP-SGD at epsilon <= 1 brings the
    loss-threshold AUC within 0.05 of 0.5."""
    scenario = load_scenario("mia_overfit")
    scenario.variants = [v for v in scenario.variants if v.name in ("no_defense", "dp_sgd_eps1")]
    scenario.expectations = []
    results = ScenarioRun(scenario).run()
    leaky = results["variants"]["no_defense"]["attacks"]["mia_loss"]["metrics"]
    private = results["variants"]["dp_sgd_eps1"]
    assert leaky["auc"] >= 0.6
    assert private["privacy"]["epsilon"] <= 1.0
    assert abs(private["attacks"]["mia_loss"]["metrics"]["auc"] - 0.5) <= 0.05
