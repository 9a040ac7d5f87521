"""Metrics as pure functions, each tested against a reference implementation.

Membership inference follows the vocabulary of ML Privacy Meter and Carlini et al. 2022
("Membership Inference Attacks From First Principles"): AUC, TPR at 1%, 0.1% and 0% FPR (with
the number of non-members, which bounds the FPR resolution), best-threshold balanced accuracy,
and membership advantage (Yeom et al. 2018: TPR - FPR).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FPR_LEVELS = {"1pct": 0.01, "0.1pct": 0.001, "0pct": 0.0}


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


def membership_metrics(
    scores: np.ndarray, is_member: np.ndarray, threshold: float | None = None
) -> tuple[dict[str, float | int], dict[str, Any]]:
    """Metrics and ROC artifact for membership scores (higher = more likely member)."""
    from sklearn.metrics import roc_auc_score, roc_curve  # on use: keeps start-up light

    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(is_member, dtype=bool)
    if not np.all(np.isfinite(scores)):
        scores = np.nan_to_num(scores, nan=-np.inf)
        scores = np.clip(scores, np.finfo(np.float64).min, np.finfo(np.float64).max)
    fpr, tpr, _ = roc_curve(truth, scores)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    metrics: dict[str, float | int] = {
        "auc": float(roc_auc_score(truth, scores)),
        **{f"tpr_at_{k}_fpr": tpr_at_fpr(fpr, tpr, v) for k, v in FPR_LEVELS.items()},
        "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
        "advantage": float(np.max(tpr - fpr)),
        "n_members": n_pos,
        "n_nonmembers": n_neg,
    }
    if threshold is not None:
        pred = scores >= threshold
        t_tpr = float(pred[truth].mean())
        t_fpr = float(pred[~truth].mean())
        metrics["threshold_tpr"] = t_tpr
        metrics["threshold_fpr"] = t_fpr
        metrics["threshold_balanced_accuracy"] = (t_tpr + 1 - t_fpr) / 2
        metrics["threshold_advantage"] = t_tpr - t_fpr
    return metrics, {"roc": downsample_roc(fpr, tpr)}
