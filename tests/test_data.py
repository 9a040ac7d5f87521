"""Dataset loaders: shapes, dtypes, determinism, train-only standardization, file errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import datasets as skdatasets
from sklearn.model_selection import train_test_split

from privlab import data
from privlab.data import Dataset, load_dataset
from privlab.errors import PrivlabError, ScenarioError
from privlab.scenario import DataSpec

SMALL_MNIST1D = {"num_samples": 200}

LOADERS = [
    # name, params, input_shape, kind, num_classes
    ("digits", {}, (1, 8, 8), "image", 10),
    ("breast_cancer", {}, (30,), "tabular", 2),
    ("mnist1d", SMALL_MNIST1D, (1, 40), "sequence", 10),
    ("synthetic", {}, (20,), "tabular", 2),
    ("synthetic", {"n_features": 5, "n_informative": 3, "n_classes": 3}, (5,), "tabular", 3),
]


def load(name: str, params: dict[str, Any] | None = None, seed: int = 0, **kw: Any) -> Dataset:
    return load_dataset(DataSpec(name=name, params=params or {}, **kw), seed)


def assert_same(a: Dataset, b: Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def assert_well_formed(d: Dataset) -> None:
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    assert d.x_train.shape == (len(d.y_train), *d.input_shape)
    assert d.x_test.shape == (len(d.y_test), *d.input_shape)
    assert d.y_train.min() >= 0 and d.y_train.max() < d.num_classes


# --------------------------------------------------------------------------- built-in loaders


@pytest.mark.parametrize(("name", "params", "shape", "kind", "classes"), LOADERS)
def test_loader_shapes_dtypes_kinds(
    name: str, params: dict[str, Any], shape: tuple[int, ...], kind: str, classes: int
) -> None:
    d = load(name, params)
    assert_well_formed(d)
    assert (d.name, d.input_shape, d.kind, d.num_classes) == (name, shape, kind, classes)
    assert set(np.unique(d.y_train)) == set(range(classes))
    n = len(d.y_train) + len(d.y_test)
    assert len(d.y_test) == int(np.ceil(0.2 * n))


@pytest.mark.parametrize(("name", "params"), [(row[0], row[1]) for row in LOADERS])
def test_loaders_are_deterministic_per_seed(name: str, params: dict[str, Any]) -> None:
    assert_same(load(name, params, seed=3), load(name, params, seed=3))
    other = load(name, params, seed=4)
    assert not np.array_equal(load(name, params, seed=3).y_train, other.y_train)


def test_test_fraction_is_respected() -> None:
    d = load("digits", test_fraction=0.5)
    assert abs(len(d.y_test) - len(d.y_train)) <= 1


def test_digits_pixels_in_unit_range_and_split_stratified() -> None:
    d = load("digits")
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    train_share = np.bincount(d.y_train) / len(d.y_train)
    test_share = np.bincount(d.y_test) / len(d.y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)


def test_breast_cancer_standardized_with_train_statistics_only() -> None:
    d = load("breast_cancer", seed=7)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1.0, atol=1e-4)
    raw = skdatasets.load_breast_cancer()
    x_tr, x_te, _, _ = train_test_split(
        raw.data, raw.target, test_size=0.2, random_state=7, stratify=raw.target
    )
    expected = (x_te - x_tr.mean(axis=0)) / x_tr.std(axis=0)
    np.testing.assert_allclose(d.x_test, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(d.x_test.mean(axis=0), 0.0, atol=1e-5)


def test_synthetic_is_make_classification_split_and_standardized_exactly() -> None:
    """The loader frees and reuses memory as it goes (10,000 clients' records are 180 MB); the
    records must still be exactly scikit-learn's, split, z-scored with train statistics."""
    d = load("synthetic", {"n_samples": 400, "n_features": 6, "n_informative": 3}, seed=3)
    x, y = skdatasets.make_classification(
        n_samples=400, n_features=6, n_informative=3, n_redundant=0, n_repeated=0,
        n_classes=2, class_sep=1.0, flip_y=0.01, random_state=3,
    )  # fmt: skip
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=3, stratify=y)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    np.testing.assert_array_equal(d.x_train, ((x_tr - mean) / std).astype(np.float32))
    np.testing.assert_array_equal(d.x_test, ((x_te - mean) / std).astype(np.float32))
    np.testing.assert_array_equal(d.y_train, y_tr)
    np.testing.assert_array_equal(d.y_test, y_te)


