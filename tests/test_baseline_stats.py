"""Baselines and confidence intervals against closed forms and textbook intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privlab.baseline_stats import (
    bootstrap_mean_ci,
    clopper_pearson,
    majority_share,
    scored,
    with_share_baseline,
)


def test_bootstrap_ci_of_the_mean_agrees_with_the_t_interval() -> None:
    """For n = 400 roughly normal values the percentile bootstrap interval of the mean is
    within a few percent of the t interval mean +- t_0.975 * s / sqrt(n)."""
    v = np.random.default_rng(0).normal(2.0, 3.0, 400)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    lo, hi = bootstrap_mean_ci(v)
    assert lo == pytest.approx(v.mean() - half, abs=0.08 * half)
    assert hi == pytest.approx(v.mean() + half, abs=0.08 * half)
    assert bootstrap_mean_ci(v) == bootstrap_mean_ci(v)  # seeded


def test_bootstrap_ci_degenerate_inputs() -> None:
    assert bootstrap_mean_ci(np.array([1.0])) is None
    assert bootstrap_mean_ci(np.full(5, 3.0)) == [3.0, 3.0]


def test_clopper_pearson_closed_forms() -> None:
    """0 of n: upper = 1 - 0.025^(1/n); n of n: lower = 0.025^(1/n)."""
    n = 37
    assert clopper_pearson(0, n) == pytest.approx([0.0, 1 - 0.025 ** (1 / n)])
    assert clopper_pearson(n, n) == pytest.approx([0.025 ** (1 / n), 1.0])
    k = 12  # general case: Beta quantiles
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1))
    assert hi == pytest.approx(stats.beta.ppf(0.975, k + 1, n - k))


def test_scored_gain_is_paired_and_share_baseline_is_the_prior() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(10, 1, 50)
    att = base + 5 + rng.normal(0, 0.1, 50)  # a constant gain, tiny noise
    out, methods = scored("psnr", att, base, unit="records")
    assert out["psnr_gain"] == pytest.approx(att.mean() - base.mean())
    lo, hi = out["psnr_gain_ci"]
    assert hi - lo < 0.1  # paired: the per-record noise of the baseline cancels
    assert set(methods) == {"psnr", "psnr_gain"}
    out, _ = with_share_baseline("accuracy", 30, 40, majority_share(np.array([0] * 3 + [1])))
    assert out["accuracy_baseline"] == 0.75 and out["accuracy_gain"] == pytest.approx(0.0)


def test_cluster_share_ci_widens_for_correlated_trials() -> None:
    """Trials grouped in clusters that succeed or fail together carry less information than
    independent ones: the cluster bootstrap is wider than Clopper-Pearson on the same share,
    and with singleton clusters it is close to it."""
    from privlab.baseline_stats import cluster_share_ci

    hits = np.array([10] * 12 + [0] * 8)  # 20 batches of 10, all-or-nothing
    sizes = np.full(20, 10)
    lo, hi = cluster_share_ci(hits, sizes)
    cp_lo, cp_hi = clopper_pearson(120, 200)
    assert lo < cp_lo and hi > cp_hi and lo < 0.6 < hi
    single = np.array([1] * 120 + [0] * 80)
    lo1, hi1 = cluster_share_ci(single, np.ones(200, dtype=int))
    assert lo1 == pytest.approx(cp_lo, abs=0.02) and hi1 == pytest.approx(cp_hi, abs=0.02)
