"""DP-SGD noise calibration on the exact number of steps the trainer takes, cached on disk.

Opacus' `get_noise_multiplier(epochs=E, sample_rate=q)` accounts for int(E / q) steps. privlab's
DP trainers (`_Accounted._poisson_batches` in dp_sgd.py) take, per epoch, k = ceil(n / batch)
Poisson batches with rate q = 1 / k, so E epochs are exactly E * k steps; in floating point
int(E / (1 / k)) is E * k - 1 for some k (k = 93, E = 1 gives 92), and the spent epsilon then
lands above the target. Here the search is told the steps themselves.

The search (PRV: seconds per call) is cached in privlab's cache folder
(`privlab.reference_models.cache_dir()`): one small JSON file per question, holding the question,
the answer and a SHA-256 checksum of both; an entry that does not parse, answers another
question or fails its checksum is recomputed and rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

EPSILON_TOLERANCE = 0.01
CACHE_FOLDER = "dp-noise"


def steps_of(epochs: int, steps_per_epoch: int) -> int:
    """Steps of `epochs` epochs of `steps_per_epoch` Poisson batches each (privlab's trainer)."""
    return int(epochs) * int(steps_per_epoch)


def _question(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, acc: str
) -> dict:
    import opacus

    return {
        "target_epsilon": float(target_epsilon),
        "delta": float(delta),
        "sample_rate": float(sample_rate).hex(),  # exact, not rounded
        "steps": int(steps),
        "accountant": acc,
        "epsilon_tolerance": EPSILON_TOLERANCE,
        "opacus": opacus.__version__,
    }


def _checksum(question: dict, noise: float) -> str:
    text = json.dumps(
        {"question": question, "noise_multiplier": float(noise).hex()}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _path(question: dict) -> Path:
    from privlab.reference_models import cache_dir

    name = hashlib.sha256(json.dumps(question, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / CACHE_FOLDER / f"{name}.json"


def read_entry(path: Path, question: dict) -> float | None:
    """The cached answer, or None when missing, unreadable, for another question or corrupt."""
    try:
        entry = json.loads(path.read_text())
        noise = float.fromhex(entry["noise_multiplier"])
        if entry["question"] != question or entry["checksum"] != _checksum(question, noise):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return noise if math.isfinite(noise) and noise >= 0 else None


def write_entry(path: Path, question: dict, noise: float) -> None:
    entry = {
        "question": question,
        "noise_multiplier": float(noise).hex(),
        "noise_multiplier_decimal": float(noise),
        "checksum": _checksum(question, noise),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # a read-only cache folder only costs the recomputation


MAX_NOISE = 100.0
"""Targets that need more noise than this are refused at once (Opacus' own search would double
its bracket up to 1e6, evaluating the accountant at every step: minutes under PRV)."""


def search_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Opacus' own noise search for exactly `steps` steps (raises ValueError if unreachable)."""
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier

    acc = create_accountant(accountant)
    acc.history = [(MAX_NOISE, sample_rate, steps)]
    floor = float(acc.get_epsilon(delta=delta))
    if floor >= target_epsilon:
        raise ValueError(f"even noise multiplier {MAX_NOISE:g} spends epsilon {floor:.3g}")

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=EPSILON_TOLERANCE,
        )
    )


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    *,
    use_cache: bool = True,
) -> float:
    """Smallest noise multiplier (within Opacus' tolerance) whose `steps` Poisson-subsampled
    Gaussian steps at `sample_rate` spend at most `target_epsilon`; disk-cached across runs."""
    question = _question(target_epsilon, delta, sample_rate, steps, accountant)
    path = _path(question)
    if use_cache:
        cached = read_entry(path, question)
        if cached is not None:
            return cached
    noise = search_noise(target_epsilon, delta, sample_rate, steps, accountant)
    if use_cache:
        write_entry(path, question, noise)
    return noise
