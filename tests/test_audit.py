"""Empirical DP audit: the Clopper-Pearson lower bound is sound and detects leakage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats
from typer.testing import CliRunner

from privlab.audit import clopper_pearson, epsilon_lower_bound, make_canaries
from privlab.cli import app


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reference models go to a per-test cache, never the working directory's."""
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (57, 200)])
def test_clopper_pearson_matches_scipy_exact_interval(k: int, n: int) -> None:
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    lo, hi = clopper_pearson(k, n, 0.1)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of the Gaussian mechanism with sensitivity/sigma = mu (Balle & Wang 2018)."""

    def gap(eps: float) -> float:
        return (
            stats.norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
            - delta
        )

    return float(optimize.brentq(gap, 0.0, 100.0))


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_bound_never_exceeds_the_true_epsilon_over_seeds(mu: float) -> None:
    """Canary scores from a Gaussian mechanism of known epsilon: at 95% confidence the bound
    may exceed it in at most ~5% of runs; with the Bonferroni union it never does here."""
    delta = 1e-5
    true_eps = gaussian_epsilon(mu, delta)
    bounds = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scores_in = rng.normal(mu, 1.0, 500)
        scores_out = rng.normal(0.0, 1.0, 500)
        bounds.append(
            epsilon_lower_bound(scores_in, scores_out, delta=delta)["epsilon_lower_bound"]
        )
    assert max(bounds) <= true_eps
    if mu >= 2.0:
        assert np.mean(bounds) > 0.2 * true_eps  # and the audit is not vacuous


def test_randomized_response_bound_is_sound_and_positive() -> None:
    eps = 2.0
    p = math.exp(eps) / (1 + math.exp(eps))
    found = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        s_in = (rng.random(1000) < p).astype(float)
        s_out = (rng.random(1000) < 1 - p).astype(float)
        found.append(epsilon_lower_bound(s_in, s_out, delta=0.0)["epsilon_lower_bound"])
    assert max(found) <= eps and min(found) > 1.0


def test_perfect_separation_gives_a_clearly_positive_bound() -> None:
    out = epsilon_lower_bound(np.ones(100), np.zeros(100), delta=1e-5)
    assert out["epsilon_lower_bound"] > 2.5 and out["tpr"] == 1.0 and out["fpr"] == 0.0
    none = epsilon_lower_bound(np.zeros(100), np.zeros(100), delta=1e-5)
    assert none["epsilon_lower_bound"] == 0.0


def test_canaries_are_out_of_distribution_with_random_labels() -> None:
    rng = np.random.default_rng(0)
    x_like = rng.uniform(2, 3, size=(50, 1, 4)).astype(np.float32)
    x, y = make_canaries(x_like, 7, 100, rng)
    assert x.shape == (100, 1, 4) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 2 and x.max() <= 3 and set(y) <= set(range(7)) and len(set(y)) > 3


def _run(tmp_path: Path, overrides: list[str], name: str = "audit") -> dict:
    args = ["run", name, "--out", str(tmp_path)]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    return json.loads((tmp_path / "results.json").read_text())


def test_audit_end_to_end_on_a_small_leaky_run(tmp_path: Path) -> None:
    results = _run(
        tmp_path,
        [
            "data.params={num_samples=600}",
            "topology.rounds=6",
            "model.params={hidden=[64]}",
            'attacks=[{name="dp_audit", id="audit", '
            'params={num_canaries=60, score="loss", cache=false}}]',
            'variants=[{name="plain"}]',
            "expectations=[]",
        ],
    )
    metrics = results["variants"]["plain"]["attacks"]["audit"]["metrics"]
    assert metrics["epsilon_lower_bound"] > 0.5
    assert metrics["n_canaries_in"] + metrics["n_canaries_out"] == 60
    html = (tmp_path / "report.html").read_text()
    assert "Claimed vs audited epsilon" in html and "Clopper-Pearson" in html


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_audit_bound_below_claim_under_dp_and_positive_without(tmp_path: Path, seed: int) -> None:
    results = _run(tmp_path, ["expectations=[]", f"seed={seed}"])
    plain = results["variants"]["no_defense"]
    dp = results["variants"]["dp_sgd_eps1"]
    assert plain["attacks"]["audit"]["metrics"]["epsilon_lower_bound"] > 1.0
    claimed = dp["privacy"]["epsilon"]
    assert claimed <= 1.0
    assert dp["attacks"]["audit"]["metrics"]["epsilon_lower_bound"] <= claimed
    gaps = [abs(a["metrics"]["auc"] - 0.5) for a in dp["attacks"].values() if "auc" in a["metrics"]]
    assert max(gaps) <= 0.05
