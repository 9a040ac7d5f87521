"""How ciphertexts travel under CKKS secure aggregation: in-process clients hand the server
objects of its public context (no key attached), worker clients send frames; both decrypt to
the plaintext weighted mean, and the frames an observer reads are real ciphertexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privlab.defenses.ckks_packing import flatten, unflatten
from privlab.defenses.secure_aggregation import SecureAggregation, decrypt_update
from privlab.engine.he_pool import shares
from privlab.scenario import ComponentSpec

TEMPLATE = {"w": torch.zeros(30, 70), "b": torch.zeros(30)}  # 2,131 values: 2 ciphertexts


def _updates(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    return [
        {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in TEMPLATE.items()} for _ in range(n)
    ]


def _defense(**params: object) -> SecureAggregation:
    spec = ComponentSpec(
        name="secure_aggregation",
        params={"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 49], **params},
    )
    d = SecureAggregation(spec, "defenses.0")
    d.setup(4, TEMPLATE)
    return d


@pytest.mark.parametrize("key_holder", ["authority", "clients"])
def test_in_process_ciphertexts_carry_no_secret_key(key_holder: str) -> None:
    d = _defense(workers=1, key_holder=key_holder)
    update = _updates(1)[0]
    payload = d.protect(0, update, 2.0)
    assert payload.count == 2
    for v in payload.vectors(d.server.context):
        assert not v.context().is_private()
        with pytest.raises(ValueError, match="secret_key"):
            v.decrypt()
    # The frames an observer reads are the client's ciphertexts: the key holder's secret
    # context opens them to the weighted update (independent check: flatten by hand).
    got, weight = decrypt_update(d.key_holder._context, payload)
    assert weight == pytest.approx(2.0, abs=1e-5)
    for k in update:
        assert torch.allclose(got[k], update[k], atol=1e-5)
    assert payload.nbytes == sum(len(f) for f in payload.frames) == 2 * d.frame_size


def _open(d: SecureAggregation, payload: object) -> np.ndarray:
    """The payload's ciphertexts as held now (objects or frames), opened with the secret key."""
    key = d.key_holder._context.secret_key()
    return np.concatenate([v.decrypt(key) for v in payload.vectors(d.server.context)])


@pytest.mark.parametrize("workers", [1, 2])
def test_the_sum_leaves_every_clients_ciphertext_unchanged(workers: int) -> None:
    d = _defense(workers=workers)
    updates, weights = _updates(3), [1.0, 2.0, 5.0]
    try:
        payloads = d.protect_many(
            [(k, u, w) for k, (u, w) in enumerate(zip(updates, weights, strict=True))]
        )
        before = [_open(d, p) for p in payloads]
        mean = d.reveal(d.combine(payloads))
        after = [_open(d, p) for p in payloads]  # the sum did not add into client 0's own
    finally:
        d.close()
    for b, a in zip(before, after, strict=True):
        assert np.abs(a - b).max() < 1e-6
    for k in TEMPLATE:
        want = sum(u[k] * w for u, w in zip(updates, weights, strict=True)) / sum(weights)
        assert torch.allclose(mean[k], want, atol=1e-5)
    assert d.describe()["cost"]["max_abs_error_bound"] <= 1e-5


def test_flatten_is_the_weighted_vector_and_unflatten_its_inverse() -> None:
    update = _updates(1)[0]
    vec = flatten(update, 3.0)
    want = np.concatenate(
        [update["w"].double().numpy().ravel() * 3.0, update["b"].double().numpy() * 3.0, [3.0]]
    )
    assert vec.dtype == np.float64 and np.array_equal(vec, want)
    back, total = unflatten(vec, (("w", (30, 70)), ("b", (30,))))
    assert total == 3.0 and all(torch.allclose(back[k], update[k]) for k in update)


@pytest.mark.parametrize(("n", "workers"), [(10, 2), (3, 2), (1, 2), (7, 3), (2, 4)])
def test_worker_shares_cover_the_clients_once_and_in_order(n: int, workers: int) -> None:
    parts = shares(n, workers)
    assert [i for p in parts for i in range(n)[p]] == list(range(n))
    sizes = [p.stop - p.start for p in parts]
    assert len(parts) == min(n, workers) and max(sizes) - min(sizes) <= 1
