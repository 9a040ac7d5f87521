"""Empirical DP audit: the one-run bound (Steinke et al. 2023) and the multi-run
Clopper-Pearson bound are sound, checked against independent computations, and detect leakage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats
from typer.testing import CliRunner

from privlab.audit import clopper_pearson, epsilon_lower_bound, make_canaries
from privlab.audit_one_run import (
    epsilon_lower_bound_one_run,
    guess_counts,
    one_run_audit,
    p_value,
)
from privlab.audit_runs import combine_runs, main, multi_run_audit
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
    assert metrics["analysis"] == "one_run"
    assert metrics["n_canaries_in"] + metrics["n_canaries_out"] == 60
    assert metrics["audit_correct"] <= metrics["audit_guesses"] <= 60
    artifacts = results["variants"]["plain"]["attacks"]["audit"]["artifacts"]
    assert "Steinke" in artifacts["method"] and artifacts["analysis"] == "one_run"
    html = (tmp_path / "report.html").read_text()
    assert "Claimed vs audited epsilon" in html and "one-run analysis" in html


_SMALL_AUDIT = [
    "data.params={num_samples=600}",
    "topology.rounds=6",
    "model.params={hidden=[64]}",
]


def test_multi_run_mode_records_one_trial_per_run_and_combines_across_seeds(
    tmp_path: Path,
) -> None:
    """Two seeds of a multi-run audit: each run records one trial (its canary's score and
    coin); combine_runs bounds epsilon with Clopper-Pearson across the runs."""
    paths = []
    for seed in (0, 1, 2):
        out = tmp_path / f"s{seed}"
        _run(out, [*_SMALL_AUDIT, f"seed={seed}", 'attacks=[{name="dp_audit", id="audit", '
             'params={analysis="multi_run", score="loss", cache=false}}]',
             'variants=[{name="plain"}]', "expectations=[]"])  # fmt: skip
        m = json.loads((out / "results.json").read_text())["variants"]["plain"]["attacks"]
        metrics = m["audit"]["metrics"]
        assert metrics["analysis"] == "multi_run" and "epsilon_lower_bound" not in metrics
        assert metrics["trial_in"] in (0, 1) and math.isfinite(metrics["trial_score"])
        assert metrics["n_canaries_in"] + metrics["n_canaries_out"] == 1
        paths.append(out / "results.json")
    combined = combine_runs(paths, variant="plain")
    assert combined["runs"] == 3 and combined["seeds"] == [0, 1, 2]
    assert combined["analysis"] == "multi_run"
    # three runs cannot support a positive bound at 95% confidence
    assert combined["epsilon_lower_bound"] == 0.0
    assert main([str(p) for p in paths] + ["--variant", "plain"]) == 0
    assert main([str(paths[0]), str(paths[0]), "--variant", "plain"]) == 2  # same seed twice


def test_multi_run_bound_is_clopper_pearson_over_runs() -> None:
    """Perfectly separated trials from 100 independent runs: the bound is the Clopper-Pearson
    one, log(TPR_lo / FPR_hi) at level alpha / (2 * thresholds)."""
    is_in = np.arange(100) % 2 == 0
    scores = is_in.astype(float)
    out = multi_run_audit(scores, is_in, delta=0.0, alpha=0.05)
    tail = 0.05 / (2 * 2)  # two distinct thresholds
    tpr_lo = stats.beta.ppf(tail, 50, 1)
    fpr_hi = stats.beta.ppf(1 - tail, 1, 50)
    assert out["epsilon_lower_bound"] == pytest.approx(math.log(tpr_lo / fpr_hi), rel=1e-9)


# ----- the one-run analysis (Steinke, Nasr and Jagielski 2023)


def _p_value_direct(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Corollary 5.4 evaluated term by term from binomial probabilities (scipy pmf sums)."""
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [stats.binom.pmf(k, r, q) for k in range(r + 1)]
    beta = sum(pmf[v:])
    alpha = max([sum(pmf[v - i : v]) / i for i in range(1, v + 1)], default=0.0)
    return min(beta + 2 * m * delta * alpha, 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [(1000, 100, 90, 1.0, 1e-5), (1000, 100, 70, 2.0, 1e-3), (200, 20, 20, 3.0, 1e-5),
     (50, 50, 10, 0.5, 0.01), (1000, 500, 400, 1.2, 0.0)],
)  # fmt: skip
def test_one_run_p_value_matches_direct_evaluation(
    m: int, r: int, v: int, eps: float, delta: float
) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(
        _p_value_direct(m, r, v, eps, delta), rel=1e-9, abs=1e-15
    )


