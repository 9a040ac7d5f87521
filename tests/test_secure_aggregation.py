"""CKKS secure aggregation: keys stay off the server, the decrypted mean is the plaintext mean,
late dropouts are excluded, bad parameters are one-line errors, training is unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from privlab.defenses.secure_aggregation import (
    EncryptedUpdate,
    SecureAggregation,
    decrypt_update,
    unframe,
)
from privlab.errors import ScenarioError
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario
from privlab.topologies.federated import weighted_mean

TEMPLATE = {
    "0.weight": torch.zeros(32, 64),
    "0.bias": torch.zeros(32),
    "2.weight": torch.zeros(10, 32),
}


def _defense(**params: object) -> SecureAggregation:
    d = SecureAggregation(ComponentSpec(name="secure_aggregation", params=params), "defenses.0")
    d.setup(6, TEMPLATE)
    return d


def _updates(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in TEMPLATE.items()} for _ in range(n)
    ]


def test_server_holds_only_a_public_context() -> None:
    d = _defense()
    assert d.server is not None
    assert d.server.context.is_private() is False
    assert d.key_holder._context.is_private() is True
    kinds = [m[2] for m in d.setup_messages()]
    assert kinds == ["public_context"]
    assert d.describe()["server_holds_secret_key"] is False


def test_decrypted_aggregate_equals_plaintext_weighted_mean() -> None:
    d = _defense()
    updates, weights = _updates(5), [3.0, 1.0, 7.0, 2.0, 5.0]
    payloads = [d.protect(k, u, w) for k, (u, w) in enumerate(zip(updates, weights, strict=True))]
    assert all(isinstance(p, EncryptedUpdate) for p in payloads)
    mean = d.reveal(d.combine(payloads))
    plain = weighted_mean(updates, weights)
    for k in plain:
        assert torch.allclose(mean[k], plain[k], atol=1e-3)
        assert float((mean[k] - plain[k]).abs().max()) < 1e-5
    assert d.describe()["cost"]["max_abs_error_bound"] <= 1e-5


def test_updates_are_packed_into_the_fewest_ciphertexts() -> None:
    d = _defense(poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 49])
    size = sum(v.numel() for v in TEMPLATE.values()) + 1  # + the weight slot
    payload = d.protect(0, _updates(1)[0], 1.0)
    assert len(payload.frames) == math.ceil(size / 2048) == 2
    cost = d.describe()["cost"]
    assert cost["ciphertexts_per_client"] == 2
    assert cost["plaintext_bytes_per_client"] == 4 * (size - 1)
    # Fixed frames: every client's ciphertexts take the same bytes on the wire.
    assert len({len(f) for f in payload.frames}) == 1


def test_clients_dropping_out_after_encrypting_are_left_out() -> None:
    d = _defense()
    updates, weights = _updates(5, seed=1), [1.0, 2.0, 3.0, 4.0, 5.0]
    sent = []
    for k, (u, w) in enumerate(zip(updates, weights, strict=True)):
        payload = d.protect(k, u, w)
        if k in (1, 3):
            d.discard(k)
            continue
        sent.append(payload)
    mean = d.reveal(d.combine(sent))
    kept = [0, 2, 4]
    plain = weighted_mean([updates[i] for i in kept], [weights[i] for i in kept])
    for k in plain:
        assert torch.allclose(mean[k], plain[k], atol=1e-5)


def test_a_colluding_client_hands_the_server_the_secret_key() -> None:
    import tenseal as ts

    d = _defense(key_holder="clients", colluding_client=2)
    leaked = [m for m in d.setup_messages() if m[2] == "secret_context"]
    assert leaked and leaked[0][0] == "client2" and leaked[0][1] == "server"
    secret = ts.context_from(unframe(leaked[0][3]))
    assert secret.is_private()
    update = _updates(1, seed=3)[0]
    got, weight = decrypt_update(secret, d.protect(4, update, 3.0))
    assert weight == pytest.approx(3.0, abs=1e-5)
    for k in update:
        assert torch.allclose(got[k], update[k], atol=1e-5)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree"),
        ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 60, 60]}, "coeff_mod_bit_sizes"),
        ({"coeff_mod_bit_sizes": [40, 40], "global_scale_bits": 40}, "coeff_mod_bit_sizes"),
        ({"colluding_client": 1}, "params"),
        ({"key_holder": "server"}, "key_holder"),
    ],
)
def test_bad_ckks_parameters_are_one_line_errors(params: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as err:
        SecureAggregation(ComponentSpec(name="secure_aggregation", params=params), "defenses.0")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("defenses.0.params") and field in msg


def test_values_the_parameters_cannot_hold_are_refused() -> None:
    d = _defense(coeff_mod_bit_sizes=[50, 40], global_scale_bits=40)
    big = {k: torch.full(v.shape, 100.0) for k, v in TEMPLATE.items()}
    with pytest.raises(ScenarioError, match="coeff_mod_bit_sizes"):
        d.protect(0, big, 10.0)


HE = 'variants=[{name="plain"}, {name="he", defenses=[{name="secure_aggregation"}]}]'


def test_training_under_he_matches_plaintext_accuracy(tiny_overrides: list[str]) -> None:
    overrides = [o for o in tiny_overrides if not o.startswith("variants")]
    overrides += [HE, "topology.params={late_dropout=0.25}"]
    results = ScenarioRun(load_scenario("default", overrides)).run()
    plain, he = results["variants"]["plain"], results["variants"]["he"]
    assert abs(plain["utility"]["final_accuracy"] - he["utility"]["final_accuracy"]) <= 0.01
    for a, b in zip(plain["utility"]["per_round"], he["utility"]["per_round"], strict=True):
        assert a["participants"] == b["participants"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    cost = he["defenses"][0]["cost"]
    assert cost["bytes_ratio"] > 1
    # Under HE the wire carries ciphertexts: more bytes than the plaintext run.
    assert he["cost"]["bytes_total"] > plain["cost"]["bytes_total"]
