"""Dataset loaders: small, local, deterministic datasets as float32/int64 numpy arrays.

Nothing here downloads: scikit-learn's bundled datasets, MNIST-1D generated locally, synthetic
data and the user's own files. Each loader validates its `data.params` with a pydantic model so
a typo gives a one-line ScenarioError naming `data.params.<field>`. Torch is not imported.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from privlab import registry
from privlab.errors import PrivlabError, ScenarioError
from privlab.scenario import DataSpec, validate_params

KINDS = {2: "tabular", 3: "sequence", 4: "image"}
"""x.ndim (with the sample axis) -> kind."""
MIN_TEST_RECORDS = 2
"""Smallest test set accepted, and never fewer records than classes: a test set that cannot
hold every class (one record makes every accuracy 0 or 1) measures nothing about the model."""


def _min_test(y: np.ndarray) -> int:
    return max(MIN_TEST_RECORDS, len(np.unique(y)))


@dataclass(frozen=True)
class Dataset:
    """A train pool (partitioned across clients) and a global held-out test set."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    kind: str
    groups_train: np.ndarray | None = None
    """Optional int64 group (e.g. clinic) of each training record: partition `by_group`, and
    per-group accuracy (fairness)."""
    groups_test: np.ndarray | None = None
    group_names: tuple[str, ...] | None = None
    """The name of each group index (a CSV's group column, the synthetic minority)."""
    class_names: tuple[str, ...] | None = None
    """The label each class index stands for (text labels of a CSV, image-folder names)."""
    x_public: np.ndarray | None = None
    y_public: np.ndarray | None = None
    """Optional public labelled records, disjoint from the clients' and drawn from another
    distribution (e.g. studio images): every party, the server included, holds them."""

    def __post_init__(self) -> None:
        """Catch a plugin loader's mistakes here rather than deep inside training."""
        problem = _dataset_problem(self)
        if problem:
            raise PrivlabError(f"dataset '{self.name}': {problem}")


def _dataset_problem(d: Dataset) -> str | None:
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        if x.dtype != np.float32 or y.dtype != np.int64:
            return f"{split} arrays must be float32/int64, got {x.dtype}/{y.dtype}"
        if x.shape[1:] != d.input_shape or y.shape != (len(x),):
            return f"{split} shapes {x.shape}/{y.shape} do not match input_shape {d.input_shape}"
        if len(y) and (y.min() < 0 or y.max() >= d.num_classes):
            return f"{split} labels must lie in 0..{d.num_classes - 1}"
    for split, g, y in (("train", d.groups_train, d.y_train), ("test", d.groups_test, d.y_test)):
        if g is not None and (g.dtype != np.int64 or g.shape != y.shape or (g < 0).any()):
            return f"{split} groups must be non-negative int64 of shape {y.shape}"
    if d.kind not in KINDS.values():
        return f"kind must be one of {', '.join(KINDS.values())}, got '{d.kind}'"
    return None


def load_dataset(spec: DataSpec, seed: int) -> Dataset:
    """Look the loader up by `data.name` and call it with the scenario's seed."""
    loader = registry.datasets.get(spec.name, "data.name")
    return loader(dict(spec.params), test_fraction=spec.test_fraction, seed=seed)


# --------------------------------------------------------------------------- helpers


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


P = TypeVar("P", bound=_Params)


def _validate(model: type[P], params: dict[str, Any]) -> P:
    return cast(P, validate_params(model, params, "data.params"))


def _no_params(name: str, params: dict[str, Any]) -> None:
    """Reject any params for loaders without settings (pydantic would list no allowed fields)."""
    if params:
        key = sorted(params)[0]
        raise ScenarioError(f"data.params.{key}: unknown field (dataset '{name}' takes no params)")


def _random_state(seed: int) -> int:
    """scikit-learn and numpy's legacy seeding accept only 32-bit seeds; scenario seeds do not."""
    return seed % 2**32


