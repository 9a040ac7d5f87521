"""TenSEAL alone: the cryptographic work of one secure-aggregation round and nothing else.

Given the clients' flat weighted vectors (prepared outside the timing), it packs each into
ciphertexts of `slots` values with the public context, sums the ciphertexts slot by slot, and
decrypts the sums with the secret key. `serial` does this in the calling process; `Parallel`
encrypts in worker processes (fork, one task per worker holding its contiguous share of the
clients), which then must serialize the ciphertexts to return them, and the parent
deserializes, sums and decrypts: the least any multi-process encryption has to do.
"""

from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np

_CTX: Any = None


def _sum_and_decrypt(columns: list[list[Any]], secret_key: Any) -> np.ndarray:
    sums = []
    for column in columns:
        acc = column[0] + column[1] if len(column) > 1 else column[0]
        for v in column[2:]:
            acc += v
        sums.append(np.asarray(acc.decrypt(secret_key)))
    vector = np.concatenate(sums)
    return vector[:-1] / vector[-1]


def serial(public: Any, secret: Any, vectors: list[np.ndarray], slots: int) -> np.ndarray:
    """Encrypt every client's vector here, sum, decrypt: the weighted mean (flat)."""
    import tenseal as ts

    cts = [
        [ts.ckks_vector(public, v[i : i + slots]) for i in range(0, len(v), slots)] for v in vectors
    ]
    return _sum_and_decrypt([list(c) for c in zip(*cts, strict=True)], secret.secret_key())


def _load(public_bytes: bytes) -> None:
    global _CTX
    import tenseal as ts

    _CTX = ts.context_from(public_bytes)


def _encrypt_share(task: tuple[list[np.ndarray], int]) -> tuple[list[list[bytes]], int, float]:
    import tenseal as ts

    vectors, slots = task
    out = [
        [ts.ckks_vector(_CTX, v[i : i + slots]).serialize() for i in range(0, len(v), slots)]
        for v in vectors
    ]
    return out, os.getpid(), time.process_time()


class Parallel:
    """Encryption in `workers` forked processes; CPU of each worker read from its replies."""

    def __init__(self, public: Any, workers: int) -> None:
        self.public = public
        self.workers = workers
        self.cpu: dict[int, float] = {}
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=get_context("fork"),
            initializer=_load,
            initargs=(public.serialize(),),
        )

    def round(self, secret: Any, vectors: list[np.ndarray], slots: int) -> np.ndarray:
        import tenseal as ts

        bounds = [round(i * len(vectors) / self.workers) for i in range(self.workers + 1)]
        tasks = [(vectors[a:b], slots) for a, b in itertools.pairwise(bounds) if b > a]
        cts = []
        for share, pid, cpu in self._pool.map(_encrypt_share, tasks):
            self.cpu[pid] = cpu
            cts.extend([ts.ckks_vector_from(self.public, c) for c in client] for client in share)
        return _sum_and_decrypt([list(c) for c in zip(*cts, strict=True)], secret.secret_key())

    def close(self) -> None:
        self._pool.shutdown()
