"""CSV tables with text class labels and an optional group column (data set `csv`).

Why a loader of its own: real tables name their classes ("benign", "malignant") and often carry
a column that is not a feature but says who a record is about (a clinic, a sex, an age band),
which privlab uses to report accuracy per group. Labels are mapped to classes by their sorted
distinct values (the mapping is kept as `Dataset.class_names` and written to results.json);
every other column except the group column must be numeric.

Params (`data.params`):
- `path`: the .csv file (relative to the scenario file);
- `label_column`: index (negative counts from the end) or header name; default the last;
- `group_column`: index or header name of a group column (default none);
- `standardize`: z-score features with training statistics (default false);
- `header`: "auto" (a first row whose feature cells are not all numbers is a header), true, false.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from privlab.data import Dataset, _Params, _validate
from privlab.data_file import _csv_rows, column_index, is_numeric_row
from privlab.data_records import Records, encode_labels, split_records
from privlab.errors import ScenarioError


class CSVParams(_Params):
    path: str
    label_column: int | str = -1
    group_column: int | str | None = None
    standardize: bool = False
    header: Literal["auto"] | bool = "auto"


def load_csv(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """A CSV with numeric features, a (text or numeric) label column and an optional group."""
    p = _validate(CSVParams, params)
    records = read_csv_records(p)
    return split_records(
        "csv", records, test_fraction=test_fraction, seed=seed, standardize=p.standardize
    )


def read_csv_records(p: CSVParams | dict[str, Any]) -> Records:
    """The file's rows in order (the row numbers a membership file refers to: 0 = first data
    row after any header)."""
    if isinstance(p, dict):
        p = _validate(CSVParams, p)
    path = Path(p.path).expanduser()
    if not path.is_file():
        raise ScenarioError(f"data.params.path: file '{p.path}' does not exist")
    rows, lines = _csv_rows(path)
    if not rows:
        raise ScenarioError(f"data.params.path: '{path.name}' is empty")
    width = len(rows[0])
    if width < 2:
        raise ScenarioError(
            f"data.params.path: '{path.name}' has {width} column; need features and a label"
        )
    maybe_header = rows[0]
    label = column_index(p.label_column, maybe_header, width, path, "label_column", "first row")
    group = None
    if p.group_column is not None:
        group = column_index(p.group_column, maybe_header, width, path, "group_column", "first row")
        if group == label:
            raise ScenarioError(
                "data.params.group_column: must differ from label_column (both are column "
                f"{label + 1})"
            )
    features = [j for j in range(width) if j not in (label, group)]
    if not features:
        raise ScenarioError(f"data.params.path: '{path.name}' has no feature column left")
    has_header = (
        p.header
        if isinstance(p.header, bool)
        else not is_numeric_row([maybe_header[j] for j in features])
    )
    if has_header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise ScenarioError(f"data.params.path: '{path.name}' has a header but no data rows")
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    labels: list[str] = []
    groups: list[str] = []
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        if len(row) != width:
            raise ScenarioError(
                f"data.params.path: line {line} of '{path.name}' has {len(row)} columns, "
                f"expected {width}"
            )
        for k, j in enumerate(features):
            try:
                x[i, k] = float(row[j])
            except ValueError:
                raise ScenarioError(
                    f"data.params.path: non-numeric feature '{row[j]}' at line {line}, column "
                    f"{j + 1} of '{path.name}' (only the label and group columns may be text)"
                ) from None
        if not row[label]:
            raise ScenarioError(
                f"data.params.label_column: empty label at line {line} of '{path.name}'"
            )
        labels.append(row[label])
        if group is not None:
            groups.append(row[group])
    if not np.isfinite(x).all():
        raise ScenarioError(f"data.params.path: '{path.name}' contains NaN or infinite features")
    y, names = encode_labels(labels)
    return Records(
        x=x.astype(np.float32),
        y=y,
        class_names=names,
        groups=None if group is None else np.array(groups, dtype=str),
    )
