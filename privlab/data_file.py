"""The `file` dataset: the user's own .npz (x, y[, x_test, y_test]) or numeric .csv with a
label column, read without pickle and checked field by field, so a bad file gives one line
naming `data.params.path` and what is wrong. The CSV and pretrained-model loaders reuse the
readers."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from privlab.data import (
    KINDS,
    MIN_TEST_RECORDS,
    Dataset,
    _make,
    _Params,
    _split,
    _standardize,
    _validate,
)
from privlab.errors import ScenarioError
from privlab.scenario_source import describe_path


class FileParams(_Params):
    path: str
    label_column: int | str = -1
    """CSV only: column index (negative counts from the end) or header name."""
    standardize: bool = False


def load_file(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """The user's own .npz (x, y[, x_test, y_test]) or numeric .csv with a label column."""
    p = _validate(FileParams, params)
    path = Path(p.path).expanduser()
    if not path.is_file():
        raise ScenarioError(f"data.params.path: '{p.path}' {describe_path(path)}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if "label_column" in p.model_fields_set:
            raise ScenarioError("data.params.label_column: only applies to .csv files")
        x, y, x_test, y_test = _read_npz(path)
    elif suffix == ".csv":
        x, y = _read_csv(path, p.label_column)
        x_test = y_test = None
    else:
        raise ScenarioError(
            f"data.params.path: unsupported file type '{path.suffix}' (allowed: .npz, .csv)"
        )
    return _file_dataset(
        x, y, x_test, y_test, standardize=p.standardize, test_fraction=test_fraction, seed=seed
    )


def _file_dataset(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    *,
    standardize: bool,
    test_fraction: float,
    seed: int,
) -> Dataset:
    """Remap labels to 0..K-1 over both splits, split if needed, optionally standardize."""
    n_train = len(y)
    all_y = y if y_test is None else np.concatenate([y, y_test])
    classes, codes = np.unique(all_y, return_inverse=True)
    if len(classes) < 2:
        raise ScenarioError(
            f"data.params.path: labels have {len(classes)} distinct value(s); "
            "need at least 2 classes"
        )
    y, y_test = codes[:n_train], (None if y_test is None else codes[n_train:])
    if x_test is None or y_test is None:
        x, x_test, y, y_test = _split(x, y, test_fraction, seed)
    elif len(y_test) < MIN_TEST_RECORDS:
        raise ScenarioError(
            f"data.params.path: x_test has {len(y_test)} record(s); at least "
            f"{MIN_TEST_RECORDS} are needed"
        )
    if standardize:
        x, x_test = _standardize(x.astype(np.float64), x_test.astype(np.float64))
    return _make("file", x, y, x_test, y_test, len(classes))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ScenarioError(
            f"data.params.path: cannot read '{path}' as .npz: {_first_line(exc)}"
        ) from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ScenarioError(
            f"data.params.path: '{path.name}' lacks key(s) {', '.join(missing)} "
            f"(has: {', '.join(sorted(arrays)) or 'none'}; "
            "expected x, y and optionally x_test, y_test)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ScenarioError(
            f"data.params.path: '{path.name}' has only one of x_test, y_test (give both or neither)"
        )
    x, y = _check_xy(arrays["x"], arrays["y"], "x", "y", path)
    if "x_test" not in arrays:
        return x, y, None, None
    x_test, y_test = _check_xy(arrays["x_test"], arrays["y_test"], "x_test", "y_test", path)
    if x_test.shape[1:] != x.shape[1:]:
        raise ScenarioError(
            f"data.params.path: x_test samples have shape {x_test.shape[1:]} "
            f"but x samples have {x.shape[1:]}"
        )
    return x, y, x_test, y_test


def _check_xy(
    x: np.ndarray, y: np.ndarray, xname: str, yname: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric, finite x of 1-4 dims (1 -> one feature) and one label per row."""
    where = f"data.params.path: '{path.name}'"
    if np.iscomplexobj(x):
        raise ScenarioError(
            f"{where}: {xname} is complex ({x.dtype}); give real features "
            "(e.g. real and imaginary parts as separate features)"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ScenarioError(f"{where}: {xname} must be numeric, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim not in KINDS:
        raise ScenarioError(
            f"{where}: {xname} has {x.ndim} dims; allowed 1-2 (tabular), 3 (C, L), 4 (C, H, W)"
        )
    if x.size == 0:
        raise ScenarioError(
            f"{where}: {xname} is empty (shape {x.shape}); need at least one record "
            "with at least one feature"
        )
    if not np.isfinite(x.astype(np.float64)).all():
        raise ScenarioError(f"{where}: {xname} contains NaN or infinite values")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise ScenarioError(
            f"{where}: {yname} must hold one label per row of {xname} "
            f"({len(x)}), got shape {y.shape}"
        )
    _check_labels(y, yname, where)
    return x, y


def _check_labels(y: np.ndarray, yname: str, where: str) -> None:
    """Labels are integers, bools or strings; float labels must be finite whole numbers."""
    if np.iscomplexobj(y):
        raise ScenarioError(f"{where}: {yname} is complex ({y.dtype}); labels must be real")
    if y.dtype.kind in "biuUS":
        return
    if y.dtype.kind != "f":
        raise ScenarioError(
            f"{where}: {yname} must hold integer or string labels, got dtype {y.dtype}"
        )
    if not np.isfinite(y).all():
        raise ScenarioError(f"{where}: {yname} contains NaN or infinite labels")
    if not np.all(y == np.round(y)):
        raise ScenarioError(
            f"{where}: {yname} holds fractional values (e.g. {y[y != np.round(y)][0]}); "
            "labels must be whole numbers or strings"
        )


def _read_csv(path: Path, label_column: int | str) -> tuple[np.ndarray, np.ndarray]:
    """Numeric CSV; a first row that is not all numbers is taken as a header."""
    rows, lines = _csv_rows(path)
    if not rows:
        raise ScenarioError(f"data.params.path: '{path.name}' is empty")
    header = None if is_numeric_row(rows[0]) else rows[0]
    skip = 1 if header is not None else 0
    body, lines = rows[skip:], lines[skip:]
    width = len(rows[0])
    if not body:
        raise ScenarioError(f"data.params.path: '{path.name}' has a header but no data rows")
    if width < 2:
        raise ScenarioError(
            f"data.params.path: '{path.name}' has {width} column; need features and a label"
        )
    col = column_index(label_column, header, width, path, "label_column", "header")
    values = _parse_rows(body, lines, width, path)
    y = values[:, col]
    x = np.delete(values, col, axis=1)
    if not np.isfinite(x).all():
        raise ScenarioError(f"data.params.path: '{path.name}' contains NaN or infinite features")
    if not np.isfinite(y).all():
        raise ScenarioError(f"data.params.label_column: '{path.name}' has NaN or infinite labels")
    return x, y


def _csv_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """Non-blank rows with surrounding spaces stripped, and their 1-based line numbers."""
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            for row in reader:
                cells = [c.strip() for c in row]
                if any(cells):
                    rows.append(cells)
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ScenarioError(
            f"data.params.path: cannot read '{path.name}' as CSV: {_first_line(exc)}"
        ) from None
    return rows, lines


def is_numeric_row(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


def column_index(
    ref: int | str, names: list[str] | None, width: int, path: Path, field: str, names_are: str
) -> int:
    """A column by name (among `names`, which `names_are` describes in the error: "header",
    "first row") or by index (negative counts from the end), as `data.params.<field>`."""
    if isinstance(ref, str):
        if names is None or ref not in names:
            have = f"{names_are}: {', '.join(names)}" if names else f"no {names_are} row"
            raise ScenarioError(
                f"data.params.{field}: no column named '{ref}' in '{path.name}' ({have})"
            )
        return names.index(ref)
    if not -width <= ref < width:
        raise ScenarioError(
            f"data.params.{field}: {ref} is out of range for '{path.name}' with {width} "
            f"columns (allowed: {-width}..{width - 1})"
        )
    return ref % width


def _parse_rows(body: list[list[str]], lines: list[int], width: int, path: Path) -> np.ndarray:
    """Float matrix; on failure the error points at the first bad line and column (1-based)."""
    if all(len(row) == width for row in body):
        try:
            return np.array(body, dtype=np.float64)
        except ValueError:
            pass
    out = np.empty((len(body), width), dtype=np.float64)
    for i, (row, line) in enumerate(zip(body, lines, strict=True)):
        if len(row) != width:
            raise ScenarioError(
                f"data.params.path: line {line} of '{path.name}' has {len(row)} "
                f"columns, expected {width}"
            )
        for j, cell in enumerate(row):
            try:
                out[i, j] = float(cell)
            except ValueError:
                raise ScenarioError(
                    f"data.params.path: non-numeric value '{cell}' at line {line}, "
                    f"column {j + 1} of '{path.name}' (CSV files must be numeric)"
                ) from None
    return out
