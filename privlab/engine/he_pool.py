"""Clients encrypt in parallel, as real clients do: worker processes that each hold the
clients' encryption context (the public key, or the clients' shared key) and encrypt one
client's vector per task. Only numpy and TenSEAL are imported in the workers (spawned, so no
torch state is forked). Returned: the serialized ciphertexts and the seconds the client spent
encrypting, which the round's critical path uses."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np

_CONTEXT: Any = None


def _load(context_bytes: bytes) -> None:
    global _CONTEXT
    import tenseal as ts

    _CONTEXT = ts.context_from(context_bytes)


def encrypt_vector(context: Any, vector: np.ndarray, slots: int) -> tuple[list[bytes], float]:
    """Pack `vector` into CKKS ciphertexts of `slots` values each; (serialized, seconds)."""
    import tenseal as ts

    t0 = time.perf_counter()
    out = [
        ts.ckks_vector(context, vector[i : i + slots]).serialize()
        for i in range(0, len(vector), slots)
    ]
    return out, time.perf_counter() - t0


def _ready(_: int) -> bool:
    return _CONTEXT is not None


def _encrypt(args: tuple[np.ndarray, int]) -> tuple[list[bytes], float]:
    return encrypt_vector(_CONTEXT, *args)


class EncryptionPool:
    """A process pool of `workers` clients' devices sharing one encryption context."""

    def __init__(self, context_bytes: bytes, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=_load,
            initargs=(context_bytes,),
        )
        # Start every worker now (process start, TenSEAL import, context load), not in round 1.
        list(self._pool.map(_ready, range(workers)))

    def encrypt(self, vectors: list[np.ndarray], slots: int) -> list[tuple[list[bytes], float]]:
        return list(self._pool.map(_encrypt, [(v, slots) for v in vectors]))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
