"""A permissioned, append-only, hash-chained ledger of model commits (swarm learning).

Swarm learning (Warnat-Herresthal et al. 2021) replaces the aggregator with peers that commit
their weights to a permissioned ledger. Here:
- an `Authority` enrols peers in advance: it signs a certificate binding a peer name to the
  peer's Ed25519 public key; its registry is the only list of who may write;
- each `Entry` holds the previous entry's hash, the round, the author, the kind of commit and a
  SHA-256 digest of the weights; the entry hash covers all of it and the author signs that hash
  with its Ed25519 key (`cryptography`);
- `Ledger.append` refuses entries from unenrolled nodes, bad signatures or a broken chain;
- `Ledger.verify` re-checks everything after the fact and names the first altered entry.
Keys are derived from the scenario seed, so a run is reproducible (Ed25519 signatures are
deterministic).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privlab.errors import PrivlabError

Weights = dict[str, torch.Tensor]
GENESIS = "0" * 64


class LedgerError(PrivlabError):
    """A commit was refused (unenrolled author, bad signature, broken chain)."""

    exit_code = 3


def weights_digest(weights: Weights) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name].detach().cpu().numpy())
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_key(seed: int, name: str) -> Ed25519PrivateKey:
    """A reproducible Ed25519 key for `name` (simulation only: real peers keep random keys)."""
    secret = hashlib.sha256(f"privlab-ledger|{seed}|{name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(secret)


@dataclass(frozen=True)
class Certificate:
    """The authority's signature over (peer name, public key)."""

    peer: str
    public_key: bytes
    signature: bytes

    def message(self) -> bytes:
        return b"enrol|" + self.peer.encode() + b"|" + self.public_key


@dataclass(frozen=True)
class PeerIdentity:
    """A node's name, private key and (if enrolled) certificate."""

    name: str
    key: Ed25519PrivateKey
    certificate: Certificate | None

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


class Authority:
    """Enrols peers before training; its registry is what the ledger trusts."""

    def __init__(self, seed: int) -> None:
        self._key = derive_key(seed, "authority")
        self.public_key = self._key.public_key()
        self.registry: dict[str, Certificate] = {}
        self.seed = seed

    def enrol(self, name: str) -> PeerIdentity:
        key = derive_key(self.seed, name)
        pub = public_bytes(key.public_key())
        cert = Certificate(name, pub, self._key.sign(b"enrol|" + name.encode() + b"|" + pub))
        self.registry[name] = cert
        return PeerIdentity(name, key, cert)

    def check(self, name: str) -> Certificate:
        """The enrolled certificate for `name`, verified against the authority's key."""
        cert = self.registry.get(name)
        if cert is None:
            raise LedgerError(f"peer '{name}' is not enrolled with the authority")
        try:
            self.public_key.verify(cert.signature, cert.message())
        except InvalidSignature:
            raise LedgerError(f"certificate of '{name}' is not signed by the authority") from None
        return cert


@dataclass(frozen=True)
class Entry:
    index: int
    prev_hash: str
    round: int
    author: str
    kind: str  # "commit" (a peer's local weights) or "merge" (the leader's merged model)
    digest: str
    meta: dict = field(default_factory=dict)
    weights: Weights = field(default_factory=dict, repr=False, compare=False)
    hash: str = ""
    signature: bytes = b""

    def header(self) -> bytes:
        body = {
            "index": self.index,
            "prev_hash": self.prev_hash,
            "round": self.round,
            "author": self.author,
            "kind": self.kind,
            "digest": self.digest,
            "meta": self.meta,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def compute_hash(self) -> str:
        return hashlib.sha256(self.header()).hexdigest()

    def describe(self) -> str:
        return f"entry {self.index} (round {self.round}, {self.kind} by {self.author})"


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    bad_index: int | None = None
    message: str = "ledger verified"


class Ledger:
    """Append-only list of signed entries; every peer holds the same copy."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.storage: list[Entry] = []
        self.rejected: list[str] = []

    @property
    def head_hash(self) -> str:
        return self.storage[-1].hash if self.storage else GENESIS

    def make_entry(
        self, who: PeerIdentity, round_: int, kind: str, weights: Weights, meta: dict | None = None
    ) -> Entry:
        """An entry signed by `who`, chained to the current head."""
        frozen = {k: v.detach().clone() for k, v in weights.items()}
        draft = Entry(
            len(self.storage),
            self.head_hash,
            round_,
            who.name,
            kind,
            weights_digest(frozen),
            dict(meta or {}),
            frozen,
        )
        digest = draft.compute_hash()
        return Entry(
            draft.index,
            draft.prev_hash,
            round_,
            who.name,
            kind,
            draft.digest,
            draft.meta,
            frozen,
            digest,
            who.sign(digest.encode()),
        )

    def append(self, entry: Entry) -> Entry:
        """Check author enrolment, signature, chain and digest; refuse with LedgerError."""
        try:
            self._check(entry, self.head_hash, len(self.storage))
        except LedgerError as exc:
            self.rejected.append(f"round {entry.round}: commit by '{entry.author}' refused: {exc}")
            raise
        self.storage.append(entry)
        return entry

    def commit(
        self, who: PeerIdentity, round_: int, kind: str, weights: Weights, meta: dict | None = None
    ) -> Entry:
        return self.append(self.make_entry(who, round_, kind, weights, meta))

    def _check(self, entry: Entry, prev_hash: str, index: int) -> None:
        cert = self.authority.check(entry.author)
        if entry.index != index:
            raise LedgerError(f"index {entry.index} where {index} was expected")
        if entry.prev_hash != prev_hash:
            raise LedgerError("previous-hash link does not match the chain")
        if weights_digest(entry.weights) != entry.digest:
            raise LedgerError("weights do not match the recorded digest")
        if entry.compute_hash() != entry.hash:
            raise LedgerError("entry hash does not match its contents")
        try:
            Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
                entry.signature, entry.hash.encode()
            )
        except InvalidSignature:
            raise LedgerError(
                f"signature does not verify with the enrolled key of '{entry.author}'"
            ) from None

    def verify(self) -> Verification:
        """Re-check every entry from the genesis; name the first one that fails."""
        prev = GENESIS
        for i, entry in enumerate(self.storage):
            try:
                self._check(entry, prev, i)
            except LedgerError as exc:
                return Verification(False, len(self.storage), i, f"{entry.describe()}: {exc}")
            prev = entry.hash
        return Verification(True, len(self.storage))

    def latest(self, kind: str, author: str | None = None) -> Entry | None:
        for entry in reversed(self.storage):
            if entry.kind == kind and (author is None or entry.author == author):
                return entry
        return None

    def leader_index(self, round_: int, n: int) -> int:
        """Deterministic leader choice from the ledger state: H(head hash, round) mod n."""
        h = hashlib.sha256(f"{self.head_hash}|{round_}".encode()).digest()
        return int.from_bytes(h[:8], "big") % n
