"""The same FedAvg job in Flower's simulation (and pfl-research when installed), beside privlab.

Same data, partition, model (the default MLP [128]), recipe (batch 16, 2 local epochs, lr 0.1)
and rounds as benchmarks/run_all.py; each framework's whole job is timed from the call that
starts it to its return, as a user experiences it (Flower starts its own Ray). Installed by the
optional extra: pip install 'privlab[bench]'.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.nn import functional as F

from privlab.models import build_model


def _job(run):  # type: ignore[no-untyped-def]
    _, s, _, _, data, clients = run.variants[0]
    torch.manual_seed(s.seed)
    model = build_model(s.model, data.input_shape, data.num_classes)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    shards = [(x[torch.as_tensor(c.train_idx)], y[torch.as_tensor(c.train_idx)]) for c in clients]
    return s, model, shards


def _local_sgd(model, cx, cy, spec, seed: int) -> None:  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(spec.local_epochs):
        order = torch.randperm(len(cy), generator=gen)
        for i in range(0, len(cy), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(cx[idx]), cy[idx]).backward()
            opt.step()


def flower_seconds(run) -> float | None:  # type: ignore[no-untyped-def]
    """Flower 1.42 simulation (ServerApp / ClientApp, FedAvg, Ray backend); None if absent."""
    try:
        from flwr.client import ClientApp, NumPyClient
        from flwr.common import Context, ndarrays_to_parameters
        from flwr.server import ServerApp, ServerAppComponents, ServerConfig
        from flwr.server.strategy import FedAvg
        from flwr.simulation import run_simulation
    except ImportError:
        return None
    s, model, shards = _job(run)
    spec, n = s.topology, len(shards)

    def weights(m):  # type: ignore[no-untyped-def]
        return [v.detach().numpy().copy() for v in m.state_dict().values()]

    class Client(NumPyClient):
        def __init__(self, k: int) -> None:
            self.k = k

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            local = copy.deepcopy(model)
            keys = list(local.state_dict())
            local.load_state_dict(
                {k: torch.as_tensor(v) for k, v in zip(keys, parameters, strict=True)}
            )
            cx, cy = shards[self.k]
            _local_sgd(local, cx, cy, spec, self.k)
            return weights(local), len(cy), {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return Client(int(context.node_config["partition-id"])).to_client()

    def server_fn(context: Context):  # type: ignore[no-untyped-def]
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(weights(model)),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=spec.rounds))

    t0 = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return time.perf_counter() - t0


def framework_rows(rounds: int, clients: tuple[int, ...] = (10, 100)) -> list[str]:
    from run_all import privlab_fedavg, scenario_run

    rows = []
    for n in clients:
        run = scenario_run(n, rounds, "auto")
        t0 = time.perf_counter()
        privlab_fedavg(run)
        ours = time.perf_counter() - t0
        flower = flower_seconds(scenario_run(n, rounds, "auto"))
        if flower is None:
            rows.append(f"{n:>6} clients: Flower not installed (pip install 'privlab[bench]')")
        else:
            rows.append(
                f"{n:>6} clients: Flower simulation {flower:.2f} s, privlab {ours:.3f} s: "
                f"privlab {flower / ours:.0f}x faster (target >= 50x at 100)"
            )
        print(rows[-1], flush=True)
    return rows
