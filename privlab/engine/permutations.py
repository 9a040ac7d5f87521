"""Many clients' `torch.randperm` draws at once, each from its own generator, bit for bit.

The sequential path shuffles a client's n records each epoch with torch.randperm(n,
generator=g). For small n, torch's CPU kernel is Fisher-Yates on 0..n-1: step i swaps
position i with i + (g.random() % (n - i)), one 32-bit Mersenne Twister output per step. A
call costs microseconds of dispatch, and a 1,000-client round makes thousands of them, so here
each client makes one call that draws all its epochs' outputs (`random_(0, L)` draws
g.random() % L; with L a multiple of every modulus n - i, L = lcm(1..n), reducing it again
modulo n - i gives exactly g.random() % (n - i)), and the swaps then run for every client and
epoch at once. The generators end in the same state as after the randperm calls, and the
permutations are equal (tests/test_engine.py checks both against torch.randperm). Sizes with
lcm(1..n) >= 2**32 (n > 22) fall back to torch.randperm itself.
"""

from __future__ import annotations

import math
from functools import cache

import torch

MAX_N = 22  # lcm(1..22) = 232,792,560 < 2**32; lcm(1..23) is not


@cache
def _modulus(n: int) -> int:
    return math.lcm(*range(1, n + 1))


def epoch_permutations(
    generators: list[torch.Generator], sizes: list[int], epochs: int, *, values: bool = True
) -> torch.Tensor | None:
    """Each client's `epochs` permutations of range(n), concatenated in (client, epoch) order:
    torch.cat([torch.randperm(n, generator=g) for g, n in ... for _ in range(epochs)]).
    With `values` False only the generators advance (a full batch needs no order)."""
    if max(sizes) > MAX_N:
        perms = [
            torch.randperm(n, generator=g)
            for g, n in zip(generators, sizes, strict=True)
            for _ in range(epochs)
        ]
        return torch.cat(perms) if values else None
    counts = [epochs * (n - 1) if n > 1 else 0 for n in sizes]
    if not values:  # the same draws into one reused buffer, only to advance the generators
        buf = torch.empty(max(counts), dtype=torch.long)
        views = {c: buf[:c] for c in set(counts) if c}
        for g, n, c in zip(generators, sizes, counts, strict=True):
            if c:
                views[c].random_(0, _modulus(n), generator=g)
        return None
    draws = torch.empty(sum(counts), dtype=torch.long)
    off = 0
    for g, n, c in zip(generators, sizes, counts, strict=True):
        if c:
            draws[off : off + c].random_(0, _modulus(n), generator=g)
            off += c
    # Row r = (client, epoch): its n - 1 draws, padded to the widest client.
    width = max(sizes)
    n_row = torch.tensor(sizes).repeat_interleave(epochs)
    steps = (n_row - 1).clamp_min(0)
    rows = len(n_row)
    r = torch.zeros(rows, max(width - 1, 1), dtype=torch.long)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), steps.cumsum(0)[:-1]])
    pos = torch.arange(len(draws)) - starts.repeat_interleave(steps)
    r[torch.arange(rows).repeat_interleave(steps), pos] = draws
    perm = torch.arange(width).repeat(rows, 1)
    for i in range(width - 1):  # Fisher-Yates, every row at once; rows with n - i <= 1 stay
        z = (i + r[:, i] % (n_row - i).clamp_min(1)).unsqueeze(1)
        here = perm[:, i].clone()
        perm[:, i] = perm.gather(1, z).squeeze(1)
        perm.scatter_(1, z, here.unsqueeze(1))
    return perm[torch.arange(width) < n_row.unsqueeze(1)]
