"""Shared pieces of the split-learning attacks: batch keys, the adversary's own randomness,
and the referee's grading of reconstructed inputs beside the population-mean baseline."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from privlab.attacks.base import AttackResult, FinalView, RefereeGraded, RefereeTruth
from privlab.errors import PrivlabError
from privlab.png import png_data_uri

BatchKey = tuple[int, int, int]


def client_id(party: str) -> int:
    return int(party.removeprefix("client"))


def adversary_seed(seed: int, purpose: str) -> int:
    """The adversary's own randomness: reproducible from the scenario seed, but a stream that
    no party's model initialisation uses (mixed with the purpose through a SeedSequence)."""
    tag = zlib.crc32(purpose.encode())
    return int(np.random.SeedSequence([seed, tag, 0xAD7E]).generate_state(1, np.uint64)[0] >> 1)


def digest(*parts: object) -> str:
    """sha256 over tensors' bytes and other parts' reprs: the key of a one-entry cache that
    lets two attacks asking the same question (naive and adaptive, no noise) share one answer."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().contiguous().numpy().tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


@contextmanager
def adversary_rng(seed: int, purpose: str) -> Iterator[None]:
    """Build the adversary's own modules under `adversary_seed`, leaving the global torch RNG
    as it was (so an attack never shifts the training's randomness)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(adversary_seed(seed, purpose))
        yield


@dataclass
class Reconstructions(RefereeGraded):
    """Reconstructed inputs per observed batch, graded against the true inputs.

    Activations arrive in the batch's order, so each reconstruction is paired with its own
    record. `prior` is the adversary's data-free guess (the population mean record), graded
    the same way: every metric comes with `m_baseline`, `m_gain` and bootstrap CIs over the
    reconstructed records."""

    x_hat: dict[BatchKey, np.ndarray]
    image: bool
    prior: np.ndarray | None = None
    seed: int = 0

    def grade(self, truth: RefereeTruth) -> AttackResult:
        from privlab.baseline_stats import scored
        from privlab.image_metrics import PSNR_CAP, psnr, ssim

        batches = truth.log.get("split_batches", {})
        keys = [k for k in self.x_hat if k in batches]
        if not keys:
            raise PrivlabError("inversion: no observed batch matches the referee's log")
        x_true = np.concatenate([truth.x_train[batches[k]] for k in keys]).astype(np.float64)
        x_hat = np.concatenate([self.x_hat[k] for k in keys]).astype(np.float64)
        x_hat = x_hat.reshape(x_true.shape)
        prior = self.prior if self.prior is not None else np.zeros(x_true.shape[1:])
        guess = np.broadcast_to(prior.astype(np.float64), x_true.shape)
        per = len(x_true), -1
        unit = "reconstructed records"
        metrics, methods = scored(
            "mse",
            ((x_hat - x_true) ** 2).reshape(per).mean(axis=1),
            ((guess - x_true) ** 2).reshape(per).mean(axis=1),
            unit=unit,
            seed=self.seed,
        )
        base = float(metrics["mse_baseline"])  # type: ignore[arg-type]
        metrics["mse_ratio"] = float(metrics["mse"]) / base if base > 0 else 0.0  # type: ignore[arg-type]
        metrics["n_examples"] = len(x_true)
        artifacts = {}
        if self.image:
            clipped = np.clip(x_hat, 0.0, 1.0)
            for name, score in (
                ("psnr", lambda a: np.minimum(psnr(a, x_true), PSNR_CAP)),
                ("ssim", lambda a: ssim(a, x_true)),
            ):
                if name == "ssim" and min(x_true.shape[-2:]) < 7:
                    continue
                out, how = scored(name, score(clipped), score(guess), unit=unit, seed=self.seed)
                metrics.update(out)
                methods.update(how)
            artifacts["examples"] = {  # the first 8, as PNG data URIs (privlab.png)
                "true": [png_data_uri(x) for x in x_true[:8]],
                "reconstructed": [png_data_uri(x) for x in clipped[:8]],
                "baseline": png_data_uri(np.clip(prior, 0.0, 1.0)),
            }
        return AttackResult(metrics, artifacts, methods)


def graded_batches(
    truth: RefereeTruth, observed: Iterable[BatchKey], what: str
) -> tuple[list[BatchKey], dict[BatchKey, np.ndarray]]:
    """The observed batch keys the referee logged, in observation order, and that log
    (batch key -> record indices); a PrivlabError naming `what` when none match."""
    batches = truth.log.get("split_batches", {})
    keys = [k for k in observed if k in batches]
    if not keys:
        raise PrivlabError(f"{what}: no observed batch matches the referee's log")
    return keys, batches


def population_prior(view: FinalView) -> np.ndarray | None:
    """The data-free guess of an adversary holding the population data: its mean record."""
    if view.population is None:
        return None
    return np.asarray(view.population.x, dtype=np.float64).mean(axis=0)
