"""Membership metrics against scikit-learn and first principles."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

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
