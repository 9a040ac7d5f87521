"""What CKKS secure aggregation puts on the wire, and how updates are packed into slots.

A client's update is flattened to [w * u_1, ..., w * u_D, w] (weighted values, then its weight)
and packed into ciphertexts of poly_modulus_degree / 2 slots each. On the wire every ciphertext
is a fixed-size frame (length prefix, zero padding), so sizes reveal nothing.

A payload holds its ciphertexts either as TenSEAL objects linked to the *server's public*
context (clients that encrypted in this process) or as frames (clients that encrypted in a
worker process, where serializing is the only way out). Frames of in-process ciphertexts are
produced when something reads them (an observer on the wire, a leaked-key attack); the byte
count needs no serializing, since every frame has the same size. The bytes a reader gets are
those a real client would send; the server's sum of the objects equals the sum of the
deserialized frames exactly (addition is deterministic), so skipping the round trip changes
nothing but the time spent.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import torch

Layout = tuple[tuple[str, tuple[int, ...]], ...]
FRAME = 1024


class Ciphertexts:
    """Packed CKKS ciphertexts as the wire sees them: fixed-size frames, made on demand."""

    def __init__(
        self,
        layout: Layout,
        frame_size: int,
        *,
        vectors: tuple[Any, ...] | None = None,
        frames: tuple[bytes, ...] | None = None,
    ) -> None:
        if (vectors is None) == (frames is None):
            raise ValueError("give the ciphertexts either as TenSEAL objects or as frames")
        self.layout = layout
        self.frame_size = frame_size
        self._vectors = vectors
        self._frames = frames

    @property
    def count(self) -> int:
        held = self._vectors if self._vectors is not None else self._frames
        assert held is not None
        return len(held)

    @property
    def frames(self) -> tuple[bytes, ...]:
        """The serialized ciphertexts in their frames (what a real client uploads)."""
        if self._frames is None:
            assert self._vectors is not None
            self._frames = tuple(frame(v.serialize(), self.frame_size) for v in self._vectors)
        return self._frames

    @property
    def nbytes(self) -> int:
        if self._frames is not None:
            return sum(len(f) for f in self._frames)
        return self.count * self.frame_size

    def vectors(self, context: Any) -> list[Any]:
        """The ciphertexts as TenSEAL objects of `context` (deserialized from frames if need
        be). Objects already held are linked to the server's public context."""
        if self._vectors is not None:
            return list(self._vectors)
        import tenseal as ts

        return [ts.ckks_vector_from(context, unframe(f)) for f in self.frames]


class EncryptedUpdate(Ciphertexts):
    """What one client sends: its packed, encrypted, weighted update."""


class EncryptedSum(Ciphertexts):
    """The server's sum of the ciphertexts that arrived (still encrypted)."""

    def __init__(self, layout: Layout, frame_size: int, count: int, **held: Any) -> None:
        super().__init__(layout, frame_size, **held)
        self.clients = count


def layout_of(update: dict[str, torch.Tensor]) -> Layout:
    return tuple((k, tuple(v.shape)) for k, v in update.items())


def flatten(update: dict[str, torch.Tensor], weight: float) -> np.ndarray:
    """[w * u_1, ..., w * u_D, w]: weighted values plus the weight in the last slot."""
    size = sum(v.numel() for v in update.values())
    out = np.empty(size + 1, dtype=np.float64)
    pos = 0
    for v in update.values():
        n = v.numel()
        flat = v.detach().reshape(-1).numpy()
        np.multiply(flat, weight, out=out[pos : pos + n], dtype=np.float64)
        pos += n
    out[-1] = weight
    return out


def unflatten(vector: np.ndarray, layout: Layout) -> tuple[dict[str, torch.Tensor], float]:
    """Inverse of `flatten`: (sum of weighted updates / total weight, total weight)."""
    total = float(vector[-1])
    out, pos = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = torch.as_tensor(vector[pos : pos + n] / total, dtype=torch.float32).reshape(
            shape
        )
        pos += n
    return out, total


def frame(data: bytes, size: int) -> bytes:
    """Length prefix and zero padding to a fixed size (sizes then reveal nothing)."""
    body = struct.pack("<I", len(data)) + data
    if len(body) > size:
        raise ValueError(f"a {len(data)}-byte ciphertext does not fit its {size}-byte frame")
    return body + b"\0" * (size - len(body))


def context_frame(data: bytes) -> bytes:
    """Serialized contexts vary by a few hundred bytes (compression): 64 KiB frames."""
    return frame(data, math.ceil((len(data) + 4 + 8192) / 65536) * 65536)


def unframe(data: bytes) -> bytes:
    (n,) = struct.unpack("<I", data[:4])
    return data[4 : 4 + n]
