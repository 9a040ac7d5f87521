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


MIN_NOISE = 0.1
"""Targets that less noise than this already meets are refused: Opacus' bisection moves its upper
end down only while the epsilon stays below the target, so a target no finite epsilon reaches
(1e300) never ends it, and noise this low spends epsilons in the hundreds to tens of thousands
(RDP, 30 full-batch steps: 1,762), which guarantee nothing."""


class TargetTooLoose(ValueError):
    """The target epsilon is met even with MIN_NOISE: nothing to calibrate."""


def _epsilon(noise: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [(noise, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


def search_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Opacus' own noise search for exactly `steps` steps (raises ValueError if unreachable,
    TargetTooLoose if MIN_NOISE already meets the target)."""
    from opacus.accountants.utils import get_noise_multiplier

    floor = _epsilon(MAX_NOISE, delta, sample_rate, steps, accountant)
    if floor >= target_epsilon:
        raise ValueError(f"even noise multiplier {MAX_NOISE:g} spends epsilon {floor:.3g}")
    # RDP's epsilon is finite at any noise and bounds PRV's from above (PRV overflows to inf
    # at low noise), so one ceiling serves both accountants.
    ceiling = _epsilon(MIN_NOISE, delta, sample_rate, steps, "rdp")
    if ceiling <= target_epsilon:
        raise TargetTooLoose(
            f"noise multiplier {MIN_NOISE:g} already spends at most epsilon {ceiling:.4g} (RDP)"
        )

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
