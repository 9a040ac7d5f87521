"""Records of a data file in file order, and their train/test split into a `Dataset`.

The CSV and image-folder loaders read a file into `Records` (x, integer labels, the text each
label stands for, an optional group per record) and then split them like every other loader.
The `pretrained` topology reads the same `Records` unsplit, because its membership file holds
row numbers of the data file. Torch is not imported.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np

from privlab.data import Dataset, _make, _split, _standardize
from privlab.errors import ScenarioError


@dataclass(frozen=True)
class Records:
    """The records of one data file, in the file's order."""

    x: np.ndarray
    y: np.ndarray
    """Class index per record, 0..K-1."""
    class_names: tuple[str, ...] | None = None
    groups: np.ndarray | None = None
    """Group per record (str), e.g. a demographic column, for per-group accuracy."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.y.max()) + 1


def encode_labels(raw: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Text labels -> class indices by the sorted distinct labels (numerically when all are
    numbers, so "10" follows "9"); the sorted labels are the class names."""
    distinct = sorted(set(raw))
    with contextlib.suppress(ValueError):
        distinct = sorted(distinct, key=float)
    if len(distinct) < 2:
        raise ScenarioError(
            f"data.params.label_column: labels have {len(distinct)} distinct value(s); "
            "need at least 2 classes"
        )
    index = {name: i for i, name in enumerate(distinct)}
    return np.array([index[v] for v in raw], dtype=np.int64), tuple(distinct)


def split_records(
    name: str, records: Records, *, test_fraction: float, seed: int, standardize: bool
) -> Dataset:
    """Train/test split as the built-in loaders do (stratified when possible); groups follow
    their records; standardization uses train statistics only."""
    rows = np.arange(len(records.y))
    tr, te, _, _ = _split(rows[:, None], records.y, test_fraction, seed)
    tr, te = tr[:, 0], te[:, 0]
    x_tr, x_te = records.x[tr], records.x[te]
    if standardize:
        x_tr, x_te = _standardize(x_tr.astype(np.float64), x_te.astype(np.float64))
    dataset = _make(name, x_tr, records.y[tr], x_te, records.y[te], records.num_classes)
    dataset = replace(dataset, class_names=records.class_names)
    if records.groups is None:
        return dataset
    codes, names = encode_groups(records.groups)
    return replace(dataset, groups_train=codes[tr], groups_test=codes[te], group_names=names)


def encode_groups(groups: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group names -> int64 indices by sorted name (Dataset.groups_* hold the indices)."""
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes.astype(np.int64), tuple(str(n) for n in names)
