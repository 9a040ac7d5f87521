"""The ledger's trust model against its strongest adversaries (issue 10): keys from the OS,
attacks behind a restricted view, forging, replaying and re-signing refused."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privlab.attacks.swarm_ledger import scenario_derived_key
from privlab.ledger import (
    Authority,
    Ledger,
    LedgerError,
    PeerIdentity,
    public_bytes,
    sign_entry,
    weights_digest,
)
from privlab.ledger_view import LedgerView


def _weights(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), float(v)), "b": torch.arange(2, dtype=torch.float32) + v}


def _ledger(rounds: int = 2) -> tuple[Ledger, list[PeerIdentity]]:
    authority = Authority()
    peers = [authority.enrol(f"peer{k}") for k in range(3)]
    ledger = Ledger(authority)
    for r in range(1, rounds + 1):
        for k, p in enumerate(peers):
            ledger.commit(p, r, "commit", _weights(r + k / 10), {"num_samples": 10 + k})
        ledger.commit(peers[0], r, "merge", _weights(r))
    return ledger, peers


def test_keys_come_from_the_os_not_from_any_seed() -> None:
    a, b = Authority(), Authority()
    pa, pb = a.enrol("peer0"), b.enrol("peer0")
    assert pa.certificate.public_key != pb.certificate.public_key
    assert public_bytes(a.public_key) != public_bytes(b.public_key)
    for seed in (0, 1, 7):  # whatever seed a reader of the scenario tries
        guess = public_bytes(scenario_derived_key(seed, "peer0").public_key())
        assert guess not in (pa.certificate.public_key, pb.certificate.public_key)
    with pytest.raises(LedgerError, match="already enrolled"):
        a.enrol("peer0")


def test_a_key_derived_from_the_scenario_cannot_forge_a_commit() -> None:
    ledger, _ = _ledger(rounds=1)
    view = LedgerView(ledger)
    draft = view.draft("peer1", 2, "commit", _weights(9.0))
    with pytest.raises(LedgerError, match=r"signature does not verify .* 'peer1'"):
        view.submit(sign_entry(draft, scenario_derived_key(0, "peer1")))
    assert len(ledger.storage) == 4 and ledger.verify().ok


def test_own_valid_key_under_another_name_is_refused_and_under_its_own_accepted() -> None:
    ledger, peers = _ledger(rounds=1)
    view = LedgerView(ledger, peers[0])
    draft = view.draft("peer2", 2, "commit", _weights(3.0))
    with pytest.raises(LedgerError, match=r"signature does not verify .* 'peer2'"):
        view.submit(sign_entry(draft, view.identity))
    # control: the same path with the key's own name is an honest commit, and is taken
    view.submit(sign_entry(view.draft("peer0", 2, "commit", _weights(3.0)), view.identity))
    assert ledger.storage[-1].author == "peer0" and ledger.verify().ok


def test_replayed_commits_are_refused_verbatim_and_rechained() -> None:
    ledger, peers = _ledger()
    view = LedgerView(ledger, peers[0])
    old = view.latest("commit", author="peer1")
    assert old is not None
    with pytest.raises(LedgerError, match="index"):
        view.submit(old)
    moved = dataclasses.replace(old, index=len(view), prev_hash=view.head_hash, round=3)
    with pytest.raises(LedgerError, match="signature does not verify"):
        view.submit(dataclasses.replace(moved, hash=moved.compute_hash()))
    assert len(ledger.storage) == 8 and ledger.verify().ok


@pytest.mark.parametrize("signer", ["own", "scenario"])
def test_resigning_a_tampered_chain_is_detected_at_the_first_entry_it_cannot_sign(
    signer: str,
) -> None:
    ledger, peers = _ledger()
    view = LedgerView(ledger, peers[0], storage_write=True)
    target = 4  # peer0's round-2 commit: its own entry, re-signed validly with its own key
    prev = view.entry(target).prev_hash
    for i in range(target, len(view)):
        e = view.entry(i)
        if i == target:
            w = {k: v + 1 for k, v in e.weights.items()}
            e = dataclasses.replace(e, weights=w, digest=weights_digest(w))
        e = dataclasses.replace(e, prev_hash=prev)
        key = view.identity if signer == "own" else scenario_derived_key(0, e.author)
        e = sign_entry(e, key)
        view.overwrite(i, e)
        prev = e.hash
    check = ledger.verify()
    # own key: entry 4 is validly signed, entry 5 (peer1's) is not; scenario keys: none is
    assert not check.ok and check.bad_index == (5 if signer == "own" else 4)
    assert "signature" in check.message


def test_resigning_succeeds_only_with_the_authors_real_keys() -> None:
    """The check has teeth: holding every author's enrolled key is exactly what re-signing
    needs, so the verification above fails for want of keys, not by construction."""
    ledger, peers = _ledger()
    keys = {p.name: p for p in peers}
    old = ledger.storage[4]
    w = {k: v + 1 for k, v in old.weights.items()}
    prev = old.prev_hash
    for i in range(4, len(ledger.storage)):
        e = ledger.storage[i]
        if i == 4:
            e = dataclasses.replace(old, weights=w, digest=weights_digest(w))
        e = sign_entry(dataclasses.replace(e, prev_hash=prev), keys[e.author])
        ledger.storage[i] = e
        prev = e.hash
    assert ledger.verify().ok


def test_view_reads_copies_and_writes_only_with_storage_access() -> None:
    ledger, peers = _ledger()
    view = LedgerView(ledger, peers[1])
    e = view.entry(2)
    e.weights["w"].add_(1.0)  # mutating what was read changes nothing on the ledger
    assert ledger.verify().ok
    with pytest.raises(LedgerError, match="no write access"):
        view.overwrite(2, e)
    with pytest.raises(IndexError):
        view.entry(99)


def test_view_exposes_no_ledger_authority_or_foreign_key() -> None:
    """Nothing reachable from the view's attributes (or their bound-method owners) is the
    ledger, the authority or a private key other than the adversary's own."""
    ledger, peers = _ledger()
    view = LedgerView(ledger, peers[1])
    reachable = [getattr(view, name) for name in view.__slots__]
    reachable += list(view._ops.values())
    reachable += [getattr(f, "__self__", None) for f in view._ops.values()]
    for obj in reachable:
        assert not isinstance(obj, Ledger | Authority)
        if isinstance(obj, Ed25519PrivateKey):
            assert obj is peers[1].key
    assert view.identity is peers[1] and not hasattr(view, "__dict__")
    assert not any(isinstance(r, Authority) for r in gc.get_referents(view))


def test_latest_verified_never_returns_an_entry_at_or_after_a_bad_one() -> None:
    ledger, _ = _ledger(rounds=3)  # merges at 3, 7, 11
    merged, check = ledger.latest_verified("merge")
    assert merged is ledger.storage[11] and check.ok
    ledger.storage[9] = dataclasses.replace(ledger.storage[9], weights=_weights(50.0))
    merged, check = ledger.latest_verified("merge")
    assert not check.ok and check.bad_index == 9 and merged is ledger.storage[7]
    ledger.storage[3] = dataclasses.replace(ledger.storage[3], meta={"x": 1})
    merged, check = ledger.latest_verified("merge")
    assert merged is None and check.bad_index == 3
    assert ledger.verify(upto=2).ok and not ledger.verify(upto=3).ok
