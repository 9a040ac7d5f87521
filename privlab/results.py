"""The canonical results.json: versioned schema, atomic writes, timing-free comparison.

Layout (schema 1)::

    {
      "schema_version": 1,
      "privlab_version": "0.1.0",
      "scenario": {...resolved scenario, as validated...},
      "seed": 0,
      "versions": {"python": ..., "torch": ..., "opacus": ..., ...},
      "variants": {
        "<variant>": {
          "defenses": [{"name": ..., "id": ..., "params": {...}}],
          "utility": {"final_accuracy": f, "final_loss": f,
                      "per_round": [{"round": 1, "accuracy": f, "loss": f}, ...]},
          "attacks": {"<attack id>": {"name": ..., "family": ..., "threat_model": {...},
                                       "metrics": {"auc": f, ...},
                                       "artifacts": {"roc": {"fpr": [...], "tpr": [...]}}}},
          "privacy": null | {"epsilon": f, "delta": f, "accountant": "prv",
                             "approximate": false, "per_client": {"0": f, ...}},
          "cost": {"bytes_per_round": [int, ...], "bytes_total": int,
                   "seconds": f, "seconds_per_round": [f, ...]},
          "notes": [str, ...],
          "robustness": {...}   (when an aggregator selects clients: detection precision/recall),
          "topology": {...}     (topology-specific results: ledger checks, baselines, ...)
        }
      },
      "expectations": [{"metric": ..., "variant": ..., "min": ..., "max": ...,
                        "actual": f | null, "passed": bool}],
      "timing": {"started": "ISO time", "seconds": f}
    }

Timing fields (any key named ``seconds``, ``seconds_per_round``, ``timing``, or ending in
``_seconds``) are the only ones allowed to differ between two runs of the same scenario and seed.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from privlab.errors import ScenarioError

SCHEMA_VERSION = 1
_TRACKED_PACKAGES = (
    "privlab",
    "torch",
    "opacus",
    "numpy",
    "scikit-learn",
    "scipy",
    "tenseal",
    "cryptography",
    "mnist1d",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def is_timing_key(key: str) -> bool:
    return key in {"seconds", "seconds_per_round", "timing"} or key.endswith("_seconds")


def strip_timing(obj: Any) -> Any:
    """A copy without timing fields: what must be identical across runs with one seed."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if not is_timing_key(k)}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_results(path: Path, results: dict[str, Any]) -> None:
    atomic_write_text(path, dumps(results))


def read_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"results: file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"results: '{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ScenarioError(
            f"results: '{path}' is not a privlab results file of schema {SCHEMA_VERSION}"
        )
    return data


def ensure_writable(folder: Path) -> None:
    """Fail early (exit 2) when the output folder cannot be written, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".privlab-write-check-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ScenarioError(f"--out: cannot write to '{folder}' ({exc.strerror or exc})") from None


def lookup(variant_result: dict[str, Any], dotted: str) -> Any:
    """Follow a dotted path (e.g. `attacks.mia.auc`) inside one variant's results. Keys may hold
    dots themselves (`attacks.mia.tpr_at_0.1pct_fpr`): the longest key that exists wins, and an
    attack's `metrics` level may be left out of the path."""
    parts = dotted.split(".")

    def walk(node: Any, i: int) -> Any:
        if i == len(parts):
            return node
        if not isinstance(node, dict):
            return None
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            for holder in (node, node.get("metrics")):
                if isinstance(holder, dict) and key in holder:
                    found = walk(holder[key], j)
                    if found is not None:
                        return found
        return None

    return walk(variant_result, 0)
