"""Membership inference by modified prediction entropy (Song & Mittal 2021, "Systematic
Evaluation of Privacy Risks of Machine Learning Models", USENIX Security).

Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i): low for confident, correct
predictions (members), high for wrong or unsure ones. Unlike plain entropy it uses the label, so
a confidently wrong prediction scores as a non-member. The adversary is an outsider with query
access to the released model (class probabilities) and the candidate records' labels.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import Attack, FinalView, MembershipScores, ThreatModel


def modified_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-30) -> np.ndarray:
    """Mentr per record; probs (N, C) rows summing to one, labels (N,)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    rows = np.arange(len(labels))
    own = p[rows, labels]
    terms = -p * np.log(1 - p)
    terms[rows, labels] = 0.0
    return -(1 - own) * np.log(own) + terms.sum(axis=1)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=1.0, gt=0)
    """Sharpen (< 1) or soften (> 1) the released probabilities before scoring."""


class ModifiedEntropyAttack(Attack):
    """Membership by modified prediction entropy (Song & Mittal 2021); outsider, query access."""

    summary = "membership by modified prediction entropy (Song & Mittal 2021); outsider"
    family = "membership"
    Params = Params

    def threat_model(self) -> ThreatModel:
        return ThreatModel(adversary="outsider", knowledge=("candidate labels",))

    def finalize(self, view: FinalView) -> MembershipScores:
        assert view.challenge is not None
        probs = view.query(view.challenge.x)
        if self.params.temperature != 1.0:
            logits = np.log(np.clip(probs, 1e-300, 1.0)) / self.params.temperature
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        return MembershipScores(scores=-modified_entropy(probs, view.challenge.y))
