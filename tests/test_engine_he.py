"""Clients encrypt in parallel worker processes: the decrypted aggregate is still the plaintext
weighted mean (computed here directly), and rounds report their critical path."""

from __future__ import annotations

import pytest
import torch

from privlab.defenses.secure_aggregation import SecureAggregation
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario

TEMPLATE = {"w": torch.zeros(40, 30), "b": torch.zeros(40)}


@pytest.mark.parametrize("key_holder", ["authority", "clients"])
def test_parallel_encryption_decrypts_to_the_weighted_mean(key_holder: str) -> None:
    spec = ComponentSpec(name="secure_aggregation", params={"workers": 2, "key_holder": key_holder})
    d = SecureAggregation(spec, "defenses.0")
    d.setup(5, TEMPLATE)
    g = torch.Generator().manual_seed(0)
    updates = [
        {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in TEMPLATE.items()} for _ in range(5)
    ]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    try:
        payloads = d.protect_many(
            [(k, u, w) for k, (u, w) in enumerate(zip(updates, weights, strict=True))]
        )
        assert d._pool is not None and d._pool.workers == 2  # really in worker processes
        assert sorted(d.client_seconds) == [0, 1, 2, 3, 4]
        d.discard(1)  # client 1 drops out after encrypting: out of numerator and denominator
        kept = [0, 2, 3, 4]
        mean = d.reveal(d.combine([payloads[k] for k in kept]))
    finally:
        d.close()
    total = sum(weights[k] for k in kept)
    for key in TEMPLATE:
        want = sum(updates[k][key] * (weights[k] / total) for k in kept)
        assert torch.allclose(mean[key], want, atol=1e-4)
    assert d.describe()["cost"]["max_abs_error_bound"] <= 1e-4


def test_rounds_report_their_critical_path_apart_from_wall_time() -> None:
    overrides = [
        "partition.num_clients=4",
        "topology.rounds=2",
        "model.params={hidden=[16]}",
        "attacks=[]",
        "expectations=[]",
        "topology.network={uplink_mbps=1.0, downlink_mbps=10.0, latency_ms=20.0}",
        'variants=[{name="he", defenses=[{name="secure_aggregation", params={workers=2}}]}]',
    ]
    v = ScenarioRun(load_scenario(None, overrides)).run()["variants"]["he"]
    crit = v["cost"]["critical_path"]
    # The upload of one client's ciphertexts at 1 Mbps alone takes bytes * 8 / 1e6 seconds.
    upload = v["defenses"][0]["cost"]["ciphertext_bytes_per_client"] * 8 / 1e6
    assert len(crit["seconds_per_round"]) == 2
    assert all(c > upload for c in crit["seconds_per_round"])
    assert crit["seconds"] == pytest.approx(sum(crit["seconds_per_round"]), abs=1e-3)
