"""Synthetic blood transcriptomes from several clinics (the setting of swarm learning).

Warnat-Herresthal et al. 2021 (Nature, "Swarm Learning for decentralized and confidential
clinical machine learning") predict disease (leukaemia, tuberculosis, COVID-19) from whole-blood
transcriptomes held by clinics that may not pool them. Their data show what this generator
builds in, so the swarm's advantage has the same causes:
- thousands of genes (default 2,000), of which a small disease signature is informative (half
  up-, half down-regulated in cases);
- log-normal expression: per-gene log-means and spreads, co-expression modules (a few latent
  factors shared by many genes), a per-sample library-size factor, Poisson counts, reported as
  log2(1 + count) and z-scored with training statistics;
- clinic batch effects: every clinic shifts every gene's log-expression by its own offset (lab
  protocol, sequencing platform), so a model fit at one clinic transfers imperfectly;
- class imbalance and different case mixes: prevalence differs by clinic (a specialist centre
  sees mostly cases);
- clinics of very different sizes (default 600, 300, 150, 80, 50 patients).
The clinic is exposed as the data set's group (`groups_train` / `groups_test`); the partition
scheme `by_group` puts each clinic on its own peer. The test set is drawn from every clinic
(stratified by clinic and label), so it asks what a model does for the patients of all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator
from sklearn.model_selection import train_test_split

from privlab.data import Dataset, _make, _Params, _random_state, _standardize, _validate
from privlab.errors import ScenarioError


class TranscriptomeParams(_Params):
    n_genes: Annotated[int, Field(ge=10, le=20_000)] = 2000
    n_signature: Annotated[int, Field(ge=1)] = 40
    """Informative genes (the disease signature)."""
    signature_effect: Annotated[float, Field(gt=0, le=10)] = 0.8
    """Shift of a signature gene's log-expression in cases, in units of that gene's spread."""
    clinic_sizes: Annotated[list[Annotated[int, Field(ge=10)]], Field(min_length=1)] = Field(
        default_factory=lambda: [600, 300, 150, 80, 50]
    )
    prevalence: list[Annotated[float, Field(gt=0, lt=1)]] | None = None
    """Share of cases per clinic (default: 0.2, 0.3, 0.7, 0.25, 0.4 cycled)."""
    batch_effect: Annotated[float, Field(ge=0, le=10)] = 0.2
    """Spread of each clinic's per-gene offset, in units of the gene's spread."""
    n_modules: Annotated[int, Field(ge=0, le=100)] = 10
    """Co-expression modules (latent factors)."""

    @model_validator(mode="after")
    def _check(self) -> TranscriptomeParams:
        if self.n_signature > self.n_genes:
            raise ValueError("n_signature must be <= n_genes")
        if self.prevalence is not None and len(self.prevalence) != len(self.clinic_sizes):
            raise ValueError("prevalence needs one value per clinic in clinic_sizes")
        return self


DEFAULT_PREVALENCE = (0.2, 0.3, 0.7, 0.25, 0.4)


def generate(p: TranscriptomeParams, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log2 expression, disease label, clinic id) for every patient of every clinic."""
    rng = np.random.default_rng([_random_state(seed), 2021])
    g = p.n_genes
    log_mean = rng.normal(5.0, 1.5, g)  # typical counts e^5 ~ 150, spread over genes
    spread = rng.uniform(0.3, 0.8, g)
    loadings = rng.normal(0, 1, (p.n_modules, g)) * (rng.random((p.n_modules, g)) < 0.1)
    signature = rng.choice(g, p.n_signature, replace=False)
    direction = np.where(np.arange(p.n_signature) % 2 == 0, 1.0, -1.0)
    prevalence = p.prevalence or [
        DEFAULT_PREVALENCE[i % len(DEFAULT_PREVALENCE)] for i in range(len(p.clinic_sizes))
    ]
    xs, ys, sites = [], [], []
    for site, (n, prev) in enumerate(zip(p.clinic_sizes, prevalence, strict=True)):
        offset = rng.normal(0, p.batch_effect, g)
        n_cases = max(1, min(n - 1, round(prev * n)))
        y = rng.permutation(np.r_[np.ones(n_cases), np.zeros(n - n_cases)]).astype(np.int64)
        z = rng.normal(0, 1, (n, p.n_modules))
        noise = rng.normal(0, 1, (n, g))
        effect = np.zeros((n, g))
        effect[:, signature] = np.outer(y, direction * p.signature_effect)
        library = rng.normal(0, 0.2, (n, 1))
        log_expr = log_mean + spread * (z @ loadings + noise + effect + offset) + library
        counts = rng.poisson(np.exp(log_expr))
        xs.append(np.log2(1.0 + counts))
        ys.append(y)
        sites.append(np.full(n, site, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(sites)


def load_transcriptome(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """Synthetic case/control blood transcriptomes; the clinic is each record's group."""
    p = _validate(TranscriptomeParams, params)
    x, y, site = generate(p, seed)
    strata = site * 2 + y
    counts = np.bincount(strata)
    n_test = int(np.ceil(test_fraction * len(y)))
    if counts[counts > 0].min() < 2 or n_test < len(counts[counts > 0]):
        raise ScenarioError(
            f"data.test_fraction: {test_fraction} cannot give every clinic's cases and controls "
            "a share of the test set (raise data.params.clinic_sizes or the test fraction)"
        )
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)),
        test_size=test_fraction,
        random_state=_random_state(seed),
        stratify=strata,
    )
    x_tr, x_te = _standardize(x[idx_tr], x[idx_te])
    data = _make("transcriptome", x_tr, y[idx_tr], x_te, y[idx_te], 2)
    return dataclasses.replace(data, groups_train=site[idx_tr], groups_test=site[idx_te])
