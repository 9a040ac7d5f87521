"""A metric beside its know-nothing baseline, with 95% confidence intervals.

Conventions shared by every attack family: for a metric `m`, `m_baseline` is the score of a
data-free guess (chance, the class prior, the population mean image) graded exactly like the
attack, `m_gain = m - m_baseline`, `m_ci` and `m_gain_ci` are two-sided 95% intervals. The
intervals are percentile bootstraps over the graded units (records or batches; the gain's is a
paired bootstrap of per-unit differences), Clopper-Pearson for a share of independent trials,
or a cluster bootstrap for a share whose trials are grouped (batches).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

BOOTSTRAP = "percentile bootstrap over {unit} (2000 resamples)"
PAIRED = "paired percentile bootstrap over {unit} (2000 resamples)"
CLOPPER_PEARSON = "Clopper-Pearson (exact binomial)"


def bootstrap_mean_ci(
    values: np.ndarray, *, seed: int = 0, n_resamples: int = 2000
) -> list[float] | None:
    """95% percentile-bootstrap interval of the mean (None below two finite values)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None
    if np.ptp(v) == 0:  # every resample has the same mean
        return [float(v[0]), float(v[0])]
    res = stats.bootstrap(
        (v,),
        np.mean,
        confidence_level=0.95,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng([seed, 97]),
    )
    ci = res.confidence_interval
    return [float(ci.low), float(ci.high)]


def clopper_pearson(successes: int, trials: int) -> list[float] | None:
    """Exact 95% binomial interval of a share (None without trials)."""
    if trials <= 0:
        return None
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(0.95, method="exact")
    return [float(ci.low), float(ci.high)]


def scored(
    name: str,
    attack: np.ndarray,
    baseline: np.ndarray,
    *,
    unit: str,
    seed: int = 0,
) -> tuple[dict[str, float | list[float]], dict[str, str]]:
    """`name`, `name_baseline`, `name_gain` (means over units) and their intervals.

    `attack` and `baseline` hold one score per graded unit, paired (the same records graded
    once against the attack's output and once against the data-free guess).
    """
    a = np.asarray(attack, dtype=np.float64).ravel()
    b = np.asarray(baseline, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{name}: {a.shape} attack scores against {b.shape} baseline scores")
    out: dict[str, float | list[float]] = {
        name: float(a.mean()),
        f"{name}_baseline": float(b.mean()),
        f"{name}_gain": float(a.mean() - b.mean()),
    }
    methods: dict[str, str] = {}
    ci = bootstrap_mean_ci(a, seed=seed)
    if ci is not None:
        out[f"{name}_ci"] = ci
        methods[name] = BOOTSTRAP.format(unit=unit)
    gain_ci = bootstrap_mean_ci(a - b, seed=seed + 1)
    if gain_ci is not None:
        out[f"{name}_gain_ci"] = gain_ci
        methods[f"{name}_gain"] = PAIRED.format(unit=unit)
    return out, methods


def with_share_baseline(
    name: str, successes: int, trials: int, baseline: float
) -> tuple[dict[str, float | list[float]], dict[str, str]]:
    """A share (accuracy) of independent trials beside a fixed baseline (the class prior)."""
    value = successes / trials if trials else float("nan")
    out: dict[str, float | list[float]] = {
        name: value,
        f"{name}_baseline": float(baseline),
        f"{name}_gain": value - float(baseline),
    }
    methods: dict[str, str] = {}
    ci = clopper_pearson(successes, trials)
    if ci is not None:
        out[f"{name}_ci"] = ci
        methods[name] = CLOPPER_PEARSON
    return out, methods


def cluster_share_ci(
    hits: np.ndarray, sizes: np.ndarray, *, seed: int = 0, n_resamples: int = 2000
) -> list[float] | None:
    """95% percentile-bootstrap interval of a pooled share sum(hits) / sum(sizes), resampling
    whole clusters (e.g. batches), for trials that are not independent within a cluster."""
    h = np.asarray(hits, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    if len(h) < 2 or n.sum() <= 0:
        return None
    rng = np.random.default_rng([seed, 89])
    idx = rng.integers(0, len(h), size=(n_resamples, len(h)))
    shares = h[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1e-300)
    lo, hi = np.percentile(shares, [2.5, 97.5])
    return [float(lo), float(hi)]


def majority_share(labels: np.ndarray) -> float:
    """Accuracy of always guessing the most frequent label (the class-prior baseline)."""
    y = np.asarray(labels).ravel()
    if len(y) == 0:
        return float("nan")
    return float(np.unique(y, return_counts=True)[1].max() / len(y))
