"""What a federated keyboard leaks: memorised secrets and the words one user typed.

Canary exposure (Carlini et al. 2019, "The Secret Sharer", USENIX Security, Section 4): an
auditor with query access to the released next-word model scores every candidate secret of the
canary's format ("my pin is _ _ _ _": |R| = 10^4 PINs) by log-perplexity; the referee, which
knows the PIN that was inserted, grades the ranking as exposure = log2 |R| - log2 rank (rank 1 =
the most likely candidate), so 13.3 bits means the model completes the prompt with the secret.
Its know-nothing baseline is the mean exposure of PINs that were never inserted (about
1/ln 2 = 1.44 bits for a model that memorised nothing).

Word leakage (Melis et al. 2019, "Exploiting Unintended Feature Leakage in Collaborative
Learning", IEEE S&P, Section V-A): with plain SGD, the rows of an embedding matrix change only
for the tokens that were fed in, so an honest-but-curious server reads the words a user typed
off the non-zero rows of that user's update. Under secure aggregation it has only the aggregate
(the change of the global model in the rounds the user took part), whose non-zero rows are the
union over every participant; the baseline is a data-free guess of as many words from the
population's word frequencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.data_next_word import CANARY_PREFIX, DIGITS, PIN_LENGTH, WORD_ID
from privlab.errors import ScenarioError
from privlab.wire import SERVER, Message, client

DIGIT_IDS = np.array([WORD_ID[d] for d in DIGITS])


def exposure(log_perplexity: np.ndarray, secret: int) -> float:
    """Carlini et al.'s exposure of candidate `secret` (an index into the candidate space):
    log2 |R| - log2 rank, where rank counts the candidates at least as likely (lower or equal
    log-perplexity, ties counted against the secret) and starts at 1."""
    rank = int(np.sum(log_perplexity <= log_perplexity[secret]))
    return math.log2(len(log_perplexity)) - math.log2(rank)


def pin_log_perplexity(query: Any, context: int) -> np.ndarray:
    """-log2 P(d1 d2 d3 d4 | "my pin is") for all 10^4 PINs, PIN n = digits of n (d1 first),
    from the model's next-token probabilities over sliding windows of `context` tokens."""
    prefix = [WORD_ID[w] for w in CANARY_PREFIX]
    total = np.zeros(10**PIN_LENGTH)
    pins = np.array([[int(c) for c in f"{n:0{PIN_LENGTH}d}"] for n in range(10**PIN_LENGTH)])
    for pos in range(PIN_LENGTH):
        # Every distinct digit prefix of length `pos` needs one query.
        heads = np.unique(pins[:, :pos], axis=0) if pos else np.zeros((1, 0), dtype=int)
        stream = np.concatenate(
            [np.tile(prefix, (len(heads), 1)), DIGIT_IDS[heads].reshape(len(heads), pos)], axis=1
        )
        windows = stream[:, -context:]
        if windows.shape[1] < context:
            pad = np.full((len(windows), context - windows.shape[1]), WORD_ID["<bos>"])
            windows = np.concatenate([pad, windows], axis=1)
        probs = query(windows.astype(np.float32))[:, DIGIT_IDS]  # (heads, 10)
        lookup = {tuple(h): i for i, h in enumerate(heads.tolist())}
        rows = np.array([lookup[tuple(p[:pos].tolist())] for p in pins])
        total += -np.log2(np.clip(probs[rows, pins[:, pos]], 1e-300, 1.0))
    return total


def inserted_pins(x: np.ndarray, y: np.ndarray, records: np.ndarray) -> dict[int, int]:
    """PIN index -> number of trained insertions: the referee finds "my pin is" windows in the
    records that were trained on and reads the next four labels (records are in stream order)."""
    prefix = np.array([WORD_ID[w] for w in CANARY_PREFIX], dtype=np.float32)
    counts: dict[int, int] = {}
    trained = set(records.tolist())
    context = x.shape[1]
    if context < len(prefix):
        return counts
    hits = np.flatnonzero((x[:, -len(prefix) :] == prefix).all(axis=1))
    digit_of = {int(v): i for i, v in enumerate(DIGIT_IDS)}
    for i in hits.tolist():
        if i + PIN_LENGTH > len(y) or not all(j in trained for j in range(i, i + PIN_LENGTH)):
            continue
        digits = [digit_of.get(int(y[j])) for j in range(i, i + PIN_LENGTH)]
        if None not in digits:
            pin = int("".join(str(d) for d in digits))
            counts[pin] = counts.get(pin, 0) + 1
    return counts


