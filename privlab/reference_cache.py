"""The reference-model cache: content-checksummed entries, written atomically.

An entry is one torch file holding the stacked parameters and buffers, the job key it was
trained for and a SHA-256 of every tensor's name, dtype, shape and bytes. Loading verifies all
of it; a truncated, empty, unreadable or altered entry (right shapes, wrong values included) is
reported in one line on stderr and rebuilt, never used. Writers save to a unique temporary file
in the cache folder and rename it over the entry (atomic on POSIX), so a concurrent reader sees
the old entry or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]


def checksum(params: Tensors, buffers: Tensors) -> str:
    h = hashlib.sha256()
    for kind, tensors in (("p", params), ("b", buffers)):
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous().cpu()
            h.update(f"{kind}:{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_entry(path: Path, key: str, params: Tensors, buffers: Tensors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "key": key,
        "checksum": checksum(params, buffers),
        "params": params,
        "buffers": buffers,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def load_entry(
    path: Path, key: str, expected: dict[str, tuple[int, ...]]
) -> tuple[Tensors, Tensors] | None:
    """The entry's (params, buffers) if it is intact and is what `key` asks for, else None
    (after a one-line notice). `expected` maps each parameter name to its stacked shape."""
    if not path.is_file():
        return None
    reason = _problem(path, key, expected)
    if isinstance(reason, str):
        print(
            f"privlab: reference-model cache entry {path} is unusable ({reason}); rebuilding it",
            file=sys.stderr,
        )
        return None
    return reason


def _problem(
    path: Path, key: str, expected: dict[str, tuple[int, ...]]
) -> str | tuple[Tensors, Tensors]:
    try:
        entry = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # truncated, empty, garbage: torch raises many kinds
        return f"unreadable: {type(exc).__name__}"
    if not isinstance(entry, dict) or not {"key", "checksum", "params", "buffers"} <= set(entry):
        return "not a privlab cache entry"
    params, buffers = entry["params"], entry["buffers"]
    if not (_tensors(params) and _tensors(buffers)):
        return "not a privlab cache entry"
    if entry["key"] != key:
        return "written for another job"
    if entry["checksum"] != checksum(params, buffers):
        return "checksum mismatch"
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    if shapes != expected:
        return "shapes differ from the model"
    return params, buffers
