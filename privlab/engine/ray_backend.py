"""The Ray backend: variants as Ray tasks, on a local Ray that privlab starts (2 CPUs, no
dashboard) or on an existing cluster by address (`ray_address`).

Each task rebuilds its variant from the scenario (data, partition, defenses, attacks) and runs
it exactly as the local backend does: every variant seeds itself, so results are identical to a
local run (tests/test_ray_backend.py). Nothing here is imported unless `backend = "ray"`.
"""

from __future__ import annotations

import os
from typing import Any

from privlab.errors import ScenarioError

LOCAL_CPUS = 2


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ScenarioError(
            "backend: 'ray' needs Ray installed (pip install 'privlab[ray]'); "
            "or use backend = 'local'"
        ) from None
    return ray


def start(address: str | None) -> Any:
    """Connect to the cluster at `address`, or start a local Ray with 2 CPUs."""
    # Opt in to Ray's coming default (no GPU env override on CPU tasks), silencing its warning.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray = _ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(
                num_cpus=LOCAL_CPUS,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    return ray


def _variant_task(scenario: Any, index: int, threads: int) -> tuple[str, dict[str, Any]]:
    import torch

    from privlab.runner import ScenarioRun

    torch.set_num_threads(threads)
    return ScenarioRun(scenario).run_variant(index)


def run_variants(scenario: Any, count: int) -> dict[str, dict[str, Any]]:
    """Every variant of `scenario` as one Ray task; results in the scenario's variant order."""
    import torch

    ray = start(scenario.ray_address)
    local = scenario.model_copy(update={"backend": "local", "ray_address": None})
    task = ray.remote(num_cpus=1)(_variant_task)
    refs = [task.remote(local, i, torch.get_num_threads()) for i in range(count)]
    return dict(ray.get(refs))
