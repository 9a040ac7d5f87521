"""Membership metrics against scikit-learn and first principles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, mannwhitneyu
from sklearn.metrics import roc_auc_score, roc_curve

from privlab.confidence import clopper_pearson, delong_ci, delong_variance, max_advantage
from privlab.metrics import membership_metrics, tpr_at_fpr


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 200), st.integers(2, 200))
def test_auc_matches_sklearn_and_mann_whitney(seed: int, n_pos: int, n_neg: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0.5, 1, n_pos), rng.normal(0, 1, n_neg)]).round(1)
    truth = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    metrics, _ = membership_metrics(scores, truth)
    assert np.isclose(metrics["auc"], roc_auc_score(truth, scores))
    u = mannwhitneyu(scores[truth], scores[~truth]).statistic
    assert np.isclose(metrics["auc"], u / (n_pos * n_neg))
    assert metrics["n_members"] == n_pos and metrics["n_nonmembers"] == n_neg


def test_perfect_and_inverted_scores() -> None:
    truth = np.array([True] * 50 + [False] * 50)
    good, _ = membership_metrics(truth.astype(float), truth)
    assert good["auc"] == 1.0 and good["tpr_at_0pct_fpr"] == 1.0 and good["advantage"] == 1.0
    bad, _ = membership_metrics(-truth.astype(float), truth)
    assert bad["auc"] == 0.0 and bad["tpr_at_1pct_fpr"] == 0.0


def test_tpr_at_fpr_takes_best_tpr_within_budget() -> None:
    fpr = np.array([0.0, 0.0, 0.005, 0.02, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.0) == 0.1
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.5) == 0.6


def test_threshold_metrics_follow_the_rule() -> None:
    scores = np.array([3.0, 2.0, 1.0, 0.0])
    truth = np.array([True, False, True, False])
    m, _ = membership_metrics(scores, truth, threshold=1.5)
    assert m["threshold_tpr"] == 0.5 and m["threshold_fpr"] == 0.5
    assert m["threshold_advantage"] == 0.0


def test_roc_artifact_is_monotone_and_bounded() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=5000)
    truth = rng.random(5000) < 0.5
    _, art = membership_metrics(scores, truth)
    fpr, tpr = np.array(art["roc"]["fpr"]), np.array(art["roc"]["tpr"])
    assert len(fpr) <= 300 and fpr[0] == 0 and fpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def _brute_tpr_at_fpr(scores: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Every threshold "member iff score >= t", t over every observed score and +inf."""
    best = 0.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        pred = scores >= t
        if pred[~truth].mean() <= level + 1e-12:
            best = max(best, float(pred[truth].mean()))
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.integers(1, 300), st.integers(1, 6))
def test_tpr_at_fpr_with_ties_matches_brute_force(seed: int, n_pos: int, n_neg: int, k: int):
    """Heavily tied scores (few distinct values): every threshold counts, none dropped."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.integers(0, k + 2, n_pos), rng.integers(0, k, n_neg)]) * 1.0
    truth = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    metrics, _ = membership_metrics(scores, truth)
    for key, level in {"1pct": 0.01, "0.1pct": 0.001, "0pct": 0.0}.items():
        assert np.isclose(metrics[f"tpr_at_{key}_fpr"], _brute_tpr_at_fpr(scores, truth, level))
    for level in (0.05, 0.2, 0.5):  # the roc points directly, at budgets with collinear points
        fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
        assert np.isclose(tpr_at_fpr(fpr, tpr, level), _brute_tpr_at_fpr(scores, truth, level))


def test_collinear_tie_point_is_not_dropped() -> None:
    """A case where sklearn's default drop_intermediate=True loses the best point in budget."""
    truth = np.array([True] * 3 + [False] * 400)
    scores = np.array([4.0, 3.0, 2.0] + [4.0, 4.0, 3.0, 3.0, 2.0, 2.0] + [1.0] * 394)
    # (FP, TP) at thresholds 4, 3, 2 are (2, 1), (4, 2), (6, 3): collinear, the middle one
    # (FPR exactly 1%) is pruned by the default drop_intermediate=True
    fpr_d, tpr_d, _ = roc_curve(truth, scores)
    metrics, _ = membership_metrics(scores, truth)
    assert metrics["tpr_at_1pct_fpr"] == _brute_tpr_at_fpr(scores, truth, 0.01) == 2 / 3
    assert tpr_at_fpr(fpr_d, tpr_d, 0.01) == 1 / 3  # the old reading under-reported


