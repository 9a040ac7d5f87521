"""Client partitions: exact membership ground truth under every scheme."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.errors import ScenarioError
from privlab.partition import ClientData, holdout_size, partition
from privlab.scenario import PartitionSpec

SCHEMES = ["iid", "dirichlet", "shards"]


def check_invariants(clients: list[ClientData], n: int, num_clients: int) -> None:
    """Disjoint members/non-members, each index used at most once, every client usable."""
    assert [c.client_id for c in clients] == list(range(num_clients))
    used = []
    for c in clients:
        for idx in (c.train_idx, c.holdout_idx):
            assert idx.dtype == np.int64 and idx.ndim == 1
            assert np.all(np.diff(idx) > 0), "indices sorted and unique"
            assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n)
        assert len(c.train_idx) >= 1 and len(c.holdout_idx) >= 1
        assert not np.intersect1d(c.train_idx, c.holdout_idx).size
        used.append(np.concatenate([c.train_idx, c.holdout_idx]))
    everything = np.concatenate(used)
    assert len(np.unique(everything)) == len(everything), "no index shared between clients"


def assert_same(a: list[ClientData], b: list[ClientData]) -> None:
    assert len(a) == len(b)
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ca.train_idx, cb.train_idx)
        np.testing.assert_array_equal(ca.holdout_idx, cb.holdout_idx)


@st.composite
def cases(draw: st.DrawFn, scheme: str) -> tuple[np.ndarray, PartitionSpec, int]:
    n = draw(st.integers(4, 300))
    num_labels = draw(st.integers(1, 6))
    y = np.array(draw(st.lists(st.integers(0, num_labels - 1), min_size=n, max_size=n)))
    if scheme == "dirichlet":
        # Few clients per label and >= 20 samples each, so a redraw succeeds quickly; the
        # standard scheme cannot feed many clients from few labels (see the alpha error test).
        num_clients = draw(st.integers(1, max(1, min(n // 20, num_labels))))
    else:
        num_clients = draw(st.integers(1, n // 2))
    spec = PartitionSpec(
        scheme=scheme,
        num_clients=num_clients,
        alpha=draw(st.floats(0.5, 100.0)),
        shards_per_client=draw(st.integers(1, max(1, n // num_clients))),
        holdout_fraction=draw(st.floats(0.01, 0.99)),
    )
    return y, spec, draw(st.integers(0, 2**63))


@pytest.mark.parametrize("scheme", SCHEMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_partition_invariants(scheme: str, data: st.DataObject) -> None:
    y, spec, seed = data.draw(cases(scheme))
    clients = partition(y, spec, seed)
    check_invariants(clients, len(y), spec.num_clients)
    assert_same(clients, partition(y, spec, seed))
    for c in clients:
        size = len(c.train_idx) + len(c.holdout_idx)
        assert len(c.holdout_idx) == holdout_size(size, spec.holdout_fraction)


@pytest.mark.parametrize("scheme", ["iid", "shards"])
def test_iid_and_shards_cover_every_index(scheme: str) -> None:
    y = np.repeat(np.arange(10), 50)
    clients = partition(y, PartitionSpec(scheme=scheme, num_clients=7), 0)
    covered = np.concatenate([np.r_[c.train_idx, c.holdout_idx] for c in clients])
    np.testing.assert_array_equal(np.sort(covered), np.arange(len(y)))
    sizes = [len(c.train_idx) + len(c.holdout_idx) for c in clients]
    assert max(sizes) - min(sizes) <= 2


def test_dirichlet_covers_every_index() -> None:
    y = np.repeat(np.arange(10), 50)
    clients = partition(y, PartitionSpec(scheme="dirichlet", num_clients=5, alpha=0.3), 0)
    covered = np.concatenate([np.r_[c.train_idx, c.holdout_idx] for c in clients])
    np.testing.assert_array_equal(np.sort(covered), np.arange(len(y)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seed_changes_the_partition(scheme: str) -> None:
    y = np.repeat(np.arange(10), 40)
    spec = PartitionSpec(scheme=scheme, num_clients=5)
    a, b = partition(y, spec, 0), partition(y, spec, 1)
    assert any(not np.array_equal(x.train_idx, z.train_idx) for x, z in zip(a, b, strict=True))


def mean_label_entropy(y: np.ndarray, clients: list[ClientData], num_classes: int) -> float:
    """Average entropy (bits) of each client's label histogram: low means skewed clients."""
    out = []
    for c in clients:
        counts = np.bincount(y[np.r_[c.train_idx, c.holdout_idx]], minlength=num_classes)
        p = counts[counts > 0] / counts.sum()
        out.append(-(p * np.log2(p)).sum())
    return float(np.mean(out))


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    y = np.repeat(np.arange(10), 100)
    entropies = {
        alpha: np.mean(
            [
                mean_label_entropy(
                    y,
                    partition(y, PartitionSpec(scheme="dirichlet", num_clients=10, alpha=alpha), s),
                    10,
                )
                for s in range(5)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert entropies[0.1] < entropies[1.0] < entropies[100.0]
    assert entropies[100.0] > 0.95 * np.log2(10)  # large alpha: close to IID
    assert entropies[0.1] < 0.6 * np.log2(10)


def test_shards_give_each_client_few_labels() -> None:
    y = np.repeat(np.arange(10), 100)
    clients = partition(y, PartitionSpec(scheme="shards", num_clients=10, shards_per_client=2), 0)
    for c in clients:
        assert len(np.unique(y[np.r_[c.train_idx, c.holdout_idx]])) <= 2


def test_holdout_fraction_rounding() -> None:
    assert holdout_size(10, 0.5) == 5
    assert holdout_size(10, 0.25) == 3  # 2.5 rounds half up
    assert holdout_size(10, 0.01) == 1  # at least one non-member
    assert holdout_size(10, 0.99) == 9  # at least one member
    assert holdout_size(2, 0.5) == 1


def test_too_many_clients_names_num_clients() -> None:
    y = np.zeros(1437, dtype=np.int64)
    with pytest.raises(ScenarioError) as info:
        partition(y, PartitionSpec(num_clients=2000), 0)
    assert str(info.value) == (
        "partition.num_clients: 2000 clients but only 1437 training samples "
        "(each client needs at least 2: one to train on, one held out)"
    )


def test_too_many_shards_names_shards_per_client() -> None:
    y = np.arange(100) % 10
    with pytest.raises(ScenarioError, match=r"^partition\.shards_per_client: .*100 training"):
        partition(y, PartitionSpec(scheme="shards", num_clients=10, shards_per_client=11), 0)


def test_impossible_dirichlet_names_alpha() -> None:
    y = np.repeat(np.arange(2), 20)
    spec = PartitionSpec(scheme="dirichlet", num_clients=20, alpha=0.001)
    with pytest.raises(ScenarioError, match=r"^partition\.alpha: .*20 clients"):
        partition(y, spec, 0)
