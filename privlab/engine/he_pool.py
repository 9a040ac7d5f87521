"""Clients encrypt in parallel, as real clients do: worker processes that each hold the
clients' encryption context (the public key, or the clients' shared key) and encrypt a batch
of clients' vectors per round.

The workers are plain subprocesses (`python -m privlab.engine.he_pool`) that import numpy and
TenSEAL only, never the parent's main module: multiprocessing's spawn and forkserver re-import
`__main__` (a script or the `privlab` CLI, i.e. torch), which costs each worker more than a
second of CPU before its first ciphertext. Messages are length-prefixed pickles over the
workers' stdin/stdout. Each round sends one message per worker (its contiguous share of the
clients), so per-round overhead is two pipe transfers per worker, not one per client. Returned:
each client's serialized ciphertexts (the only way a ciphertext leaves a process) and the
seconds it spent encrypting (as in-process; serializing is not counted); each reply also
carries the worker's CPU time so far, so a benchmark can count the CPU of every process.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO

import numpy as np

_HEADER = struct.Struct("<Q")


def encrypt_vector(context: Any, vector: np.ndarray, slots: int) -> tuple[list[Any], float]:
    """Pack `vector` into CKKS ciphertexts of `slots` values each; (CKKSVectors, seconds)."""
    import tenseal as ts

    t0 = time.perf_counter()
    out = [ts.ckks_vector(context, vector[i : i + slots]) for i in range(0, len(vector), slots)]
    return out, time.perf_counter() - t0


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("encryption worker closed its pipe")
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("encryption worker closed its pipe mid-message")
    return pickle.loads(data)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """The worker's loop: the context first, then batches of (vectors, slots) until None."""
    import tenseal as ts

    try:
        context = ts.context_from(_receive(inp))
        tasks = iter(lambda: _receive(inp), None)
        for vectors, slots in tasks:
            _reply(out, context, vectors, slots)
    except EOFError:  # the parent went away: nothing left to encrypt for
        return


def _reply(out: BinaryIO, context: Any, vectors: list[np.ndarray], slots: int) -> None:
    """Encrypt a batch of clients' vectors; send their serialized ciphertexts and seconds."""
    replies = []
    for v in vectors:
        cts, seconds = encrypt_vector(context, v, slots)
        replies.append(([c.serialize() for c in cts], seconds))
    _send(out, (replies, time.process_time()))


def shares(n: int, workers: int) -> list[slice]:
    """Contiguous, balanced shares of n clients over the workers (empty shares dropped)."""
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


class EncryptionPool:
    """`workers` processes standing in for the clients' devices, sharing one context."""

    def __init__(self, context_bytes: bytes, workers: int) -> None:
        self.workers = workers
        self.cpu_seconds = [0.0] * workers
        """CPU seconds each worker had used at its last reply (start-up included)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-m", "privlab.engine.he_pool"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(workers)
        ]
        for p in self._procs:
            assert p.stdin is not None
            _send(p.stdin, context_bytes)

    def encrypt(self, vectors: list[np.ndarray], slots: int) -> list[tuple[list[bytes], float]]:
        """Each worker encrypts its share of the clients; results in the clients' order."""
        parts = shares(len(vectors), self.workers)
        for p, part in zip(self._procs, parts, strict=False):
            assert p.stdin is not None
            _send(p.stdin, (vectors[part], slots))
        out: list[tuple[list[bytes], float]] = []
        for i, p in enumerate(self._procs[: len(parts)]):
            assert p.stdout is not None
            replies, self.cpu_seconds[i] = _receive(p.stdout)
            out.extend(replies)
        return out

    def close(self) -> None:
        for p in self._procs:
            try:
                assert p.stdin is not None
                _send(p.stdin, None)
                p.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self._procs = []


if __name__ == "__main__":
    _out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies on the protocol stream
    serve(sys.stdin.buffer, _out)
