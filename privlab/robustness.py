"""The referee's robustness measures: targeted probes of the released model on the evaluation
set (backdoor and label-flip success) and how well the aggregator's rejections catch the
malicious clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from privlab.attacks.base import Attack
from privlab.topologies.base import TrainingOutcome


def probe_metrics(
    attack: Attack, query: Callable[[np.ndarray], np.ndarray], x: torch.Tensor, y: torch.Tensor
) -> dict[str, float | int]:
    """The referee's targeted tests on the evaluation set: the share of (triggered) records of
    other classes that the released model assigns to the attack's target class."""
    out: dict[str, float | int] = {}
    xs, ys = x.numpy(), y.numpy()
    for probe in attack.probes():
        keep = ys != probe.target
        if probe.source is not None:
            keep &= ys == probe.source
        inputs = xs[keep] if probe.stamp is None else probe.stamp(xs[keep].copy())
        hit = query(inputs).argmax(axis=1) == probe.target if keep.any() else np.zeros(0)
        out[probe.metric] = round(float(hit.mean()), 6) if len(hit) else None
        out[f"{probe.metric}_n"] = int(keep.sum())
    return out


def detection_metrics(outcome: TrainingOutcome) -> dict[str, Any]:
    """Precision and recall of the aggregator's rejections at catching malicious clients,
    pooled over client-rounds (None where undefined: nothing rejected, nobody malicious)."""
    malicious = set(outcome.malicious)
    flagged = caught = bad = 0
    for sel in outcome.selections:
        rejected = set(sel["participants"]) - set(sel["selected"])
        flagged += len(rejected)
        caught += len(rejected & malicious)
        bad += len(set(sel["participants"]) & malicious)
    return {
        "detection_precision": round(caught / flagged, 6) if flagged else None,
        "detection_recall": round(caught / bad, 6) if bad else None,
        "rejected_client_rounds": flagged,
        "malicious_client_rounds": bad,
        "rounds": len(outcome.selections),
    }
