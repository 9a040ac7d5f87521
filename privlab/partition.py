"""Client partitions with exact membership ground truth.

Each client's share of the training pool is split into samples it trains on (members) and
samples it keeps out of training (holdout: exact non-members drawn from the same local
distribution), so membership-inference attacks are scored against the truth, not a proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privlab.errors import ScenarioError
from privlab.scenario import PartitionSpec

MAX_DIRICHLET_TRIES = 1000
MIN_CLIENT_SIZE = 2
"""One sample to train on and one held out."""


@dataclass(frozen=True)
class ClientData:
    """One client's members (train_idx) and exact non-members (holdout_idx) in x_train."""

    client_id: int
    train_idx: np.ndarray
    holdout_idx: np.ndarray


def partition(
    y: np.ndarray, spec: PartitionSpec, seed: int, groups: np.ndarray | None = None
) -> list[ClientData]:
    """Split the pool's indices across clients by `spec.scheme`, then into train/holdout."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    _check_sizes(len(y), spec)
    rng = np.random.default_rng(seed)
    if spec.scheme == "iid":
        shares = iid_split(len(y), spec.num_clients, rng)
    elif spec.scheme == "by_group":
        shares = group_split(groups, spec.num_clients)
    elif spec.scheme == "dirichlet":
        shares = dirichlet_split(y, spec.num_clients, spec.alpha, rng)
    else:
        shares = shards_split(y, spec.num_clients, spec.shards_per_client, rng)
    return [_client(cid, share, spec.holdout_fraction, rng) for cid, share in enumerate(shares)]


def _check_sizes(n: int, spec: PartitionSpec) -> None:
    if spec.num_clients > n // MIN_CLIENT_SIZE:
        raise ScenarioError(
            f"partition.num_clients: {spec.num_clients} clients but only {n} training samples "
            "(each client needs at least 2: one to train on, one held out)"
        )
    num_shards = spec.num_clients * spec.shards_per_client
    if spec.scheme == "shards" and num_shards > n:
        raise ScenarioError(
            f"partition.shards_per_client: {spec.num_clients} clients x "
            f"{spec.shards_per_client} shards = {num_shards} shards but only {n} training "
            f"samples (at most {n // spec.num_clients} shards per client)"
        )


def iid_split(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into near-equal parts."""
    return np.array_split(rng.permutation(n), num_clients)


def dirichlet_split(
    y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew: per class, client shares ~ Dir(alpha) (Hsu et al. 2019; FedLab hetero-dir).

    As in FedLab / NIID-Bench, a client already holding its fair share (n / num_clients) gets
    no more of later classes, which bounds size imbalance. Redrawn until every client has at
    least MIN_CLIENT_SIZE samples.
    """
    n = len(y)
    for _ in range(MAX_DIRICHLET_TRIES):
        shares = _dirichlet_draw(y, num_clients, alpha, rng)
        if min(len(s) for s in shares) >= MIN_CLIENT_SIZE:
            return shares
    raise ScenarioError(
        f"partition.alpha: no dirichlet partition with alpha={alpha} gave each of "
        f"{num_clients} clients at least {MIN_CLIENT_SIZE} of {n} samples in "
        f"{MAX_DIRICHLET_TRIES} draws (raise partition.alpha or lower partition.num_clients)"
    )


def _dirichlet_draw(
    y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(y)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        props = rng.dirichlet(np.full(num_clients, alpha))
        balanced = props * (sizes < n / num_clients)
        # With tiny alpha the open clients' weights can all underflow to 0: fall back.
        props = balanced / balanced.sum() if balanced.sum() > 0 else props / props.sum()
        cuts = (np.cumsum(props) * len(idx)).astype(np.int64)[:-1]
        for cid, chunk in enumerate(np.split(idx, cuts)):
            parts[cid].append(chunk)
            sizes[cid] += len(chunk)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def group_split(groups: np.ndarray | None, num_clients: int) -> list[np.ndarray]:
    """Client k holds every record of group k (a clinic's patients stay at that clinic)."""
    if groups is None:
        raise ScenarioError(
            "partition.scheme: 'by_group' needs a data set with groups (e.g. 'transcriptome')"
        )
    sizes = np.bincount(groups, minlength=num_clients)
    if len(sizes) != num_clients or sizes.min() < MIN_CLIENT_SIZE:
        raise ScenarioError(
            f"partition.num_clients: 'by_group' needs one client per group: the data set has "
            f"{len(sizes)} groups of sizes {sizes.tolist()} (each at least {MIN_CLIENT_SIZE}), "
            f"got num_clients = {num_clients}"
        )
    return [np.flatnonzero(groups == k) for k in range(num_clients)]


def shards_split(
    y: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): label-sorted shards dealt out at random.

    Ties within a label are ordered randomly; shards are near-equal so no sample is dropped.
    """
    order = rng.permutation(len(y))
    by_label = order[np.argsort(y[order], kind="stable")]
    shards = np.array_split(by_label, num_clients * shards_per_client)
    dealt = rng.permutation(len(shards)).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


def _client(
    client_id: int, share: np.ndarray, holdout_fraction: float, rng: np.random.Generator
) -> ClientData:
    """Random train/holdout split of one client's share, at least one sample on each side."""
    share = rng.permutation(share)
    n_hold = holdout_size(len(share), holdout_fraction)
    return ClientData(
        client_id=client_id,
        train_idx=np.sort(share[n_hold:]).astype(np.int64),
        holdout_idx=np.sort(share[:n_hold]).astype(np.int64),
    )


def holdout_size(n: int, holdout_fraction: float) -> int:
    """round(n * fraction), half up, clamped to 1..n-1."""
    return int(min(max(np.floor(n * holdout_fraction + 0.5), 1), n - 1))
