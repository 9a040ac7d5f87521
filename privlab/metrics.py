"""Metrics as pure functions, each tested against a reference implementation.

Membership inference follows the vocabulary of ML Privacy Meter and Carlini et al. 2022
("Membership Inference Attacks From First Principles"): AUC, TPR at 1%, 0.1% and 0% FPR (with
the number of non-members, which bounds the FPR resolution), best-threshold balanced accuracy,
and membership advantage (Yeom et al. 2018: TPR - FPR). The ROC is read at every threshold
(scikit-learn's roc_curve with drop_intermediate=False): dropping collinear points, its default,
can remove the best point under an FPR budget when scores tie.

Every headline metric `m` comes with `m_ci` (95%, methods in `CI_METHODS`, see
privlab.confidence), its know-nothing baseline `m_baseline` (a random guess: AUC 0.5, TPR at FPR
X equal to X, advantage 0, balanced accuracy 0.5) and `m_gain = m - m_baseline`. With n
non-members the FPR axis moves in steps of `fpr_resolution = 1/n`: a TPR at an FPR level
below that step is really the TPR at 0% FPR and is marked `..._below_resolution: true`.
`leak_detected` is true when a confidence interval excludes chance: the AUC's lower bound is
above 0.5, or the lower bound of a TPR at a resolvable nonzero FPR level X is above X.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FPR_LEVELS = {"1pct": 0.01, "0.1pct": 0.001, "0pct": 0.0}
CI_METHODS = {
    "auc": "DeLong",
    **{f"tpr_at_{k}_fpr": "Clopper-Pearson" for k in FPR_LEVELS},
    "advantage": "stratified percentile bootstrap",
    "balanced_accuracy": "stratified percentile bootstrap",
}
"""How each membership metric's `_ci` is computed (the attack result's `ci_methods`)."""
METRIC_NAMES = frozenset(
    {
        *CI_METHODS,
        *(f"tpr_at_{k}_fpr_below_resolution" for k, v in FPR_LEVELS.items() if v > 0),
        "fpr_resolution",
        "leak_detected",
        "n_members",
        "n_nonmembers",
        "threshold_tpr",
        "threshold_fpr",
        "threshold_balanced_accuracy",
        "threshold_advantage",
    }
)
"""Every metric `membership_metrics` can report, besides the `_ci`/`_baseline`/`_gain`
companions (an attack's `metric_names` vocabulary)."""


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Highest TPR whose FPR does not exceed `level` (as in the LiRA reference code)."""
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 256) -> dict[str, list]:
    """Keep the curve's shape on log axes: all low-FPR points plus evenly spaced others."""
    n = len(fpr)
    if n <= max_points:
        keep = np.arange(n)
    else:
        log_grid = np.unique(
            np.searchsorted(fpr, np.geomspace(max(fpr[fpr > 0].min(), 1e-6), 1, max_points // 2))
        )
        lin = np.linspace(0, n - 1, max_points // 2).astype(int)
        keep = np.unique(np.concatenate([[0, n - 1], log_grid.clip(0, n - 1), lin]))
    return {
        "fpr": [round(float(v), 6) for v in fpr[keep]],
        "tpr": [round(float(v), 6) for v in tpr[keep]],
    }


def _r(v: float) -> float:
    return round(float(v), 6)


def _ci(lo: float, hi: float) -> list[float]:
    return [_r(lo), _r(hi)]


def membership_metrics(
    scores: np.ndarray, is_member: np.ndarray, threshold: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and ROC artifact for membership scores (higher = more likely member)."""
    from sklearn.metrics import roc_auc_score, roc_curve  # on use: keeps start-up light

    from privlab.confidence import advantage_ci, clopper_pearson, delong_ci  # scipy: where used

    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(is_member, dtype=bool)
    if not np.all(np.isfinite(scores)):
        scores = np.nan_to_num(scores, nan=-np.inf)
        scores = np.clip(scores, np.finfo(np.float64).min, np.finfo(np.float64).max)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    pos, neg = scores[truth], scores[~truth]
    resolution = 1.0 / n_neg
    auc = float(roc_auc_score(truth, scores))
    adv = float(np.max(tpr - fpr))
    adv_lo, adv_hi = advantage_ci(pos, neg)
    metrics: dict[str, Any] = {
        "auc": auc,
        "auc_ci": _ci(*delong_ci(pos, neg)),
        "auc_baseline": 0.5,
        "auc_gain": _r(auc - 0.5),
    }
    leak = metrics["auc_ci"][0] > 0.5
    for key, level in FPR_LEVELS.items():
        name = f"tpr_at_{key}_fpr"
        value = tpr_at_fpr(fpr, tpr, level)
        flagged = round(value * n_pos)  # members above the threshold the budget chose
        lo, hi = clopper_pearson(flagged, n_pos)
        below = 0 < level < resolution
        metrics[name] = value
        metrics[f"{name}_ci"] = _ci(lo, hi)
        metrics[f"{name}_baseline"] = level
        metrics[f"{name}_gain"] = _r(value - level)
        if level > 0:
            metrics[f"{name}_below_resolution"] = below
            leak = leak or (not below and lo > level)
    metrics.update(
        {
            "balanced_accuracy": (1 + adv) / 2,
            "balanced_accuracy_ci": _ci((1 + adv_lo) / 2, (1 + adv_hi) / 2),
            "balanced_accuracy_baseline": 0.5,
            "balanced_accuracy_gain": _r(adv / 2),
            "advantage": adv,
            "advantage_ci": _ci(adv_lo, adv_hi),
            "advantage_baseline": 0.0,
            "advantage_gain": _r(adv),
            "fpr_resolution": _r(resolution),
            "leak_detected": bool(leak),
            "n_members": n_pos,
            "n_nonmembers": n_neg,
        }
    )
    if threshold is not None:
        pred = scores >= threshold
        t_tpr = float(pred[truth].mean())
        t_fpr = float(pred[~truth].mean())
        metrics["threshold_tpr"] = t_tpr
        metrics["threshold_fpr"] = t_fpr
        metrics["threshold_balanced_accuracy"] = (t_tpr + 1 - t_fpr) / 2
        metrics["threshold_advantage"] = t_tpr - t_fpr
    return metrics, {"roc": downsample_roc(fpr, tpr)}
