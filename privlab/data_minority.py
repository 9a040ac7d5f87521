"""A synthetic minority group: few records with their own feature distribution (fairness).

`synthetic` with `minority_fraction > 0`: the majority comes from scikit-learn's
make_classification as usual; the minority (that share of `n_samples`, at least 2 per class)
from a second make_classification with another random state, so its classes sit on other
hypercube corners under another random linear map, shifted by `minority_shift` in every
feature. A model must learn the minority's own decision rule from few records: the setting in
which Bagdasaryan et al. 2019 ("Differential Privacy Has Disparate Impact on Model Accuracy")
find that DP-SGD's clipping and noise cost the under-represented group most. Records carry the
group (0 "majority", 1 "minority") for per-group accuracy; the split is stratified by class and
group, and features are standardized with training statistics.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from sklearn import datasets as skdatasets

from privlab.data import Dataset, _make, _random_state, _split, _standardize


def _classification(p: Any, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return skdatasets.make_classification(
        n_samples=n,
        n_features=p.n_features,
        n_informative=p.n_informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=p.n_classes,
        class_sep=p.class_sep,
        flip_y=p.flip_y,
        random_state=_random_state(seed),
    )


def load_with_minority(p: Any, *, test_fraction: float, seed: int) -> Dataset:
    n_minor = max(2 * p.n_classes, round(p.minority_fraction * p.n_samples))
    n_major = p.n_samples - n_minor
    x_major, y_major = _classification(p, n_major, seed)
    x_minor, y_minor = _classification(p, n_minor, seed + 7919)
    x_minor = x_minor + p.minority_shift
    x = np.concatenate([x_major, x_minor])
    y = np.concatenate([y_major, y_minor]).astype(np.int64)
    groups = np.array([0] * n_major + [1] * n_minor, dtype=np.int64)
    rows = np.arange(len(y))
    strata = y * 2 + groups
    tr, te, _, _ = _split(rows[:, None], strata, test_fraction, seed)
    tr, te = tr[:, 0], te[:, 0]
    x_tr, x_te = _standardize(x[tr], x[te])
    dataset = _make("synthetic", x_tr, y[tr], x_te, y[te], p.n_classes)
    return replace(
        dataset,
        groups_train=groups[tr],
        groups_test=groups[te],
        group_names=("majority", "minority"),
    )
