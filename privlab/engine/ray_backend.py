"""The Ray backend: variants and reference-model groups as Ray tasks, on a local Ray that
privlab starts (2 CPUs, no dashboard) or on an existing cluster by address (`ray_address`).

A variant task rebuilds its variant from the scenario (data, partition, defenses, attacks) and
runs it exactly as the local backend does, sending its reference models (LiRA, RMIA) out as
Ray tasks of GROUP_SIZE models each (privlab.fanout); every unit seeds itself, so results are
identical to a local run (tests/test_ray_backend.py). Clients' local training stays inside the
variant unless the scenario sets `client_tasks` (privlab.engine.ray_clients): then each round's
clients go out as one Ray task per cluster CPU (or N), with bitwise the same results. Off by
default because a task costs milliseconds (its round trip of the global model, the clients'
generator states and their trained weights) while the default jobs' rounds are one batched
computation of milliseconds: measured on this machine (2 CPUs, benchmarks/bench_ray_clients.py)
the default FedAvg job runs at 0.28-0.40x the local speed with client tasks at 100 clients and
0.56-0.82x at 1,000; a CNN job with seconds of local training a round runs at 0.93-1.41x with
two tasks, bounded by the one to two CPUs the shared machine gave two processes (rule of thumb
in ray_clients). Nothing here is imported unless `backend = "ray"`.
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


def _threaded(fn: Any, threads: int, *args: Any) -> Any:
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


class RayTasks:
    """Units of work as Ray tasks of one CPU each; results in input order."""

    kind = "ray"

    def __init__(self, address: str | None) -> None:
        self.ray = start(address)
        self._task = self.ray.remote(num_cpus=1)(_threaded)

    def map(self, fn: Any, args: Any) -> list[Any]:
        import torch

        threads = torch.get_num_threads()
        return list(self.ray.get([self._task.remote(fn, threads, *a) for a in args]))

    def close(self) -> None:
        pass  # a Ray that privlab started lives for the process, as `start` leaves it
