"""Image reconstruction metrics as pure, batched functions: MSE, PSNR, SSIM, matching.

SSIM follows Wang et al. 2004 exactly as scikit-image's `structural_similarity` computes it by
default (7x7 uniform window, sample covariance, K1=0.01, K2=0.03, reflect padding, mean over
the window-valid interior, channels averaged), so the two agree to float precision (tested).
Reconstructions of a batch come back in an arbitrary order, so they are paired with the
originals by the assignment that minimises total MSE (Hungarian method, as breaching does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.optimize import linear_sum_assignment


def _as_batch(x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) float64 from (B, H, W) or (B, C, H, W)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (B, H, W) or (B, C, H, W), got {x.shape}")
    return x


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error per image of two equally shaped batches."""
    a, b = _as_batch(a), _as_batch(b)
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio per image in dB (inf for identical images)."""
    err = mse(a, b)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / err)


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Mean structural similarity per image (scikit-image's default computation)."""
    a, b = _as_batch(a), _as_batch(b)
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"images {a.shape[-2:]} are smaller than the {win_size}x{win_size} window")
    size = (1, 1, win_size, win_size)
    n = win_size**2
    cov_norm = n / (n - 1)  # sample covariance, as skimage's use_sample_covariance=True

    def filt(x: np.ndarray) -> np.ndarray:
        return uniform_filter(x, size=size, mode="reflect")

    ux, uy = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - ux * ux)
    vy = cov_norm * (filt(b * b) - uy * uy)
    vxy = cov_norm * (filt(a * b) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    inner = s[:, :, pad : s.shape[2] - pad, pad : s.shape[3] - pad]
    return inner.reshape(len(a), a.shape[1], -1).mean(axis=2).mean(axis=1)


def match(reconstructions: np.ndarray, originals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal pairing (min total MSE): rec[i[j]] is matched to orig[o[j]].

    Rectangular inputs are allowed: min(len(rec), len(orig)) pairs are returned.
    """
    r, o = _as_batch(reconstructions), _as_batch(originals)
    rf, of = r.reshape(len(r), -1), o.reshape(len(o), -1)
    cost = ((rf[:, None, :] - of[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return rows, cols


def matched_metrics(
    reconstructions: np.ndarray,
    originals: np.ndarray,
    data_range: float = 1.0,
) -> dict[str, Any]:
    """Per-pair MSE, PSNR, SSIM after optimal matching, plus the matching itself."""
    rows, cols = match(reconstructions, originals)
    rec, orig = _as_batch(reconstructions)[rows], _as_batch(originals)[cols]
    return {
        "rows": rows,
        "cols": cols,
        "mse": mse(rec, orig),
        "psnr": psnr(rec, orig, data_range),
        "ssim": ssim(rec, orig, data_range) if min(orig.shape[-2:]) >= 7 else None,
    }


def label_accuracy(predicted: np.ndarray, true: np.ndarray) -> float:
    """Share of true labels recovered, as multisets (order-free, as for a batch's labels)."""
    p = np.asarray(predicted).astype(np.int64).ravel()
    t = np.asarray(true).astype(np.int64).ravel()
    if len(t) == 0:
        return float("nan")
    size = int(max(p.max(initial=-1), t.max(initial=-1)) + 1)
    common = np.minimum(np.bincount(p, minlength=size), np.bincount(t, minlength=size)).sum()
    return float(common / len(t))


PSNR_CAP = 100.0
"""PSNR of an exact reconstruction is infinite; results.json stores at most this (dB)."""


def _images(x: np.ndarray) -> np.ndarray:
    """Records as (B, C, H, W): images stay, sequences and tabular rows become 1-pixel rows."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        return x
    return x.reshape(len(x), 1, 1, -1)


def grade_attempt(
    images: np.ndarray,
    labels: np.ndarray | None,
    true_x: np.ndarray,
    true_y: np.ndarray,
    value_range: tuple[float, float] = (0.0, 1.0),
    max_images: int = 8,
) -> dict[str, Any]:
    """Metrics and a display artifact for one reconstruction attempt against its truth.

    Reconstructions are clipped to the data's value range (an attacker knows it), matched to
    the originals (Hungarian, min MSE), and PSNR uses that range as its peak. The per-pair
    scores stay under "pairs" (popped by `grade_reconstructions`, which pools them).
    """
    lo, hi = value_range
    rec = np.clip(_images(images), lo, hi)
    orig = _images(true_x)
    m = matched_metrics(rec, orig, hi - lo)
    psnrs = np.minimum(m["psnr"], PSNR_CAP)
    out: dict[str, Any] = {
        "psnr": float(psnrs.mean()),
        "psnr_max": float(psnrs.max()),
        "mse": float(m["mse"].mean()),
        "ssim": None if m["ssim"] is None else float(m["ssim"].mean()),
        "n_images": len(rec),
        "n_records": len(orig),
        "pairs": {"psnr": psnrs, "mse": m["mse"], "ssim": m["ssim"]},
    }
    if labels is not None:
        out["label_accuracy"] = label_accuracy(labels, true_y)
    shown = min(max_images, len(m["rows"]))
    out["display"] = {
        "shape": list(orig.shape[1:]),
        "range": [lo, hi],
        "reconstructions": [np.round(rec[i].ravel(), 3).tolist() for i in m["rows"][:shown]],
        "originals": [np.round(orig[j].ravel(), 3).tolist() for j in m["cols"][:shown]],
        "psnr": [round(float(v), 2) for v in psnrs[:shown]],
        "true_labels": [int(true_y[j]) for j in m["cols"][:shown]],
    }
    return out


def prior_guess(population_x: np.ndarray, population_y: np.ndarray) -> tuple[np.ndarray, int]:
    """The know-nothing reconstruction: the population's mean record and its majority class
    (what an adversary holding only the population data guesses for any record)."""
    x = np.asarray(population_x, dtype=np.float64)
    classes, counts = np.unique(np.asarray(population_y), return_counts=True)
    return x.mean(axis=0), int(classes[np.argmax(counts)])


def _pooled(graded: list[dict[str, Any]], key: str) -> np.ndarray | None:
    parts = [g["pairs"][key] for g in graded if g["pairs"][key] is not None]
    return np.concatenate(parts) if len(parts) == len(graded) and parts else None


def grade_reconstructions(
    attempts: list[Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    client_records: dict[int, np.ndarray],
    max_shown: int = 4,
    prior: tuple[np.ndarray, int] | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The referee's grading: each attempt against the union of its clients' true records.

    `prior` is the attack's data-free guess (`prior_guess`: the population mean record and
    majority class); it is graded exactly like each attempt (same number of images, same
    matching), giving `m_baseline` and `m_gain` for every metric. PSNR, SSIM and MSE are
    means over all matched records of all attempts (bootstrap CIs over those records); label
    accuracy is the pooled share of recovered labels (Clopper-Pearson). Returns summary
    metrics, artifacts (per-attempt metrics and up to `max_shown` attempts' images) and the
    CI method per metric.
    """
    from privlab.baseline_stats import scored, with_share_baseline

    lo, hi = float(np.min(x_train)), float(np.max(x_train))
    graded, base = [], []
    for a in attempts:
        idx = np.concatenate([client_records[k] for k in a.clients])
        g = grade_attempt(a.images, a.labels, x_train[idx], y_train[idx], (lo, hi))
        g.update(round=a.round, clients=[int(k) for k in a.clients], source=a.source)
        if prior is not None:
            guess = np.broadcast_to(prior[0], np.shape(a.images)).astype(np.float64)
            guess_y = None if a.labels is None else np.full(len(a.labels), prior[1])
            b = grade_attempt(guess, guess_y, x_train[idx], y_train[idx], (lo, hi))
            base.append(b)
            g["psnr_baseline"] = round(b["psnr"], 6)
        for key in ("psnr", "psnr_max", "ssim", "mse", "label_accuracy"):
            if isinstance(g.get(key), float):
                g[key] = round(g[key], 6)
        graded.append(g)
    metrics: dict[str, Any] = {"n_attempts": len(graded)}
    methods: dict[str, str] = {}
    if graded:
        unit = "reconstructed records"
        for key in ("psnr", "ssim", "mse"):
            vals = _pooled(graded, key)
            if vals is None:
                continue
            ref = _pooled(base, key) if base else None
            if ref is None:
                metrics[key] = float(vals.mean())
                continue
            out, how = scored(key, vals, ref, unit=unit, seed=seed)
            metrics.update(out)
            methods.update(how)
        metrics["psnr_max"] = float(max(g["psnr_max"] for g in graded))
        metrics["success_rate_30db"] = float(np.mean([g["psnr"] >= 30 for g in graded]))
        if base:
            rate = float(np.mean([b["psnr"] >= 30 for b in base]))
            metrics["success_rate_30db_baseline"] = rate
            metrics["success_rate_30db_gain"] = metrics["success_rate_30db"] - rate
        labelled = [(g, b) for g, b in zip(graded, base or graded, strict=True)]
        labelled = [(g, b) for g, b in labelled if g.get("label_accuracy") is not None]
        if labelled:
            total = sum(g["n_records"] for g, _ in labelled)
            hits = round(sum(g["label_accuracy"] * g["n_records"] for g, _ in labelled))
            if base:
                prior_hits = sum(b["label_accuracy"] * b["n_records"] for _, b in labelled)
                out, how = with_share_baseline("label_accuracy", hits, total, prior_hits / total)
                metrics.update(out)
                methods.update(how)
            else:
                metrics["label_accuracy"] = hits / total
        metrics["aggregate_share"] = float(np.mean([g["source"] == "aggregate" for g in graded]))
        metrics["records_per_attempt"] = float(np.mean([g["n_records"] for g in graded]))
    artifacts = {
        "attempts": [
            {k: v for k, v in g.items() if k not in ("display", "pairs")}
            | ({"display": g["display"]} if i < max_shown else {})
            for i, g in enumerate(graded)
        ]
    }
    return metrics, artifacts, methods
