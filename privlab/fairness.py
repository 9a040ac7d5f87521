"""Who is served worse: accuracy per client and per group, and the gap between best and worst.

The source brief names discrimination as a risk when the participating devices do not represent
minorities; Bagdasaryan et al. 2019 ("Differential Privacy Has Disparate Impact on Model
Accuracy", NeurIPS) show that DP-SGD's clipping and noise cost an under-represented group more
accuracy than the majority. privlab therefore reports, per variant under `utility`:
- `per_client_accuracy` {"0": f, ...}: the released model on each client's held-out records
  (its own distribution, never trained on), and `client_accuracy_gap` = best - worst;
- `per_group_accuracy` {"<group>": f}: on the test records of each group (a group column of
  the data, the synthetic minority, a data set's clinics; keyed by `Dataset.group_names`),
  with `per_group_n`, a Clopper-Pearson 95% interval `per_group_accuracy_ci`, the know-nothing
  baseline `per_group_accuracy_baseline` (the group's majority-class share), and
  `group_accuracy_gap` = best - worst with a bootstrap 95% interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from privlab.data import Dataset
from privlab.partition import ClientData
from privlab.training import blockwise_logits

BOOTSTRAP = 1000


def correct(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None
) -> np.ndarray:
    """Per-record correctness of the model's arg-max prediction (on those `rows` of x, y)."""
    if rows is not None:
        y = y.index_select(0, torch.as_tensor(rows, dtype=torch.long))
    if len(y) == 0:
        return np.zeros(0, dtype=bool)
    pred = torch.cat([logits.argmax(dim=1) for logits in blockwise_logits(model, x, rows)])
    return (pred == y).numpy()


def clopper_pearson(k: int, n: int) -> list[float]:
    from scipy import stats  # here: importing scipy.stats takes 0.4 s, most runs never need it

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return [round(float(ci.low), 6), round(float(ci.high), 6)]


