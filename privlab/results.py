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
          "status": "ok" | "diverged",   (diverged: loss became NaN/inf; training stopped,
          "diverged_at_round": int,        no attack ran; only present when diverged)
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

No number in the file is NaN or infinite: such a value is stored as null, with a note saying
where. `privlab.results_schema` holds the schema as pydantic models; `read_results` checks it.
The two files of an output folder are replaced together (`privlab.publish`).

Timing fields (any key named ``seconds``, ``seconds_per_round``, ``timing``, or ending in
``_seconds``) are the only ones allowed to differ between two runs of the same scenario and seed.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from privlab.errors import ScenarioError
from privlab.publish import atomic_write_text, publish_folder
from privlab.scenario_source import describe_path

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
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    """Read once per process: package metadata costs about 0.1 s per read."""
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


def null_non_finite(results: dict[str, Any]) -> dict[str, Any]:
    """A copy with every NaN or infinite number replaced by null, each one noted: in the
    notes of the variant it belongs to, else in the top-level notes. JSON has no NaN."""
    found: list[list[str]] = []

    def walk(node: Any, path: list[str]) -> Any:
        if isinstance(node, float) and not math.isfinite(node):
            found.append(path)
            return None
        if isinstance(node, dict):
            return {k: walk(v, [*path, str(k)]) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, [*path, str(i)]) for i, v in enumerate(node)]
        return node

    out = walk(results, [])
    for path in found:
        variant = out.get("variants", {}).get(path[1]) if path[:1] == ["variants"] else None
        where, dotted = (variant, ".".join(path[2:])) if variant else (out, ".".join(path))
        if not isinstance(where.get("notes"), list):
            where["notes"] = []
        where["notes"].append(f"{dotted} was not a finite number; stored as null")
    return out


def diverged_variant(
    round_: int,
    loss: float,
    per_round: list[dict[str, Any]],
    defenses: list[dict[str, Any]],
    bytes_per_round: list[int],
    seconds: float,
) -> dict[str, Any]:
    """A variant whose loss became NaN or infinite: training stopped at that round and no
    attack ran (a broken model says nothing about leakage); the other variants go on."""
    last = per_round[-1]["accuracy"] if per_round else None
    return {
        "status": "diverged",
        "diverged_at_round": round_,
        "defenses": defenses,
        "utility": {
            "final_accuracy": last,
            "final_loss": None,
            "train_loss": None,
            "per_round": per_round,
        },
        "attacks": {},
        "privacy": None,
        "cost": {
            "bytes_per_round": bytes_per_round,
            "bytes_total": int(sum(bytes_per_round)),
            "seconds": round(seconds, 3),
        },
        "notes": [
            f"diverged at round {round_}: test loss {loss}; training stopped there and no "
            "attack ran (lower topology.lr or topology.server_lr, or clip the updates)"
        ],
    }


def dumps(results: dict[str, Any]) -> str:
    return json.dumps(null_non_finite(results), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_results(path: Path, results: dict[str, Any]) -> None:
    atomic_write_text(path, dumps(results))


def write_output_folder(folder: Path, results: dict[str, Any], html: str) -> None:
    """results.json and report.html of one run, replacing the folder's old pair in one step."""
    publish_folder(folder, {"results.json": dumps(results), "report.html": html})


def read_results(path: Path) -> dict[str, Any]:
    """A results.json checked against its schema (privlab.results_schema): one line naming the
    first wrong field, never a crash further on in `check` or `report`."""
    from privlab.results_schema import validate_results

    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"results: '{path}' {describe_path(path)}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"results: '{path}' is not valid JSON ({exc})") from None
    except RecursionError:
        raise ScenarioError(f"results: '{path}' is nested too deeply to be results") from None
    except OSError as exc:
        raise ScenarioError(f"results: cannot read '{path}' ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ScenarioError(
            f"results: '{path}' is not a privlab results file of schema {SCHEMA_VERSION}"
        )
    validate_results(data, path)
    return data


def ensure_writable(folder: Path) -> None:
    """Fail early (exit 2) when the output folder cannot be written, before any work, and
    without creating anything: a run that fails leaves no empty folder behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ScenarioError(f"--out: cannot write to '{folder}' (it {describe_path(folder)})")
    probe = folder.resolve().parent  # the swap renames inside the parent (made if missing)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ScenarioError(f"--out: cannot write to '{folder}' ('{probe}' {describe_path(probe)})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".privlab-write-check-{os.getpid()}-", dir=probe)
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
