"""A chunk of stacked clients' batches, laid out for the vectorised engine (padded per client)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkPlan:
    """A chunk's batches in a padded per-client layout: client i's record j sits at flat row
    i * n1 + j of `x` / `y`; padded rows are zero records with zero loss weight.

    Batched (`flat` set): step t's batch is rows flat[:, t] ([m, B], padded slots pointing
    to each client's last, zero row), with labels y [m, steps, B] and weights [m, steps, B, 1].
    Full batch (`flat` None): every step takes all of a client's rows, in record order, with
    labels y [m, n1] and weights [m, n1, 1]."""

    flat: torch.Tensor | None
    y: torch.Tensor
    weight: torch.Tensor  # 1 / (client's real rows in the batch), 0 on padding
    x: torch.Tensor  # [m * n1, features]
    real: torch.Tensor  # [m * n1]: 1 on a client's records, 0 on padding rows
    active: list[int]  # clients still training at each step (a prefix of the chunk)
    n1: int  # rows per client

    @property
    def m(self) -> int:
        return self.x.shape[0] // self.n1

    def rows(self, step: int, m: int) -> torch.Tensor | None:
        """Step `step`'s batch rows of the first m clients, flat [m * B] (None: all rows)."""
        return None if self.flat is None else self.flat[:m, step].reshape(-1)

    def labels(self, step: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels [m, rows], loss weights [m, rows, 1]) of that batch."""
        if self.flat is None:
            return prefix(self.y, m), prefix(self.weight, m)
        return self.y[:m, step], self.weight[:m, step]

    def steps(self) -> int:
        return len(self.active)

    def rows_per_step(self) -> int:
        return self.n1 if self.flat is None else self.flat.shape[2]


def take(t: torch.Tensor, rows: torch.Tensor | None, m: int, n1: int) -> torch.Tensor:
    """Rows of a flat [clients * n1, k] tensor as [m, rows per client, k] (a view when
    `rows` is None: all rows of the first m clients)."""
    if rows is None:
        return prefix(t, m * n1).view(m, n1, -1)
    return t.index_select(0, rows).view(m, -1, t.shape[1])


def prefix(t: torch.Tensor, m: int) -> torch.Tensor:
    """The first m clients' slice (t itself when it holds exactly m: no view to build)."""
    return t if t.shape[0] == m else t[:m]
