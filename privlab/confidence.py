"""Confidence intervals for membership metrics, as pure functions (95%, two-sided by default).

- AUC: DeLong, DeLong & Clarke-Pearson 1988 ("Comparing the areas under two or more correlated
  receiver operating characteristic curves", Biometrics): the variance of the Mann-Whitney AUC
  from its structural components V10 (one per positive) and V01 (one per negative), computed
  with midranks as in Sun & Xu 2014 ("Fast implementation of DeLong's algorithm"), then a
  normal interval clipped to [0, 1].
- TPR at a fixed FPR: Clopper-Pearson 1934 exact binomial interval on the members flagged at
  the threshold the FPR budget selects (the threshold is taken as given: the interval covers
  the TPR of that decision rule, not the uncertainty of where the rule sits on the FPR axis).
- Advantage (max TPR - FPR, Yeom et al. 2018) and balanced accuracy: stratified percentile
  bootstrap (members and non-members resampled separately) through scipy.stats.bootstrap, with
  a fixed seed so results stay deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 1000


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact binomial interval for k successes out of n (the Beta-quantile form)."""
    if n <= 0:
        return 0.0, 1.0
    lo = 0.0 if k <= 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def delong_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components: V10_i = mean_j psi(X_i, Y_j), V01_j = mean_i psi(X_i, Y_j),
    psi = 1 if X > Y, 1/2 on a tie, 0 otherwise (X: positive scores, Y: negative scores)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    m, n = len(pos), len(neg)
    all_ranks = stats.rankdata(np.concatenate([pos, neg]))  # midranks: ties count 1/2
    r_pos = stats.rankdata(pos)
    r_neg = stats.rankdata(neg)
    v10 = (all_ranks[:m] - r_pos) / n
    v01 = 1.0 - (all_ranks[m:] - r_neg) / m
    return v10, v01


def delong_variance(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(AUC, its DeLong variance S10 / m + S01 / n)."""
    v10, v01 = delong_components(pos, neg)
    m, n = len(v10), len(v01)
    auc = float(v10.mean())
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    return auc, s10 / m + s01 / n


def delong_ci(pos: np.ndarray, neg: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    auc, var = delong_variance(pos, neg)
    half = float(stats.norm.ppf(1 - alpha / 2)) * np.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def max_advantage(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """max over thresholds t of TPR(t) - FPR(t), for "member iff score >= t" (every t)."""
    pos = np.sort(np.asarray(pos, dtype=np.float64), axis=axis)
    neg = np.sort(np.asarray(neg, dtype=np.float64), axis=axis)
    pos, neg = np.moveaxis(pos, axis, -1), np.moveaxis(neg, axis, -1)
    cand = np.concatenate([pos, neg], axis=-1)  # thresholds at every observed score
    m, n = pos.shape[-1], neg.shape[-1]
    flat_pos = pos.reshape(-1, m)
    flat_neg = neg.reshape(-1, n)
    flat_c = cand.reshape(-1, m + n)
    out = np.empty(len(flat_c))
    for i in range(len(flat_c)):
        tpr = 1.0 - np.searchsorted(flat_pos[i], flat_c[i], side="left") / m
        fpr = 1.0 - np.searchsorted(flat_neg[i], flat_c[i], side="left") / n
        out[i] = max(0.0, float(np.max(tpr - fpr)))  # t = +inf gives 0
    return out.reshape(cand.shape[:-1])


def advantage_ci(
    pos: np.ndarray, neg: np.ndarray, *, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Stratified percentile bootstrap of the best-threshold advantage."""
    if len(pos) < 2 or len(neg) < 2:
        return 0.0, 1.0
    res = stats.bootstrap(
        (np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)),
        max_advantage,
        n_resamples=BOOTSTRAP_RESAMPLES,
        vectorized=True,
        batch=50,
        paired=False,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return float(lo), float(hi)