@pytest.mark.parametrize(("r", "v"), [(10, 10), (100, 90), (100, 60), (500, 400)])
def test_pure_dp_one_run_bound_is_the_logit_of_a_clopper_pearson_bound(r: int, v: int) -> None:
    """With delta = 0, Corollary 5.4 is P[Binomial(r, q) >= v] <= p, solved in closed form by
    the beta quantile: q* = Beta^-1(p; v, r - v + 1), eps* = log(q* / (1 - q*))."""
    q_star = stats.beta.ppf(0.05, v, r - v + 1)
    expected = math.log(q_star / (1 - q_star)) if q_star > 0.5 else 0.0
    got = epsilon_lower_bound_one_run(1000, r, v, 0.0, 0.05)
    assert got == pytest.approx(expected, abs=1e-5)


def test_delta_only_lowers_the_one_run_bound() -> None:
    free = epsilon_lower_bound_one_run(1000, 200, 180, 0.0, 0.05)
    assert epsilon_lower_bound_one_run(1000, 200, 180, 1e-5, 0.05) <= free
    assert epsilon_lower_bound_one_run(1000, 200, 180, 1e-3, 0.05) < free


def test_guess_counts_are_even_and_within_m() -> None:
    assert guess_counts(200) == [10, 20, 40, 60, 100, 150, 200]
    assert all(r % 2 == 0 and 2 <= r <= 7 for r in guess_counts(7))


@pytest.mark.parametrize("mu", [1.0, 3.0])
def test_one_run_bound_is_sound_for_a_mechanism_of_known_epsilon(mu: float) -> None:
    """m canaries, each IN w.p. 1/2; canary i's score is mu * IN_i + N(0, 1): a Gaussian
    mechanism on each canary's own bit, exactly (eps(mu), delta)-DP per canary (Balle & Wang).
    Over 20 seeds the one-run bound never exceeds eps(mu), and at mu = 3 it is near what 1,000
    canaries can show at all (all of the 100 most confident guesses right gives about 4.5)."""
    delta = 1e-5
    true_eps = gaussian_epsilon(mu, delta)
    bounds = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        is_in = rng.random(1000) < 0.5
        scores = mu * is_in + rng.normal(size=1000)
        bounds.append(one_run_audit(scores, is_in, delta=delta)["epsilon_lower_bound"])
    assert max(bounds) <= true_eps
    if mu >= 3.0:
        assert min(bounds) > 3.5
        assert epsilon_lower_bound_one_run(1000, 100, 100, delta, 0.05 / 7) < 5.0


@pytest.mark.slow
def test_one_run_bound_below_claim_under_dp_and_clearly_above_without(tmp_path: Path) -> None:
    """The bundled audit (one run, 200 canaries, offline LiRA) over three seeds: the DP-SGD
    variant's bound never exceeds its claimed epsilon; undefended, the bound is above 1 and
    clearly above the DP run's of the same seed."""
    audit_only = (
        'attacks=[{name="dp_audit", id="audit", params={analysis="one_run", num_canaries=200, '
        'score="lira_offline", num_reference_models=8, delta=1e-5}}]'
    )
    for seed in (0, 1, 2):
        results = _run(tmp_path / str(seed), ["expectations=[]", f"seed={seed}", audit_only])
        plain = results["variants"]["no_defense"]["attacks"]["audit"]["metrics"]
        dp = results["variants"]["dp_sgd_eps1"]
        claimed = dp["privacy"]["epsilon"]
        bound = dp["attacks"]["audit"]["metrics"]["epsilon_lower_bound"]
        assert plain["analysis"] == dp["attacks"]["audit"]["metrics"]["analysis"] == "one_run"
        assert claimed <= 1.0
        assert bound <= claimed
        assert plain["epsilon_lower_bound"] > 1.0
        assert plain["epsilon_lower_bound"] > bound + 1.0