def test_mnist1d_cached_and_leaves_global_rngs_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    data._mnist1d_arrays.cache_clear()
    a = load("mnist1d", SMALL_MNIST1D, seed=11)
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    b = load("mnist1d", SMALL_MNIST1D, seed=11)
    assert data._mnist1d_arrays.cache_info().hits >= 1
    assert_same(a, b)
    b.x_train[0] = 99.0  # the returned arrays are copies: the cache must stay intact
    assert_same(a, load("mnist1d", SMALL_MNIST1D, seed=11))


def test_huge_seed_is_accepted() -> None:
    assert_well_formed(load("synthetic", {"n_samples": 50}, seed=2**40))


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("digits", {"scale": 2}, "data.params.scale"),
        ("mnist1d", {"num_sample": 100}, "data.params.num_sample"),
        ("mnist1d", {"num_samples": 5}, "data.params.num_samples"),
        ("synthetic", {"n_classes": 1}, "data.params.n_classes"),
        ("synthetic", {"class_sep": "wide"}, "data.params.class_sep"),
        ("synthetic", {"n_features": 4, "n_informative": 6}, "data.params.n_informative"),
        ("synthetic", {"n_classes": 5, "n_informative": 2}, "data.params.n_classes"),
        ("file", {}, "data.params.path"),
        ("file", {"path": "x.npz", "standardise": True}, "data.params.standardise"),
    ],
)
def test_bad_params_name_the_field(name: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load(name, params)
    message = str(info.value)
    assert message.startswith(f"{field}:")
    assert "\n" not in message


def test_unknown_dataset_names_data_name() -> None:
    with pytest.raises(ScenarioError, match=r"^data\.name: unknown dataset 'digit'; did you mean"):
        load_dataset(DataSpec(name="digit"), 0)


def test_dataset_rejects_wrong_dtypes() -> None:
    x = np.zeros((4, 2))
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(PrivlabError, match="float32"):
        Dataset("bad", x, y, x, y, (2,), 2, "tabular")


# --------------------------------------------------------------------------- file loader


def load_file(params: dict[str, Any], seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    return load("file", params, seed=seed, test_fraction=test_fraction)


def test_npz_without_test_split_is_split_and_labels_remapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(40, 3)), y=np.repeat([3, 7], 20))
    d = load_file({"path": str(path)})
    assert_well_formed(d)
    assert (d.kind, d.input_shape, d.num_classes) == ("tabular", (3,), 2)
    assert (len(d.y_train), len(d.y_test)) == (30, 10)
    assert set(np.unique(d.y_train)) == {0, 1}
    assert_same(d, load_file({"path": str(path)}))


def test_npz_with_test_split_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.arange(24, dtype=np.float64).reshape(6, 1, 2, 2)  # 4-D: images
    x_test = -np.arange(8, dtype=np.float64).reshape(2, 1, 2, 2)
    np.savez(path, x=x, y=np.array([0, 1, 2, 0, 1, 2]), x_test=x_test, y_test=np.array([2, 5]))
    d = load_file({"path": str(path)})
    assert_well_formed(d)
    assert (d.kind, d.input_shape, d.num_classes) == ("image", (1, 2, 2), 4)
    np.testing.assert_array_equal(d.x_train, x.astype(np.float32))
    np.testing.assert_array_equal(d.x_test, x_test.astype(np.float32))
    np.testing.assert_array_equal(d.y_test, [2, 3])  # label 5 -> code 3, shared mapping


def test_npz_one_dimensional_x_is_one_feature(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(10.0), y=np.arange(10) % 2)
    d = load_file({"path": str(path)}, test_fraction=0.2)
    assert (d.input_shape, d.kind) == ((1,), "tabular")


def test_npz_sequence_and_standardize(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(5.0, 3.0, size=(30, 2, 7)), y=np.arange(30) % 3)
    d = load_file({"path": str(path), "standardize": True})
    assert (d.kind, d.input_shape) == ("sequence", (2, 7))
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    path.write_text("\n".join(",".join(str(c) for c in row) for row in rows) + "\n")
    return path


