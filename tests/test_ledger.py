"""The permissioned ledger: enrolment, Ed25519 signatures, hash chain, after-the-fact checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.ledger import (
    Authority,
    Ledger,
    LedgerError,
    PeerIdentity,
    new_key,
    weights_digest,
)


def _weights(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), float(v)), "b": torch.arange(2, dtype=torch.float32) + v}


def _ledger(n_peers: int = 3, rounds: int = 2) -> tuple[Ledger, list[PeerIdentity]]:
    authority = Authority()
    peers = [authority.enrol(f"peer{k}") for k in range(n_peers)]
    ledger = Ledger(authority)
    for r in range(1, rounds + 1):
        for k, p in enumerate(peers):
            ledger.commit(p, r, "commit", _weights(r + k / 10), {"num_samples": 10 + k})
        ledger.commit(peers[0], r, "merge", _weights(r))
    return ledger, peers


def test_honest_ledger_verifies_and_signatures_are_real_ed25519() -> None:
    ledger, _ = _ledger()
    assert ledger.verify().ok and ledger.verify().entries == 8
    entry = ledger.storage[1]
    pub = Ed25519PublicKey.from_public_bytes(ledger.authority.registry["peer1"].public_key)
    pub.verify(entry.signature, entry.hash.encode())  # raises if not a valid signature
    assert entry.prev_hash == ledger.storage[0].hash


def test_digest_depends_on_every_value_and_name() -> None:
    w = _weights(1.0)
    assert weights_digest(w) == weights_digest({k: v.clone() for k, v in w.items()})
    w2 = {k: v.clone() for k, v in w.items()}
    w2["w"][2, 1] += 1e-6
    assert weights_digest(w2) != weights_digest(w)
    assert weights_digest({"x": w["w"], "b": w["b"]}) != weights_digest(w)


def test_unenrolled_node_is_refused_and_logged() -> None:
    ledger, _ = _ledger(rounds=1)
    intruder = PeerIdentity("intruder", new_key(), None)
    with pytest.raises(LedgerError, match="'intruder' is not enrolled"):
        ledger.commit(intruder, 2, "commit", _weights(0.0))
    assert len(ledger.storage) == 4 and "intruder" in ledger.rejected[0]
    assert ledger.verify().ok


def test_impersonating_an_enrolled_peer_fails_the_signature_check() -> None:
    ledger, _ = _ledger(rounds=1)
    fake = PeerIdentity("peer1", new_key(), None)
    with pytest.raises(LedgerError, match=r"signature does not verify .* .peer1."):
        ledger.commit(fake, 2, "commit", _weights(0.0))


def test_forged_certificate_in_the_registry_is_refused() -> None:
    ledger, _ = _ledger(rounds=1)
    rogue = new_key()
    from privlab.ledger import Certificate, public_bytes

    pub = public_bytes(rogue.public_key())
    ledger.authority.registry["rogue"] = Certificate("rogue", pub, rogue.sign(b"x"))
    with pytest.raises(LedgerError, match="not signed by the authority"):
        ledger.commit(PeerIdentity("rogue", rogue, None), 2, "commit", _weights(0.0))


def test_altered_weights_are_detected_naming_the_entry() -> None:
    ledger, _ = _ledger()
    old = ledger.storage[5]
    ledger.storage[5] = dataclasses.replace(old, weights=_weights(42.0))
    check = ledger.verify()
    assert not check.ok and check.bad_index == 5
    assert check.message.startswith("entry 5 (round 2, commit by peer1)")
    assert "digest" in check.message


def test_altered_header_and_rehash_are_detected() -> None:
    ledger, _ = _ledger()
    old = ledger.storage[2]
    changed = dataclasses.replace(old, round=9)
    ledger.storage[2] = changed
    assert ledger.verify().bad_index == 2 and "hash" in ledger.verify().message
    # recomputing the hash does not help: the author's signature no longer matches
    ledger.storage[2] = dataclasses.replace(changed, hash=changed.compute_hash())
    check = ledger.verify()
    assert check.bad_index == 2 and "signature" in check.message


def test_removed_entry_breaks_the_chain_at_the_next_one() -> None:
    ledger, _ = _ledger()
    del ledger.storage[3]
    check = ledger.verify()
    assert check.bad_index == 3 and not check.ok


def test_leader_choice_is_deterministic_and_depends_on_the_ledger_state() -> None:
    a, _ = _ledger()
    b, _ = _ledger()
    assert [a.leader_index(r, 5) for r in range(20)] == [b.leader_index(r, 5) for r in range(20)]
    assert len({a.leader_index(r, 5) for r in range(50)}) > 1
    assert all(0 <= a.leader_index(r, 3) < 3 for r in range(30))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 7), st.integers(0, 5), st.floats(-1e3, 1e3).filter(lambda v: v != 0))
def test_any_single_value_change_is_caught_at_that_entry(
    index: int, pos: int, delta: float
) -> None:
    ledger, _ = _ledger()
    old = ledger.storage[index]
    w = {k: v.clone() for k, v in old.weights.items()}
    flat = w["w"].view(-1)
    before = flat[pos].item()
    flat[pos] += delta
    if flat[pos].item() == before:  # below float32 resolution: nothing changed
        return
    ledger.storage[index] = dataclasses.replace(old, weights=w)
    assert ledger.verify().bad_index == index
