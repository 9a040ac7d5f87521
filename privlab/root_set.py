"""The server's clean root set (FLTrust, Cao et al. 2021): seeded test records the server
legitimately holds, moved out of the evaluation set so accuracy stays measured on held-out data."""

from __future__ import annotations

import numpy as np
import torch

from privlab.errors import ScenarioError
from privlab.topologies.base import DefenseStack


def check_root_size(defenses: DefenseStack, test_pool: int) -> int:
    """The root-set size the aggregation rule asks for, refused if it would eat more than half
    of the test pool (called while preparing, before any variant trains)."""
    agg = defenses.aggregation
    size = agg.root_size if agg is not None else 0
    if size > test_pool // 2:
        raise ScenarioError(
            f"{agg.field}.params.root_size: at most half the test pool ({test_pool // 2}), "
            f"got {size}"
        )
    return size


def server_root_split(
    defenses: DefenseStack, tensors: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Move `root_size` seeded test records to the server (FLTrust's clean root set): the server
    legitimately holds them, and they leave the evaluation set so accuracy stays held out."""
    size = check_root_size(defenses, len(tensors["y_test"]))
    if not size:
        return {}
    n = len(tensors["y_test"])
    order = torch.as_tensor(np.random.default_rng([seed, 29]).permutation(n))
    root, keep = order[:size], torch.sort(order[size:]).values
    server = {"server_x": tensors["x_test"][root], "server_y": tensors["y_test"][root]}
    tensors["x_test"], tensors["y_test"] = tensors["x_test"][keep], tensors["y_test"][keep]
    return server
