"""Membership inference against the released model.

Loss threshold (Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", CSF): an outsider with query access predicts "member" when a record's loss is
below the model's expected training loss. Setting here: the final model of any topology, the
challenge set drawn from clients' training records and their held-out records in equal number.
The paper's adversary knows the average training loss; privlab hands it over as declared side
information. The threshold-free metrics (AUC, TPR at low FPR) use only the scores.
Qualitative result reproduced: leakage grows with the generalisation gap; DP-SGD removes it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from privlab.attacks.base import Attack, FinalView, MembershipScores, ThreatModel
from privlab.metrics import METRIC_NAMES


def cross_entropy_per_example(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = probs[np.arange(len(labels)), labels]
    return -np.log(np.clip(p, 1e-12, 1.0))


class LossThresholdAttack(Attack):
    """Membership inference by per-example loss threshold (Yeom et al. 2018)."""

    family = "membership"
    metric_names: ClassVar[frozenset[str]] = METRIC_NAMES
    """Every metric the referee computes from its scores (privlab.metrics.membership_metrics);
    expectations naming another are refused before training."""

    def threat_model(self) -> ThreatModel:
        return ThreatModel(adversary="outsider", knowledge=("mean_train_loss",))

    def finalize(self, view: FinalView) -> MembershipScores:
        assert view.challenge is not None
        probs = view.query(view.challenge.x)
        losses = cross_entropy_per_example(probs, view.challenge.y)
        threshold = view.side_information.get("mean_train_loss")
        return MembershipScores(
            scores=-losses, threshold=None if threshold is None else -float(threshold)
        )