def gap_interval(hits: list[np.ndarray], seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of max - min accuracy, resampling records within each part.

    Resampling n records with replacement from a part with k hits gives Binomial(n, k/n)
    hits, exactly; so each part's resampled accuracies are drawn at once as binomials instead
    of BOOTSTRAP index draws per part (the same distribution, at 10,000 clients in
    milliseconds)."""
    n = np.array([len(h) for h in hits])
    k = np.array([int(np.count_nonzero(h)) for h in hits])
    return _binomial_gap_interval(n, k, seed)


def _binomial_gap_interval(n: np.ndarray, k: np.ndarray, seed: int) -> list[float]:
    """gap_interval from each part's record count n and hit count k."""
    rng = np.random.default_rng([seed, 59])
    pairs, counts = np.unique(np.stack([n, k], axis=1), axis=0, return_counts=True)
    if grouped_pays(pairs[:, 0], len(n)):
        gaps = _grouped_gaps(pairs, counts, rng)
    else:
        accs = rng.binomial(n, k / n, size=(BOOTSTRAP, len(n))) / n
        gaps = accs.max(axis=1) - accs.min(axis=1)
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def grouped_pays(group_sizes: np.ndarray, parts: int) -> bool:
    """Whether the per-group sampler is the cheaper: its vectorised work grows with the
    groups' support sizes (n + 1 each), the binomial draws (about 80 ns each here) with the
    parts; measured at 100 clients of 20 records: 1.1 ms against 7.8 ms."""
    return int((group_sizes + 1).sum()) < 16 * parts


def _grouped_gaps(
    pairs: np.ndarray, counts: np.ndarray, rng: np.random.Generator, draws: int = BOOTSTRAP
) -> np.ndarray:
    """`draws` samples of max - min accuracy when many parts share one (n, k), exactly, at a
    cost per distinct (n, k) instead of per part (at 1,000 clients: a few dozen groups instead
    of a million binomials). The g parts of a group are g independent Binomial(n, k/n) hit
    counts with CDF F; their largest M has P(M <= v) = F(v)^g, and given M = v their smallest
    m has P(m >= a, M = v) = (F(v) - F(a-1))^g - (F(v-1) - F(a-1))^g: M is drawn by inverting
    the first, then m by inverting the second divided by P(M = v)."""
    top = np.full(draws, -np.inf)
    bottom = np.full(draws, np.inf)
    ns, ks = pairs[:, :1], pairs[:, 1:]
    from scipy import stats

    pmfs = stats.binom.pmf(np.arange(int(ns.max()) + 1)[None, :], ns, ks / ns)  # one call
    for (n, _), g, pmf in zip(pairs.tolist(), counts.tolist(), pmfs, strict=True):
        cdf = np.minimum(np.cumsum(pmf[: n + 1]), 1.0)
        cdf[-1] = 1.0
        below = np.concatenate([[0.0], cdf[:-1]])  # F(v - 1)
        # S[v, a] = P(m >= a | M = v) for a = 0..n (0 where a > v).
        gap = np.clip(cdf[:, None] - below[None, :], 0.0, None)  # F(v) - F(a - 1)
        gap_below = np.clip(below[:, None] - below[None, :], 0.0, None)  # F(v - 1) - F(a - 1)
        joint = np.where(np.tri(n + 1, dtype=bool), gap**g - gap_below**g, 0.0)
        p_max = cdf**g - below**g
        survival = joint / np.where(p_max > 0, p_max, 1.0)[:, None]
        largest = np.searchsorted(cdf**g, 1.0 - rng.random(draws), side="left")
        largest = np.minimum(largest, n)
        u = 1.0 - rng.random(draws)  # in (0, 1]
        smallest = (survival[largest, 1:] >= u[:, None]).sum(axis=1)
        top = np.maximum(top, largest / n)
        bottom = np.minimum(bottom, smallest / n)
    return top - bottom


def fairness_metrics(
    model: torch.nn.Module,
    dataset: Dataset,
    clients: list[ClientData],
    tensors: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The utility keys above (and `class_names` when the data names its classes)."""
    out: dict[str, Any] = {}
    # One forward pass over every client's held-out records, then split per client.
    sizes = [len(c.holdout_idx) for c in clients]
    idx = torch.as_tensor(
        np.concatenate([np.asarray(c.holdout_idx, dtype=np.int64) for c in clients] or [[]])
    ).long()
    all_hits = correct(model, tensors["x_train"], tensors["y_train"], idx)
    # Hits per client in one pass (a client without held-out records is not scored).
    bounds = np.cumsum([0, *sizes])
    running = np.concatenate([[0], np.cumsum(all_hits, dtype=np.int64)])
    n, k = np.diff(bounds), running[bounds[1:]] - running[bounds[:-1]]
    scored = n > 0
    n, k = n[scored], k[scored]
    ids = [str(c.client_id) for c, keep in zip(clients, scored, strict=True) if keep]
    accs = [round(a, 6) for a in (k / n).tolist()]
    out["per_client_accuracy"] = dict(zip(ids, accs, strict=True))
    if len(ids) >= 2:
        out["client_accuracy_gap"] = round(max(accs) - min(accs), 6)
        out["client_accuracy_gap_ci"] = _binomial_gap_interval(n, k, 0)
    if dataset.groups_test is not None:
        out.update(_group_metrics(model, dataset))
    if dataset.class_names is not None:
        out["class_names"] = list(dataset.class_names)
    return out


def _group_metrics(model: torch.nn.Module, dataset: Dataset) -> dict[str, Any]:
    assert dataset.groups_test is not None
    hits = correct(model, torch.as_tensor(dataset.x_test), torch.as_tensor(dataset.y_test))
    codes = np.asarray(dataset.groups_test)
    names = dataset.group_names
    acc, n, ci, base, parts = {}, {}, {}, {}, []
    for code in np.unique(codes).tolist():
        g = names[code] if names is not None and code < len(names) else str(code)
        mask = codes == code
        h = hits[mask]
        acc[g] = round(float(h.mean()), 6)
        n[g] = int(mask.sum())
        ci[g] = clopper_pearson(int(h.sum()), len(h))
        base[g] = round(float(np.bincount(dataset.y_test[mask]).max() / mask.sum()), 6)
        parts.append(h)
    out: dict[str, Any] = {
        "per_group_accuracy": acc,
        "per_group_n": n,
        "per_group_accuracy_ci": ci,
        "per_group_accuracy_baseline": base,
    }
    if len(parts) >= 2:
        out["group_accuracy_gap"] = round(max(acc.values()) - min(acc.values()), 6)
        out["group_accuracy_gap_ci"] = gap_interval(parts)
    return out
