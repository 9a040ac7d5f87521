"""A permissioned, append-only, hash-chained ledger of model commits (swarm learning).

Swarm learning (Warnat-Herresthal et al. 2021) replaces the aggregator with peers that commit
their weights to a permissioned ledger. Here:
- an `Authority` enrols peers in advance: it signs a certificate binding a peer name to the
  peer's Ed25519 public key; its registry is the only list of who may write;
- each `Entry` holds the previous entry's hash, the round, the author, the kind of commit and a
  SHA-256 digest of the weights; the entry hash covers all of it and the author signs that hash
  with its Ed25519 key (`cryptography`);
- `Ledger.append` refuses entries from unenrolled nodes, bad signatures or a broken chain;
- `Ledger.verify` re-checks everything after the fact and names the first altered entry;
  `Ledger.latest_verified` is the read a peer acts on: the newest entry of a kind inside the
  verified prefix of the chain, never one at or after the first bad entry.
Every key (the authority's and each peer's) is a fresh Ed25519 key from the operating system's
randomness (OpenSSL's CSPRNG): nothing in the scenario file, the seed included, lets anyone
forge a commit or a certificate. Runs stay reproducible because nothing downstream depends on
signature bytes: the entry hash (which the chain links and the leader choice use) covers the
header only, and results record verification outcomes, never keys or signatures.
Attacks never receive the `Ledger` (which reaches the authority): they get a `LedgerView`
(`privlab.ledger_view`) that reads entries and submits entries signed with keys they hold.
"""

from __future__ import annotations

import dataclasses
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


def new_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key from the operating system's randomness."""
    return Ed25519PrivateKey.generate()


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
    """A node's name, private key and (if enrolled) certificate: what that node holds."""

    name: str
    key: Ed25519PrivateKey
    certificate: Certificate | None

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


class Authority:
    """Enrols peers before training; its registry is what the ledger trusts.

    Its signing key is random and never leaves this object; the swarm hands attacks a
    `LedgerView`, which holds no reference to the authority."""

    def __init__(self) -> None:
        self._key = new_key()
        self.public_key = self._key.public_key()
        self.registry: dict[str, Certificate] = {}

    def enrol(self, name: str) -> PeerIdentity:
        """A new peer: a fresh key pair and the authority's certificate over its public key."""
        if name in self.registry:
            raise LedgerError(f"peer '{name}' is already enrolled")
        key = new_key()
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
        return sign_entry(draft_entry(self, who.name, round_, kind, weights, meta), who)

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

    def verify(self, upto: int | None = None) -> Verification:
        """Re-check every entry from the genesis (through index `upto`, default all); name the
        first one that fails."""
        last = len(self.storage) - 1 if upto is None else min(upto, len(self.storage) - 1)
        prev = GENESIS
        for i, entry in enumerate(self.storage[: last + 1]):
            try:
                self._check(entry, prev, i)
            except LedgerError as exc:
                return Verification(False, last + 1, i, f"{entry.describe()}: {exc}")
            prev = entry.hash
        return Verification(True, last + 1)

    def latest_verified(
        self, kind: str, author: str | None = None
    ) -> tuple[Entry | None, Verification]:
        """The read a peer acts on: the newest `kind` entry whose chain up to it verifies.

        Entries at or after the first bad one are never returned (a later entry chains through
        the bad one, so it is unverifiable too)."""
        check = self.verify()
        usable = self.storage if check.ok else self.storage[: check.bad_index]
        for entry in reversed(usable):
            if entry.kind == kind and (author is None or entry.author == author):
                return entry, check
        return None, check

    def latest(self, kind: str, author: str | None = None) -> Entry | None:
        for entry in reversed(self.storage):
            if entry.kind == kind and (author is None or entry.author == author):
                return entry
        return None

    def leader_index(self, round_: int, n: int) -> int:
        """Deterministic leader choice from the ledger state: H(head hash, round) mod n."""
        h = hashlib.sha256(f"{self.head_hash}|{round_}".encode()).digest()
        return int.from_bytes(h[:8], "big") % n


def draft_entry(
    ledger: Ledger, author: str, round_: int, kind: str, weights: Weights, meta: dict | None
) -> Entry:
    """An unsigned entry claiming `author`, chained to the ledger's current head."""
    frozen = {k: v.detach().clone() for k, v in weights.items()}
    return Entry(
        len(ledger.storage),
        ledger.head_hash,
        round_,
        author,
        kind,
        weights_digest(frozen),
        dict(meta or {}),
        frozen,
    )


def sign_entry(entry: Entry, key: PeerIdentity | Ed25519PrivateKey) -> Entry:
    """`entry` with its hash recomputed and signed by `key` (whatever name the entry claims)."""
    digest = entry.compute_hash()
    sign = key.sign
    return dataclasses.replace(entry, hash=digest, signature=sign(digest.encode()))