@pytest.mark.parametrize(("k", "n"), [(0, 20), (1, 20), (7, 20), (20, 20), (13, 1000), (500, 999)])
def test_clopper_pearson_matches_scipy_binomtest(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert np.allclose(clopper_pearson(k, n), (ref.low, ref.high), atol=1e-9)


def test_tpr_ci_is_clopper_pearson_on_the_members_at_the_chosen_threshold() -> None:
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(1.5, 1, 400), rng.normal(0, 1, 1500)])
    truth = np.concatenate([np.ones(400, bool), np.zeros(1500, bool)])
    m, _ = membership_metrics(scores, truth)
    t = np.sort(scores[~truth])[::-1][15]  # above the 16th highest: FPR 15/1500 = 1%
    k = int((scores[truth] > t).sum())
    assert m["tpr_at_1pct_fpr"] == k / 400
    ref = binomtest(k, 400).proportion_ci(method="exact")
    assert np.allclose(m["tpr_at_1pct_fpr_ci"], [ref.low, ref.high], atol=1e-6)


def _brute_delong(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return float(psi.mean()), float(var)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 80), st.integers(2, 80))
def test_delong_variance_matches_brute_force_structural_components(seed, n_pos, n_neg):
    rng = np.random.default_rng(seed)
    pos = rng.normal(0.7, 1, n_pos).round(1)  # rounding makes ties
    neg = rng.normal(0, 1, n_neg).round(1)
    auc, var = delong_variance(pos, neg)
    ref_auc, ref_var = _brute_delong(pos, neg)
    assert np.isclose(auc, ref_auc) and np.isclose(var, ref_var)
    lo, hi = delong_ci(pos, neg)
    half = 1.959963984540054 * np.sqrt(ref_var)
    assert np.isclose(lo, max(0, ref_auc - half)) and np.isclose(hi, min(1, ref_auc + half))


def test_delong_agrees_with_bootstrap_variance_of_the_auc() -> None:
    """Independent check of the DeLong formula: the bootstrap variance of roc_auc_score."""
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(0.8, 1, 300), rng.normal(0, 1, 500)
    _, var = delong_variance(pos, neg)
    p, n = rng.choice(pos, (3000, 300)), rng.choice(neg, (3000, 500))
    boot = mannwhitneyu(p, n, axis=1).statistic / (300 * 500)
    assert np.isclose(var, np.var(boot), rtol=0.1)


def test_max_advantage_matches_brute_force_over_thresholds() -> None:
    rng = np.random.default_rng(5)
    pos, neg = rng.integers(0, 8, 50) * 1.0, rng.integers(0, 6, 70) * 1.0
    brute = max((pos >= t).mean() - (neg >= t).mean() for t in np.concatenate([pos, neg, [np.inf]]))
    assert np.isclose(max_advantage(pos, neg), brute)
    truth = np.r_[np.ones(50, bool), np.zeros(70, bool)]
    m, _ = membership_metrics(np.r_[pos, neg], truth)
    assert np.isclose(m["advantage"], brute)
    lo, hi = m["advantage_ci"]
    assert lo <= m["advantage"] <= hi and hi - lo > 0.05
    assert np.allclose(m["balanced_accuracy_ci"], [(1 + lo) / 2, (1 + hi) / 2], atol=1e-6)


def test_baselines_gains_resolution_and_leak_flag() -> None:
    rng = np.random.default_rng(6)
    truth = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    chance, _ = membership_metrics(rng.normal(size=1000), truth)
    assert chance["auc_baseline"] == 0.5 and chance["tpr_at_1pct_fpr_baseline"] == 0.01
    assert chance["tpr_at_0.1pct_fpr_baseline"] == 0.001
    assert np.isclose(chance["auc_gain"], chance["auc"] - 0.5, atol=1e-6)
    assert chance["fpr_resolution"] == 0.002
    assert chance["tpr_at_0.1pct_fpr_below_resolution"] is True
    assert chance["tpr_at_1pct_fpr_below_resolution"] is False
    assert chance["leak_detected"] is False
    assert chance["auc_ci"][0] < 0.5 < chance["auc_ci"][1]
    leaky, _ = membership_metrics(np.r_[rng.normal(1, 1, 500), rng.normal(0, 1, 500)], truth)
    assert leaky["leak_detected"] is True and leaky["auc_ci"][0] > 0.5
    big = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    m, _ = membership_metrics(rng.normal(size=2000), big)
    assert m["tpr_at_0.1pct_fpr_below_resolution"] is False  # 1/1000 resolves 0.1%
