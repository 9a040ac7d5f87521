"""The one-run audit bound of Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1)
Training Run" (NeurIPS), Corollary 5.4 / Appendix D.

Setting: m canaries, each included in the (single) training run independently with probability
1/2. The auditor guesses IN or OUT for r of them (abstaining on the rest) and gets v right. If
training is (eps, delta)-DP, the number of correct guesses is stochastically dominated up to a
delta term by Binomial(r, q), q = e^eps / (1 + e^eps) (eps-DP randomized response):

    P[V >= v] <= beta + 2 m delta alpha,
    beta  = P[Binomial(r, q) >= v],
    alpha = max_{i = 1..v} P[v - i <= Binomial(r, q) < v] / i.

The lower bound at significance p is the largest eps whose p-value is still below p: with
probability at least 1 - p the true epsilon is not below it. Unlike Clopper-Pearson over canaries
of one run (valid only when trials are independent runs), this needs no independence between
the canaries: it is the paper's point.

Guesses: the auditor ranks canaries by score and guesses IN for the k highest and OUT for the k
lowest (r = 2k), abstaining in between. Several r are tried; the significance is split evenly
over them (Bonferroni), so the reported maximum keeps its confidence.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats

EPS_MAX = 50.0
DEFAULT_GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Corollary 5.4: P[>= v correct of r guesses] under (eps, delta)-DP with m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    # P[v - i <= B < v] = P[B >= v - i] - P[B >= v]
    window = stats.binom.sf(v - i - 1, r, q) - beta
    alpha = float(np.max(window / i))
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound_one_run(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """Largest eps rejected at `significance` by p_value (0 when even eps = 0 is not)."""
    if not 0 < significance < 1:
        raise ValueError("significance must be in (0, 1)")

    def gap(eps: float) -> float:
        return p_value(m, r, v, eps, delta) - significance

    if gap(0.0) >= 0:
        return 0.0
    if gap(EPS_MAX) < 0:
        return EPS_MAX
    return float(optimize.brentq(gap, 0.0, EPS_MAX, xtol=1e-6, rtol=1e-9))


def guess_counts(m: int, fractions: tuple[float, ...] = DEFAULT_GUESS_FRACTIONS) -> list[int]:
    """The even guess counts r tried: fractions of m, at least 2 and at most m."""
    out = sorted({min(m - m % 2, max(2, 2 * round(f * m / 2))) for f in fractions})
    return [r for r in out if r >= 2]


def one_run_audit(
    scores: np.ndarray,
    is_in: np.ndarray,
    *,
    delta: float,
    alpha: float = 0.05,
    fractions: tuple[float, ...] = DEFAULT_GUESS_FRACTIONS,
) -> dict[str, float | int]:
    """Steinke et al.'s bound from one run's canary scores (higher = more likely IN).

    For each r in guess_counts: guess IN for the r/2 top scores and OUT for the r/2 bottom ones,
    count the correct guesses v, bound at significance alpha / len(counts); report the best."""
    scores = np.asarray(scores, dtype=np.float64)
    is_in = np.asarray(is_in, dtype=bool)
    m = len(scores)
    order = np.argsort(-scores, kind="stable")  # highest first
    counts = guess_counts(m, fractions)
    level = alpha / len(counts)
    best = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0}
    for r in counts:
        k = r // 2
        correct = int(is_in[order[:k]].sum() + (~is_in[order[m - k :]]).sum())
        eps = epsilon_lower_bound_one_run(m, r, correct, delta, level)
        if eps > best["epsilon_lower_bound"] or best["guesses"] == 0:
            best = {"epsilon_lower_bound": eps, "guesses": r, "correct": correct}
    best["canaries"] = m
    best["guess_counts_tried"] = len(counts)
    best["significance_per_count"] = level
    best["accuracy"] = best["correct"] / best["guesses"] if best["guesses"] else 0.0
    return best