def skdatasets() -> Any:
    """sklearn.datasets, imported on first use (about 1 s: not for `import privlab.runner`)."""
    from sklearn import datasets

    return datasets


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split, stratified whenever every class can appear on both sides."""
    n = len(y)
    n_test = int(np.ceil(test_fraction * n))
    if n < 2 or n_test >= n:
        raise ScenarioError(
            f"data.test_fraction: {test_fraction} of {n} samples leaves no training samples"
        )
    need = _min_test(y)
    if n_test < need:
        raise ScenarioError(
            f"data.test_fraction: {test_fraction} of {n} samples makes a test set of {n_test} "
            f"record(s); at least {need} are needed (one per class, and at least "
            f"{MIN_TEST_RECORDS}): raise it to {need / n:.2g} or more"
        )
    counts = np.unique(y, return_counts=True)[1]
    stratifiable = counts.min() >= 2 and min(n_test, n - n_test) >= len(counts)
    from sklearn.model_selection import train_test_split  # scikit-learn only when loading

    x_tr, x_te, y_tr, y_te = train_test_split(
        x,
        y,
        test_size=test_fraction,
        random_state=_random_state(seed),
        stratify=y if stratifiable else None,
    )
    return x_tr, x_te, y_tr, y_te


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature z-score with train statistics only, so the test set leaks nothing."""
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    # (x - mean) / std with one new array per input and no temporaries (10,000 clients'
    # records are 180 MB): the same arithmetic, the same bits.
    out = []
    for x in (x_train, x_test):
        z = np.subtract(x, mean)
        z /= std
        out.append(z)
    return out[0], out[1]


def _make(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> Dataset:
    """Cast to the canonical dtypes and derive shape and kind from x."""
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=x_test,
        y_test=np.asarray(y_test, dtype=np.int64),
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        num_classes=int(num_classes),
        kind=KINDS[x_train.ndim],
    )


# --------------------------------------------------------------------------- built-in loaders


def load_digits(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """scikit-learn's 8x8 digits as (1, 8, 8) images in [0, 1]."""
    _no_params("digits", params)
    raw = skdatasets().load_digits()
    x = (raw.images / 16.0)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = _split(x, raw.target, test_fraction, seed)
    return _make("digits", x_tr, y_tr, x_te, y_te, 10)


def load_breast_cancer(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """Wisconsin breast cancer, 30 features standardized with train statistics."""
    _no_params("breast_cancer", params)
    raw = skdatasets().load_breast_cancer()
    x_tr, x_te, y_tr, y_te = _split(raw.data, raw.target, test_fraction, seed)
    x_tr, x_te = _standardize(x_tr, x_te)
    return _make("breast_cancer", x_tr, y_tr, x_te, y_te, 2)


class Mnist1dParams(_Params):
    num_samples: Annotated[int, Field(ge=10)] = 4000
    """Rounded down to a multiple of 10 by the generator (equal samples per class)."""


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D once per (num_samples, seed); the generator takes seconds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = _random_state(seed)
    # make_dataset reseeds the global `random` and `np.random` generators: restore them after.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist1d(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally, (1, 40) signals, re-split by test_fraction."""
    p = _validate(Mnist1dParams, params)
    x, y = _mnist1d_arrays(p.num_samples, seed)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed)
    return _make("mnist1d", x_tr, y_tr, x_te, y_te, 10)


class SyntheticParams(_Params):
    n_samples: Annotated[int, Field(ge=4)] = 1000
    n_features: Annotated[int, Field(ge=1)] = 20
    n_informative: Annotated[int, Field(ge=1)] = 10
    n_classes: Annotated[int, Field(ge=2)] = 2
    class_sep: Annotated[float, Field(gt=0)] = 1.0
    flip_y: Annotated[float, Field(ge=0, le=1)] = 0.01
    minority_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    """Share of records in a minority group with its own feature distribution (fairness)."""
    minority_shift: float = 3.0
    """Offset of the minority's features from the majority's (in feature standard deviations)."""


def _check_synthetic(p: SyntheticParams) -> None:
    """make_classification's own errors do not name scenario fields: check first."""
    if p.n_informative > p.n_features:
        raise ScenarioError(
            f"data.params.n_informative: {p.n_informative} informative features but only "
            f"n_features = {p.n_features} (must be <= n_features)"
        )
    if p.n_classes * 2 > 2**p.n_informative:
        raise ScenarioError(
            f"data.params.n_classes: {p.n_classes} classes need n_informative >= "
            f"{int(np.ceil(np.log2(p.n_classes * 2)))} (2 clusters per class on hypercube corners)"
        )


def load_synthetic(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """make_classification with no redundant features (the rest is pure noise), standardized."""
    p = _validate(SyntheticParams, params)
    _check_synthetic(p)
    if p.minority_fraction > 0:
        from privlab.data_minority import load_with_minority

        return load_with_minority(p, test_fraction=test_fraction, seed=seed)
    x, y = skdatasets().make_classification(
        n_samples=p.n_samples,
        n_features=p.n_features,
        n_informative=p.n_informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=p.n_classes,
        class_sep=p.class_sep,
        flip_y=p.flip_y,
        random_state=_random_state(seed),
    )
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed)
    del x, y  # the split holds copies: free the generated arrays before standardizing
    x_tr, x_te = _standardize(x_tr, x_te)
    return _make("synthetic", x_tr, y_tr, x_te, y_te, p.n_classes)
