"""An attack's restricted view of the swarm's ledger: what a node holding some keys can do.

The swarm never hands an attack the `Ledger` (which reaches the authority and so its signing
key). It hands a `LedgerView` that can
- read entries (copies: mutating what it read changes nothing on the ledger);
- draft entries chained to the current head and submit them; the ledger checks them exactly as
  it checks honest commits, so a submission succeeds only with a valid signature by the key
  enrolled for the claimed author;
- sign with `identity`, the one key the adversary holds (a peer attack: its own peer's key; an
  outsider: none);
- overwrite a stored entry only when the threat model grants write access to a replica's
  storage (`storage_write`): the after-the-fact tampering that verification must catch.
This is an interface boundary, not a sandbox: code running in the same Python process can
always reach further (through closures or the garbage collector). Attacks shipped with privlab
use only this interface; a third-party attack is code the user chose to run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from privlab.ledger import (
    Entry,
    Ledger,
    LedgerError,
    PeerIdentity,
    Verification,
    Weights,
    draft_entry,
)


def _copy(entry: Entry) -> Entry:
    return dataclasses.replace(entry, weights={k: v.clone() for k, v in entry.weights.items()})


class LedgerView:
    """Read entries, submit entries signed with keys the adversary holds (see module doc)."""

    __slots__ = ("_ops", "identity", "storage_write")

    def __init__(
        self, ledger: Ledger, identity: PeerIdentity | None = None, storage_write: bool = False
    ) -> None:
        ops: dict[str, Callable] = {
            "len": lambda: len(ledger.storage),
            "get": lambda i: ledger.storage[i],
            "head": lambda: ledger.head_hash,
            "append": lambda e: ledger.append(e),
            "verify": lambda: ledger.verify(),
            "draft": lambda *a: draft_entry(ledger, *a),
        }
        if storage_write:
            ops["put"] = lambda i, e: ledger.storage.__setitem__(i, e)
        self._ops = ops
        self.identity = identity
        self.storage_write = storage_write

    def __len__(self) -> int:
        return self._ops["len"]()

    @property
    def head_hash(self) -> str:
        return self._ops["head"]()

    def entry(self, index: int) -> Entry:
        if not 0 <= index < len(self):
            raise IndexError(f"ledger has entries 0..{len(self) - 1}, not {index}")
        return _copy(self._ops["get"](index))

    def entries(self) -> list[Entry]:
        return [self.entry(i) for i in range(len(self))]

    def latest(self, kind: str, author: str | None = None) -> Entry | None:
        for i in reversed(range(len(self))):
            e = self._ops["get"](i)
            if e.kind == kind and (author is None or e.author == author):
                return _copy(e)
        return None

    def draft(
        self, author: str, round_: int, kind: str, weights: Weights, meta: dict | None = None
    ) -> Entry:
        """An unsigned entry claiming `author`, chained to the current head."""
        return self._ops["draft"](author, round_, kind, weights, meta)

    def submit(self, entry: Entry) -> None:
        """Append through the ledger's checks; raises LedgerError when refused."""
        self._ops["append"](entry)

    def verify(self) -> Verification:
        return self._ops["verify"]()

    def overwrite(self, index: int, entry: Entry) -> None:
        """Replace a stored entry (only with write access to a replica's storage)."""
        if "put" not in self._ops:
            raise LedgerError("this adversary has no write access to the ledger's storage")
        if not 0 <= index < len(self):
            raise IndexError(f"ledger has entries 0..{len(self) - 1}, not {index}")
        self._ops["put"](index, entry)
