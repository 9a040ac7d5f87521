"""RMIA (Zarifzadeh et al. 2024): the pairwise statistic and its strength with few models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privlab.attacks.rmia import RMIAAttack, marginal_prob, rmia_scores, true_label_prob
from privlab.cli import app
from privlab.errors import ScenarioError
from privlab.metrics import membership_metrics
from privlab.scenario import ComponentSpec


def test_score_is_the_fraction_of_population_records_dominated() -> None:
    """Brute force over pairs, as the paper defines it, against the sorted implementation."""
    rng = np.random.default_rng(0)
    px, mx = rng.uniform(0.01, 1, 30), rng.uniform(0.01, 1, 30)
    pz, mz = rng.uniform(0.01, 1, 50), rng.uniform(0.01, 1, 50)
    gamma = 1.5
    scores = rmia_scores(px, mx, pz, mz, gamma)
    brute = np.array([np.mean((px[i] / mx[i]) / (pz / mz) > gamma) for i in range(30)])
    assert np.allclose(np.floor(scores * 51) / 50, brute)
    # the tie-break keeps the ordering of the paper's fraction
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(brute[order]) >= 0)


def test_offline_marginal_uses_the_linear_approximation() -> None:
    ref = np.array([[0.2, 0.6], [0.4, 0.8]])
    assert np.allclose(marginal_prob(ref, online=True, offline_a=0.3), [0.3, 0.7])
    assert np.allclose(
        marginal_prob(ref, online=False, offline_a=0.3), 0.5 * (1.3 * np.array([0.3, 0.7]) + 0.7)
    )
    lp = np.log(np.array([[0.1, 0.9], [0.7, 0.3]]))
    assert np.allclose(true_label_prob(lp, np.array([1, 0])), [0.9, 0.7])


def test_rmia_with_two_models_beats_a_global_threshold() -> None:
    """Per-record difficulty: RMIA's reference normalisation helps even with two models."""
    rng = np.random.default_rng(1)
    n, models = 2000, 2
    easy = rng.uniform(0.05, 0.95, n)  # how likely a non-member is classified right
    member = rng.random(n) < 0.5
    target = np.clip(easy + 0.3 * member * (1 - easy) + rng.normal(0, 0.02, n), 1e-4, 1)
    ref = np.clip(easy + rng.normal(0, 0.02, (models, n)), 1e-4, 1)
    z_easy = rng.uniform(0.05, 0.95, 500)
    z_target = np.clip(z_easy + rng.normal(0, 0.02, 500), 1e-4, 1)
    z_ref = np.clip(z_easy + rng.normal(0, 0.02, (models, 500)), 1e-4, 1)
    scores = rmia_scores(
        target,
        marginal_prob(ref, online=True, offline_a=0.3),
        z_target,
        marginal_prob(z_ref, online=True, offline_a=0.3),
        1.0,
    )
    rmia = membership_metrics(scores, member)[0]
    threshold = membership_metrics(target, member)[0]
    assert rmia["auc"] > threshold["auc"] + 0.1
    assert rmia["tpr_at_1pct_fpr"] > threshold["tpr_at_1pct_fpr"]


def test_reference_model_minimum() -> None:
    spec = ComponentSpec(name="rmia", params={"mode": "online", "num_reference_models": 1})
    with pytest.raises(ScenarioError, match=r"attacks\.2\.params\.num_reference_models"):
        RMIAAttack(spec, "attacks.2")
    offline = {"mode": "offline", "num_reference_models": 1}
    RMIAAttack(ComponentSpec(name="rmia", params=offline), "attacks.2")


def test_rmia_end_to_end_on_a_small_overfit_run(tmp_path: Path) -> None:
    """Two online reference models on an overfit central model: RMIA beats the loss threshold
    in AUC and at TPR@1% FPR (the paper's low-cost regime)."""
    args = ["run", "mia_lira", "--out", str(tmp_path)]
    for o in [
        "topology.name=central",
        "topology.rounds=15",
        "topology.local_epochs=1",
        "data.params={num_samples=1000}",
        'attacks=[{name="loss_threshold", id="loss"}, '
        '{name="rmia", id="rmia", params={mode="online", num_reference_models=2, cache=false}}]',
        "expectations=[]",
    ]:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    attacks = json.loads((tmp_path / "results.json").read_text())["variants"]["baseline"]["attacks"]
    rmia, loss = attacks["rmia"]["metrics"], attacks["loss"]["metrics"]
    assert rmia["auc"] > loss["auc"] + 0.03
    assert rmia["tpr_at_1pct_fpr"] > loss["tpr_at_1pct_fpr"]