def csv_rows(n: int = 20) -> list[list[Any]]:
    return [[i, i * 0.5, -i, i % 2] for i in range(n)]


def test_csv_without_header(tmp_path: Path) -> None:
    d = load_file({"path": str(write_csv(tmp_path / "d.csv", csv_rows()))})
    assert_well_formed(d)
    assert (d.kind, d.input_shape, d.num_classes) == ("tabular", (3,), 2)
    assert len(d.y_train) + len(d.y_test) == 20
    x = np.concatenate([d.x_train, d.x_test])
    y = np.concatenate([d.y_train, d.y_test])
    np.testing.assert_array_equal(y, x[:, 0].astype(np.int64) % 2)


def test_csv_with_header_label_by_index_or_name(tmp_path: Path) -> None:
    rows = [["label", "a", "b"]] + [[i % 3, i, 2 * i] for i in range(30)]
    path = write_csv(tmp_path / "d.csv", rows)
    by_index = load_file({"path": str(path), "label_column": 0})
    by_name = load_file({"path": str(path), "label_column": "label"})
    assert_same(by_index, by_name)
    assert (by_index.input_shape, by_index.num_classes) == ((2,), 3)
    assert len(by_index.y_train) + len(by_index.y_test) == 30


def test_csv_standardize_uses_train_statistics(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", csv_rows(40))
    d = load_file({"path": str(path), "standardize": True})
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1.0, atol=1e-4)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(ScenarioError) as info:
        load_file({"path": str(missing)})
    assert str(info.value) == f"data.params.path: '{missing}' does not exist"


@pytest.mark.parametrize(
    ("filename", "content", "params", "field", "words"),
    [
        ("d.txt", "1,2\n", {}, "data.params.path", "unsupported file type"),
        ("d.csv", "1,2,0\n2,a,1\n", {}, "data.params.path", "non-numeric value 'a' at line 2"),
        ("d.csv", "1,2,0\n2,3\n", {}, "data.params.path", "line 2"),
        ("d.csv", "", {}, "data.params.path", "empty"),
        ("d.csv", "a,b\n", {}, "data.params.path", "no data rows"),
        ("d.csv", "1,0\n2,0\n3,0\n", {}, "data.params.path", "at least 2 classes"),
        ("d.csv", "1,2,0\n2,3,1\n", {"label_column": 5}, "data.params.label_column", "range"),
        ("d.csv", "a,y\n1,0\n", {"label_column": "z"}, "data.params.label_column", "'z'"),
        ("d.npz", "garbage", {}, "data.params.path", "cannot read"),
    ],
)
def test_file_errors_name_the_field(
    tmp_path: Path, filename: str, content: str, params: dict[str, Any], field: str, words: str
) -> None:
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(ScenarioError) as info:
        load_file({"path": str(path), **params})
    message = str(info.value)
    assert message.startswith(f"{field}:") and words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("arrays", "params", "field", "words"),
    [
        ({"x": np.zeros((4, 2))}, {}, "data.params.path", "lacks key(s) y"),
        ({"x": np.zeros((4, 2)), "y": np.arange(3)}, {}, "data.params.path", "one label per row"),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4), "x_test": np.zeros((2, 2))},
            {},
            "data.params.path",
            "only one of x_test, y_test",
        ),
        (
            {
                "x": np.zeros((4, 2)),
                "y": np.arange(4),
                "x_test": np.zeros((2, 3)),
                "y_test": [0, 1],
            },
            {},
            "data.params.path",
            "x_test samples have shape",
        ),
        ({"x": np.full((4, 2), np.nan), "y": np.arange(4)}, {}, "data.params.path", "NaN"),
        ({"x": np.zeros((2, 1, 1, 1, 1)), "y": [0, 1]}, {}, "data.params.path", "5 dims"),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4)},
            {"label_column": 0},
            "data.params.label_column",
            ".csv",
        ),
    ],
)
def test_npz_errors_name_the_field(
    tmp_path: Path, arrays: dict[str, Any], params: dict[str, Any], field: str, words: str
) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(ScenarioError) as info:
        load_file({"path": str(path), **params})
    message = str(info.value)
    assert message.startswith(f"{field}:") and words in message
