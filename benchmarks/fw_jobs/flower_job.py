"""The FedAvg job in Flower's simulation (flwr 1.42, `flwr[simulation]`: Ray backend).

Runs in its own venv (benchmarks/README.md): `python flower_job.py JOB.npz`. Timed, inside
this process: the `run_simulation` call, from its start to its return (Flower starts its Ray
runtime and supernodes inside it, as a user's run does; every round all clients fit, FedAvg
takes the sample-weighted mean, and the server evaluates on the test set). Not timed:
interpreter start-up, imports, reading the job file. Ray's local cluster is kept on the
loopback address (Ray's local-only mode, set before Flower imports Ray).

The job is privlab's (job.py): same clients' records, initial weights and recipe.
"""

from __future__ import annotations

import copy
import logging
import os
import sys

import job as jobfile
import torch


def main() -> None:
    torch.set_num_threads(1)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray binds 127.0.0.1, not the NIC
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    job = jobfile.load(sys.argv[1])
    model = jobfile.model_of(job)
    keys = list(model.state_dict())
    n = len(job.shards)
    final = {}

    def weights(m: torch.nn.Module) -> list:
        return [v.detach().numpy().copy() for v in m.state_dict().values()]

    def load(m: torch.nn.Module, arrays: list) -> None:
        m.load_state_dict({k: torch.as_tensor(v) for k, v in zip(keys, arrays, strict=True)})

    class Client(NumPyClient):
        def __init__(self, k: int) -> None:
            self.k = k

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            local = copy.deepcopy(model)
            load(local, parameters)
            x, y = job.shards[self.k]
            jobfile.local_sgd(local, x, y, job, self.k)
            return weights(local), len(y), {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return Client(int(context.node_config["partition-id"])).to_client()

    def evaluate(server_round: int, parameters, config):  # type: ignore[no-untyped-def]
        central = copy.deepcopy(model)
        load(central, parameters)
        final["accuracy"] = jobfile.accuracy(central, job)
        return 0.0, {"accuracy": final["accuracy"]}

    def server_fn(context: Context):  # type: ignore[no-untyped-def]
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(weights(model)),
            evaluate_fn=evaluate,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=job.rounds))

    t0 = jobfile.clock()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    seconds = jobfile.clock() - t0
    jobfile.report("flower", job, seconds, final.get("accuracy", float("nan")))


if __name__ == "__main__":
    main()