def all_trained_records(log: dict[str, Any]) -> np.ndarray:
    records = log.get("client_records") or {}
    parts = [np.asarray(v) for v in records.values()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class PinRanking(RefereeGraded):
    log_perplexity: np.ndarray
    baseline_draws: int
    seed_material: int

    def grade(self, truth: RefereeTruth) -> AttackResult:
        counts = inserted_pins(truth.x_train, truth.y_train, all_trained_records(truth.log))
        if not counts:
            return AttackResult({"exposure": None, "insertions": 0}, {"note": "no canary trained"})
        secret, insertions = max(counts.items(), key=lambda kv: kv[1])
        rng = np.random.default_rng(self.seed_material)
        others = np.setdiff1d(np.arange(len(self.log_perplexity)), list(counts))
        draws = rng.choice(others, size=min(self.baseline_draws, len(others)), replace=False)
        base = np.array([exposure(self.log_perplexity, int(d)) for d in draws])
        boot = rng.choice(base, size=(1000, len(base)), replace=True).mean(axis=1)
        value = exposure(self.log_perplexity, secret)
        mean = float(base.mean())
        return AttackResult(
            {
                "exposure": value,
                "exposure_baseline": mean,
                "exposure_baseline_ci": [float(np.quantile(boot, 0.025)),
                                         float(np.quantile(boot, 0.975))],
                "exposure_gain": value - mean,
                "exposure_max": math.log2(len(self.log_perplexity)),
                "rank": int(np.sum(self.log_perplexity <= self.log_perplexity[secret])),
                "insertions": insertions,
                "candidates": len(self.log_perplexity),
            }
        )  # fmt: skip


class ExposureParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline_draws: int = Field(default=200, ge=10, le=9_000)
    """How many never-inserted PINs give the know-nothing exposure."""


class CanaryExposureAttack(Attack):
    """Canary exposure of the released next-word model (Carlini et al. 2019)."""

    family = "memorization"
    Params = ExposureParams

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="outsider",
            knowledge=("the canary's format: 'my pin is' and four digits",),
        )

    def check_setting(self, scenario: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
        if scenario.data.name != "next_word":
            raise ScenarioError(
                f"{self.field}.name: 'canary_exposure' needs data.name = 'next_word' "
                f"(its canaries), got '{scenario.data.name}'"
            )

    def finalize(self, view: FinalView) -> PinRanking:
        context = int(view.recipe.data.params.get("context", 3))
        return PinRanking(pin_log_perplexity(view.query, context), self.params.baseline_draws, 7)


@dataclass
class WordGuess(RefereeGraded):
    """Token ids the server read off client k's update, and its data-free guess of equal size."""

    client: int
    recovered: np.ndarray | None
    baseline: np.ndarray
    source: str

    def grade(self, truth: RefereeTruth) -> AttackResult:
        records = (truth.log.get("client_records") or {}).get(self.client)
        if self.recovered is None or records is None:
            return AttackResult(
                {"recall": None, "precision": None, "f1": None},
                {"note": f"client {self.client} never took part in a round the server saw"},
            )
        idx = np.asarray(records)
        typed = np.union1d(np.unique(truth.x_train[idx].astype(np.int64)), truth.y_train[idx])
        out: dict[str, Any] = {"words_typed": len(typed), "words_recovered": len(self.recovered)}
        for name, guess in (("", self.recovered), ("_baseline", self.baseline)):
            p, r, f = precision_recall_f1(guess, typed)
            out |= {f"precision{name}": p, f"recall{name}": r, f"f1{name}": f}
        for m in ("precision", "recall", "f1"):
            out[f"{m}_gain"] = out[m] - out[f"{m}_baseline"]
        return AttackResult(out, {"source": self.source})


def precision_recall_f1(guess: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    hit = len(np.intersect1d(guess, truth))
    p = hit / len(guess) if len(guess) else 0.0
    r = hit / len(truth) if len(truth) else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


class WordLeakParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client: int = Field(default=0, ge=0)
    embedding: str = "embedding.weight"
    """State-dict key of the embedding matrix (public: the architecture is public)."""
    tolerance: float = Field(default=1e-6, ge=0, le=1)
    """A row counts as changed when its largest absolute change exceeds this (CKKS noise)."""


class WordLeakAttack(Attack):
    """Words one user typed, from the embedding rows of their update (Melis et al. 2019)."""

    family = "feature_leakage"
    Params = WordLeakParams
    topologies = frozenset({"federated"})

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self._globals: dict[int, torch.Tensor] = {}
        self._own: list[torch.Tensor] = []
        self._rounds: set[int] = set()

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary="server",
            knowledge=("model architecture", "population word frequencies"),
        )

    def target_parties(self) -> list[int] | None:
        return [self.params.client]

    def check_setting(self, scenario: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
        if scenario.model.name != "next_word":
            raise ScenarioError(
                f"{self.field}.name: 'word_leak' reads an embedding layer: it needs "
                f"model.name = 'next_word', got '{scenario.model.name}'"
            )

    def observe(self, msg: Message) -> None:
        key, k = self.params.embedding, client(self.params.client)
        if msg.kind == "global_model" and msg.sender == SERVER and isinstance(msg.payload, dict):
            if key in msg.payload and msg.round not in self._globals:
                self._globals[msg.round] = msg.payload[key].detach().clone()
        elif msg.kind == "update" and msg.sender == k:
            self._rounds.add(msg.round)
            if isinstance(msg.payload, dict) and key in msg.payload:
                self._own.append(msg.payload[key].detach().clone())

    def finalize(self, view: FinalView) -> WordGuess:
        if self._own:  # the user's own update in plaintext
            changed = torch.stack([d.abs() for d in self._own]).amax(dim=0)
            source = f"client {self.params.client}'s own update ({len(self._own)} round(s))"
        else:  # only the aggregate: global model r+1 minus global model r, rounds it joined
            deltas = [
                (self._globals[r + 1] - self._globals[r]).abs()
                for r in sorted(self._rounds)
                if r in self._globals and r + 1 in self._globals
            ]
            changed = torch.stack(deltas).amax(dim=0) if deltas else None
            source = f"aggregates of {len(deltas)} round(s) with client {self.params.client}"
        recovered = None
        if changed is not None:
            recovered = np.flatnonzero(changed.amax(dim=1).numpy() > self.params.tolerance)
        vocab = view.model_factory().state_dict()[self.params.embedding].shape[0]
        population = (
            view.population.x.astype(np.int64).ravel()
            if view.population is not None
            else np.zeros(0, dtype=np.int64)
        )
        freq = np.bincount(population, minlength=vocab)
        size = len(recovered) if recovered is not None else 0
        baseline = np.argsort(-freq, kind="stable")[:size]
        return WordGuess(self.params.client, recovered, baseline, source)
