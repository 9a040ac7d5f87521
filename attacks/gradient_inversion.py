"""Gradient inversion: reconstruct clients' training records from what crosses the wire.

Attacks (all honest-but-curious: they only read messages; adversary "server" or an
"eavesdropper" on every link):
- DLG, Zhu et al. 2019, "Deep Leakage from Gradients" (NeurIPS): optimise dummy inputs and
  soft labels with L-BFGS so their gradient matches the observed one in L2. As the paper
  notes, it needs a twice-differentiable network (they use sigmoid); on ReLU MLPs it often
  stalls, which is what iDLG's fixed label repairs.
- iDLG, Zhao et al. 2020, "iDLG: Improved Deep Leakage from Gradients": the label of a single
  record is the one whose last-layer bias gradient is negative (softmax + cross-entropy give
  p - y); then DLG with that label fixed.
- Inverting Gradients, Geiping et al. 2020 (NeurIPS): cosine distance between gradients plus
  total variation of the image, Adam on signed gradients, boxed to the data range (taken from
  the adversary's population data, never from the victims' records), restarts;
  labels extracted as in iDLG. Their multi-step FedAvg setting is handled by simulating the
  client's local steps inside the objective (the "fedavg" target below).
- Analytic recovery of a fully connected layer's input (Phong et al. 2017; Geiping et al.
  2020, Sec. 3): for one record, dL/dW1 = (dL/db1) x^T, so x = dW1[i] / db1[i] for any unit i.

What they attack, exactly as observed on the wire:
- a client's update (FedSGD gradient when the client takes one local step; a FedAvg update
  after several local steps, which the attack simulates with the public recipe: lr,
  batch_size, local_epochs, momentum, weight_decay; the client's sample count comes from the
  FedAvg weights, side information `client_num_samples`);
- under secure aggregation the server sees ciphertexts only: the attack then inverts the
  aggregate it can compute from successive global models, (w_{r+1} - w_r) / server_lr, as one
  batch holding every participant's records, and its metrics say so (`aggregate_share`);
- if a client colludes and hands the server the secret key, individual updates decrypt again.

The attack returns reconstructions; the referee (runner) grades them against the true records
of the clients each attempt names (PSNR, SSIM, MSE after Hungarian matching; label accuracy),
each beside its know-nothing baseline: the population mean image (and majority class) graded
the same way, `m_baseline`, with `m_gain` and bootstrap CIs over the reconstructed records.
Qualitative results reproduced in tests: iDLG labels are right at batch 1; DLG / Inverting
Gradients reach >= 30 dB PSNR on an undefended 8x8-digits MLP update; the aggregate of many
clients and strong pruning or noise push PSNR down.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from privlab.attacks.base import (
    Attack,
    AttackResult,
    FinalView,
    RefereeGraded,
    RefereeTruth,
    ThreatModel,
)
from privlab.errors import PrivlabError
from privlab.image_metrics import prior_guess
from privlab.training import seeded_generator
from privlab.wire import Message

Tensors = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- results


@dataclass
class Reconstruction:
    """One attempt: records the attack claims `clients` trained on in `round`, recovered from
    what it saw (`source`: "client_update", "decrypted_update" or "aggregate")."""

    round: int
    clients: tuple[int, ...]
    source: str
    images: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class Reconstructions(RefereeGraded):
    """Graded by the referee against the named clients' true records (never seen here)."""

    attempts: list[Reconstruction]
    metrics: dict[str, float | int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prior: tuple[np.ndarray, int] | None = None
    """The adversary's data-free guess (population mean record, majority class), graded like
    every attempt: the metrics' know-nothing baselines."""
    seed: int = 0

    def grade(self, truth: RefereeTruth) -> AttackResult:
        from privlab.image_metrics import grade_reconstructions

        records = truth.log.get("client_records", {})
        metrics, artifacts, methods = grade_reconstructions(
            self.attempts, truth.x_train, truth.y_train, records, prior=self.prior, seed=self.seed
        )
        artifacts["notes"] = list(self.notes)
        return AttackResult({**metrics, **self.metrics}, artifacts, methods)


# --------------------------------------------------------------------------- the problem


@dataclass
class Recipe:
    """The public local-training recipe the attack simulates."""

    lr: float
    batch_size: int
    local_epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0

    def steps(self, n: int) -> int:
        return self.local_epochs * math.ceil(n / self.batch_size)


@dataclass
class Problem:
    """Invert `target` (a pseudo-gradient: -update / lr) computed at `params` from clients
    holding `sizes` records each (their weighted mean, as FedAvg averages)."""

    model: nn.Module
    params: Tensors
    target: Tensors
    sizes: list[int]
    recipe: Recipe
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def single_step(self) -> bool:
        return all(self.recipe.steps(n) == 1 for n in self.sizes)


def _loss(model: nn.Module, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with hard (long) or soft (probability) labels."""
    logits = functional_call(model, params, (x,))
    if y.dtype == torch.long:
        return F.cross_entropy(logits, y)
    return torch.mean(torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1))


def simulate(problem: Problem, x: torch.Tensor, y: torch.Tensor) -> Tensors:
    """The pseudo-gradient the dummy records would produce, differentiable in x (and y).

    Single local step: the gradient of the mean loss over all records (FedAvg's weighted mean
    of one-step updates equals it). Several steps: each client's local SGD is unrolled on its
    own slice of the dummies in consecutive batches, and the weighted mean of
    (w_0 - w_T) / lr is returned.
    """
    names = list(problem.target)
    if problem.single_step:
        params = {k: problem.params[k].detach().requires_grad_(True) for k in names}
        grads = torch.autograd.grad(
            _loss(problem.model, params, x, y), list(params.values()), create_graph=True
        )
        return dict(zip(names, grads, strict=True))
    rec = problem.recipe
    out = {k: torch.zeros_like(problem.params[k]) for k in names}
    start = 0
    for n in problem.sizes:
        xs, ys = x[start : start + n], y[start : start + n]
        start += n
        params = {k: problem.params[k].detach().requires_grad_(True) for k in names}
        buf = {k: torch.zeros_like(v) for k, v in params.items()}
        for _ in range(rec.local_epochs):
            for b in range(0, n, rec.batch_size):
                sl = slice(b, b + rec.batch_size)
                loss = _loss(problem.model, params, xs[sl], ys[sl])
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                new = {}
                for (k, p), g in zip(params.items(), grads, strict=True):
                    g = g + rec.weight_decay * p if rec.weight_decay else g
                    buf[k] = rec.momentum * buf[k] + g if rec.momentum else g
                    new[k] = p - rec.lr * buf[k]
                params = new
        for k in names:
            out[k] = out[k] + (n / problem.total) * (problem.params[k] - params[k]) / rec.lr
    return out


def l2_distance(a: Tensors, b: Tensors) -> torch.Tensor:
    """DLG's objective, divided by ||b||^2 so its scale does not depend on the lr."""
    num = sum(((a[k] - b[k]) ** 2).sum() for k in b)
    den = sum((b[k] ** 2).sum() for k in b)
    return num / (den + 1e-30)


def cosine_distance(a: Tensors, b: Tensors) -> torch.Tensor:
    """Inverting Gradients' objective: 1 - <a, b> / (|a| |b|) over all parameters."""
    dot = sum((a[k] * b[k]).sum() for k in b)
    na = torch.sqrt(sum((a[k] ** 2).sum() for k in b))
    nb = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return 1 - dot / (na * nb + 1e-30)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV, as in the paper)."""
    if x.dim() < 4:
        return x.new_zeros(())
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    return dx + dy


# --------------------------------------------------------------------------- labels


def _last_linear(target: Tensors) -> tuple[str, str | None]:
    """Keys of the last 2-D weight and its bias (the classifier layer)."""
    weights = [k for k, v in target.items() if v.dim() == 2]
    w = weights[-1]
    b = w.removesuffix("weight") + "bias"
    return w, b if b in target else None


def _first_linear(target: Tensors) -> tuple[str, str | None]:
    weights = [k for k, v in target.items() if v.dim() == 2]
    w = weights[0]
    b = w.removesuffix("weight") + "bias"
    return w, b if b in target else None


def recover_labels(target: Tensors, n: int) -> np.ndarray:
    """iDLG: the classifier's bias gradient is mean(p - y), negative only where labels are.

    For one record the label is its argmin (Zhao et al. 2020; their code takes the argmin of
    the weight rows' sums, the same sign test, which needs non-negative features). For n
    records, labels are assigned greedily: take the most negative class, add 1/n to it (one
    record accounted for), repeat; this recovers every label whose share exceeds the mean
    predicted probability. Without a bias, the row sums of the weight gradient are used (ReLU
    features are >= 0).
    """
    wkey, bkey = _last_linear(target)
    g = target[bkey] if bkey is not None else target[wkey].sum(dim=1)
    score = g.detach().double().numpy() * n
    labels = []
    for _ in range(n):
        c = int(np.argmin(score))
        labels.append(c)
        score[c] += 1.0
    return np.array(labels, dtype=np.int64)


# --------------------------------------------------------------------------- solvers


def _dummy(problem: Problem, gen: torch.Generator) -> torch.Tensor:
    return torch.randn((problem.total, *problem.input_shape), generator=gen).requires_grad_(True)


def _lbfgs(
    variables: list[torch.Tensor], objective: Callable[[], torch.Tensor], iterations: int
) -> float:
    opt = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=iterations,
        history_size=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    return float(objective().detach())


def dlg(
    problem: Problem, gen: torch.Generator, iterations: int, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """DLG (labels None: optimised as soft labels) or iDLG (labels given), L2 + L-BFGS."""
    x = _dummy(problem, gen)
    if labels is None:
        logits = torch.randn((problem.total, problem.num_classes), generator=gen)
        logits.requires_grad_(True)
        variables = [x, logits]

        def objective() -> torch.Tensor:
            y = torch.softmax(logits, dim=-1)
            return l2_distance(simulate(problem, x, y), problem.target)
    else:
        y_fixed = torch.as_tensor(labels, dtype=torch.long)
        variables = [x]

        def objective() -> torch.Tensor:
            return l2_distance(simulate(problem, x, y_fixed), problem.target)

    loss = _lbfgs(variables, objective, iterations)
    out_labels = labels if labels is not None else variables[1].detach().argmax(dim=-1).numpy()
    return x.detach().numpy(), np.asarray(out_labels), loss


def inverting_gradients(
    problem: Problem,
    gen: torch.Generator,
    iterations: int,
    labels: np.ndarray,
    *,
    tv_weight: float,
    step_size: float,
    restarts: int,
    bounds: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Geiping et al.: cosine + TV, Adam on signed gradients, boxed, lr drops at 3/8, 5/8 and
    7/8 of the iterations; the restart with the lowest objective wins."""
    y = torch.as_tensor(labels, dtype=torch.long)
    lo, hi = bounds
    best: tuple[float, np.ndarray] | None = None
    for _ in range(restarts):
        x = _dummy(problem, gen)
        with torch.no_grad():
            x.clamp_(lo, hi)
        opt = torch.optim.Adam([x], lr=step_size)
        marks = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)
        for _ in range(iterations):
            opt.zero_grad()
            loss = cosine_distance(simulate(problem, x, y), problem.target)
            loss = loss + tv_weight * total_variation(x)
            loss.backward()
            assert x.grad is not None
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        final = cosine_distance(simulate(problem, x, y), problem.target) + tv_weight * (
            total_variation(x)
        )
        value = float(final.detach())
        if best is None or value < best[0]:
            best = (value, x.detach().numpy().copy())
    assert best is not None
    return best[1], labels, best[0]


def analytic_fc(problem: Problem) -> np.ndarray:
    """Input of the first fully connected layer from its weight and bias gradients.

    Least squares over units: x = sum_i db_i dW_i / sum_i db_i^2 (exact for one record and one
    local step; several records give their gradient-weighted mixture).
    """
    wkey, bkey = _first_linear(problem.target)
    if bkey is None:
        raise ValueError("analytic recovery needs a bias in the first linear layer")
    gw, gb = problem.target[wkey].double(), problem.target[bkey].double()
    x = (gb[:, None] * gw).sum(dim=0) / (gb**2).sum().clamp_min(1e-30)
    return x.float().reshape(1, *problem.input_shape).numpy()


# --------------------------------------------------------------------------- the attacks


class InversionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adversary: Literal["server", "eavesdropper"] = "server"
    target: Literal["auto", "client", "aggregate"] = "auto"
    """auto: single client updates when readable (plaintext, or decryptable with a leaked
    key), else the aggregate."""
    rounds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    """Rounds whose messages are attacked (the aggregate of round r needs round r + 1)."""
    max_targets: int = Field(default=4, ge=1)
    """Client updates attacked per round (lowest client ids first)."""
    iterations: int = Field(default=100, ge=1)
    max_records: int = Field(default=128, ge=1)
    """Skip targets holding more records than this (cost bound)."""


class IGParams(InversionParams):
    iterations: int = Field(default=600, ge=1)
    tv_weight: float = Field(default=1e-4, ge=0)
    step_size: float = Field(default=0.1, gt=0)
    restarts: int = Field(default=1, ge=1)


class GradientInversion(Attack):
    """Base: observe global models and updates of chosen rounds, invert each target."""

    family = "gradient_inversion"
    Params: ClassVar[type[BaseModel]] = InversionParams
    topologies = frozenset({"federated"})
    method: ClassVar[str] = ""

    def __init__(self, spec: Any, field: str) -> None:
        super().__init__(spec, field)
        self._globals: dict[int, Tensors] = {}
        self._updates: dict[int, dict[int, Any]] = {}
        self._senders: dict[int, list[int]] = {}
        self._secret: bytes | None = None
        self._public: bytes | None = None
        wanted = set(self.params.rounds)
        self._global_rounds = wanted | {r + 1 for r in wanted}

    def threat_model(self) -> ThreatModel:
        return ThreatModel(
            adversary=self.params.adversary,
            knowledge=(
                "architecture",
                "training recipe",
                "client_num_samples",
                "population data (box bounds of the inputs and the mean-record baseline)",
            ),
        )

    def observe(self, msg: Message) -> None:
        if msg.kind == "global_model" and msg.round in self._global_rounds:
            if msg.round not in self._globals:
                self._globals[msg.round] = {k: v.clone() for k, v in msg.payload.items()}
        elif msg.kind == "update" and msg.round in self.params.rounds:
            k = int(msg.sender.removeprefix("client"))
            self._updates.setdefault(msg.round, {})[k] = msg.payload
            self._senders.setdefault(msg.round, []).append(k)
        elif msg.kind == "secret_context":
            self._secret = msg.payload
        elif msg.kind == "public_context":
            self._public = msg.payload

    # ----------------------------------------------------------------- reading the wire

    def _readable(self, payload: Any) -> tuple[Tensors, str] | None:
        """A client's update in the clear, or decrypted with a leaked secret key."""
        if isinstance(payload, dict):
            return payload, "client_update"
        from privlab.defenses.secure_aggregation import EncryptedUpdate, decrypt_update, unframe

        if isinstance(payload, EncryptedUpdate) and self._secret is not None:
            import tenseal as ts

            update, _ = decrypt_update(ts.context_from(unframe(self._secret)), payload)
            return update, "decrypted_update"
        return None

    def finalize(self, view: FinalView) -> Reconstructions:
        spec = view.recipe.topology
        recipe = Recipe(
            spec.lr, spec.batch_size, spec.local_epochs, spec.momentum, spec.weight_decay
        )
        sizes = view.side_information.get("client_num_samples", {})
        model = view.model_factory()
        probe = next(iter(self._globals.values()), None)
        if view.population is None:
            raise PrivlabError(f"{self.field}: needs the population data (its input range)")
        pop_x = view.population.x
        input_shape = tuple(pop_x.shape[1:])
        num_classes = int(list(model.parameters())[-1].shape[0])
        result = Reconstructions([], prior=prior_guess(pop_x, view.population.y))
        result.seed = view.recipe.seed
        if probe is None:
            result.notes.append("no global model observed in the attacked rounds")
            return result
        # The box comes from what the adversary holds (population records of the same
        # distribution), never from the victims' own records.
        bounds = (float(np.min(pop_x)), float(np.max(pop_x)))
        attempt_no = 0
        for r in self.params.rounds:
            if r not in self._globals:
                result.notes.append(f"round {r}: no global model observed")
                continue
            params = {k: v.detach().clone().float() for k, v in self._globals[r].items()}
            readable = {}
            for k, payload in sorted(self._updates.get(r, {}).items()):
                got = self._readable(payload)
                if got is not None:
                    readable[k] = got
            mode = self.params.target
            if mode == "auto":
                mode = "client" if readable else "aggregate"
            jobs: list[tuple[tuple[int, ...], Tensors, str]] = []
            if mode == "client":
                if not readable:
                    result.notes.append(f"round {r}: no client update readable (encrypted)")
                for k, (update, source) in list(readable.items())[: self.params.max_targets]:
                    jobs.append(((k,), update, source))
            else:
                nxt = self._globals.get(r + 1)
                senders = tuple(sorted(set(self._senders.get(r, []))))
                if nxt is None or not senders:
                    result.notes.append(f"round {r}: aggregate not observable (no round {r + 1})")
                else:
                    agg = {
                        k: (nxt[k] - self._globals[r][k]) / view.recipe.topology.server_lr
                        for k in nxt
                        if nxt[k].is_floating_point()
                    }
                    jobs.append((senders, agg, "aggregate"))
                    result.notes.append(
                        f"round {r}: the server saw only the aggregate of {len(senders)} clients"
                    )
            for clients, update, source in jobs:
                n_each = [int(sizes.get(k, 1)) for k in clients]
                if sum(n_each) > self.params.max_records:
                    result.notes.append(
                        f"round {r}: skipped {source} of {sum(n_each)} records (> max_records)"
                    )
                    continue
                target = {k: (-v.float() / recipe.lr) for k, v in update.items()}
                trainable = {k: params[k].requires_grad_(False) for k in target}
                problem = Problem(
                    model, trainable, target, n_each, recipe, input_shape, num_classes
                )
                gen = seeded_generator(view.recipe.seed, r, attempt_no, 29)
                attempt_no += 1
                images, labels = self.invert(problem, gen, bounds)
                result.attempts.append(
                    Reconstruction(r, clients, source, images.astype(np.float32), labels)
                )
        result.metrics["aggregate_only"] = int(
            bool(result.attempts) and all(a.source == "aggregate" for a in result.attempts)
        )
        return result

    def invert(
        self, problem: Problem, gen: torch.Generator, bounds: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError


class DLGAttack(GradientInversion):
    """DLG (Zhu et al. 2019): L2 gradient matching of dummy inputs and soft labels, L-BFGS."""

    method = "dlg"

    def invert(self, problem, gen, bounds):  # type: ignore[no-untyped-def]
        images, labels, _ = dlg(problem, gen, self.params.iterations, None)
        return images, labels


class IDLGAttack(GradientInversion):
    """iDLG (Zhao et al. 2020): labels from the classifier's bias gradient, then DLG."""

    method = "idlg"

    def invert(self, problem, gen, bounds):  # type: ignore[no-untyped-def]
        labels = recover_labels(problem.target, problem.total)
        images, _, _ = dlg(problem, gen, self.params.iterations, labels)
        return images, labels


class InvertingGradientsAttack(GradientInversion):
    """Inverting Gradients (Geiping et al. 2020): cosine distance + total variation, Adam."""

    Params = IGParams
    method = "inverting_gradients"

    def invert(self, problem, gen, bounds):  # type: ignore[no-untyped-def]
        p: IGParams = self.params
        labels = recover_labels(problem.target, problem.total)
        images, _, _ = inverting_gradients(
            problem,
            gen,
            p.iterations,
            labels,
            tv_weight=p.tv_weight,
            step_size=p.step_size,
            restarts=p.restarts,
            bounds=bounds,
        )
        return images, labels


class AnalyticFCAttack(GradientInversion):
    """Analytic input recovery of the first fully connected layer (batch size 1)."""

    method = "analytic_fc"

    def invert(self, problem, gen, bounds):  # type: ignore[no-untyped-def]
        labels = recover_labels(problem.target, 1)
        return analytic_fc(problem), labels
