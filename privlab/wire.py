"""The wire: every message that crosses between parties, counted and shown to observers.

Topologies never hand data to attacks directly: they `send` messages, and each attack observes
exactly the messages its threat model can see (the server sees what is sent to it, an
eavesdropper sees everything, an outsider sees nothing). Bytes per round come from here too, so
cost is measured on what was really sent (ciphertexts under HE, activations in split learning).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SERVER = "server"


def client(k: int) -> str:
    return f"client{k}"


def payload_bytes(payload: Any) -> int:
    """Serialized size: tensors by numel * element size; objects with serialize() by length."""
    import torch

    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, Mapping):
        return sum(payload_bytes(v) for v in payload.values())
    if isinstance(payload, list | tuple):
        return sum(payload_bytes(v) for v in payload)
    if isinstance(payload, bytes | bytearray):
        return len(payload)
    if hasattr(payload, "nbytes") and isinstance(payload.nbytes, int):
        return payload.nbytes
    if hasattr(payload, "serialize"):
        return len(payload.serialize())
    if isinstance(payload, int | float):
        return 8
    raise TypeError(f"cannot size payload of type {type(payload).__name__}")


@dataclass(frozen=True)
class Message:
    round: int
    sender: str
    receiver: str
    kind: str  # "global_model", "update", "raw_data", "activations", "gradients", ...
    payload: Any
    nbytes: int


Observer = Callable[[Message], None]


class Wire:
    """Routes messages to observers whose visibility predicate accepts them; counts bytes."""

    def __init__(self) -> None:
        self._observers: list[tuple[Callable[[Message], bool], Observer]] = []
        self.bytes_by_round: dict[int, int] = defaultdict(int)
        self.traffic: dict[int, dict[str, list[int]]] = defaultdict(dict)
        """Per round, per party: [bytes sent, bytes received, messages sent, received]."""

    def watched(self, round_: int, sender: str, receiver: str, kind: str) -> bool:
        """Whether any observer would see such a message: if not, a topology may skip building
        it and only `count` its bytes (the threat models decide on sender, receiver, kind)."""
        if not self._observers:
            return False
        probe = Message(round_, sender, receiver, kind, None, 0)
        return any(can_see(probe) for can_see, _ in self._observers)

    def count(self, round_: int, sender: str, receiver: str, nbytes: int) -> None:
        """Account for a message nobody observes, without building it."""
        self.bytes_by_round[round_] += nbytes
        for party, i in ((sender, 0), (receiver, 1)):
            row = self.traffic[round_].setdefault(party, [0, 0, 0, 0])
            row[i] += nbytes
            row[i + 2] += 1

    def count_star(
        self, round_: int, hub: str, spokes: list[str], nbytes: int, *, outward: bool
    ) -> None:
        """`count` for one unobserved message of nbytes between the hub and each spoke (hub to
        spokes when `outward`, as a broadcast; else spokes to hub, as uploads), in one pass."""
        if not spokes:
            return
        n = len(spokes)
        self.bytes_by_round[round_] += nbytes * n
        traffic = self.traffic[round_]
        hub_row = traffic.setdefault(hub, [0, 0, 0, 0])
        h, o = (0, 1) if outward else (1, 0)  # the hub's side of the row, the spokes' side
        hub_row[h] += nbytes * n
        hub_row[h + 2] += n
        for party in spokes:
            row = traffic.get(party)
            if row is None:
                row = traffic[party] = [0, 0, 0, 0]
            row[o] += nbytes
            row[o + 2] += 1

    def subscribe(self, can_see: Callable[[Message], bool], observer: Observer) -> None:
        self._observers.append((can_see, observer))

    def send(self, round_: int, sender: str, receiver: str, kind: str, payload: Any) -> Message:
        msg = Message(round_, sender, receiver, kind, payload, payload_bytes(payload))
        self.count(round_, sender, receiver, msg.nbytes)
        for can_see, observer in self._observers:
            if can_see(msg):
                observer(msg)
        return msg
