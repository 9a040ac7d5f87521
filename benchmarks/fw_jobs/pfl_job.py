"""The FedAvg job in pfl-research's simulation (Apple's `pfl` 0.6, PyTorch backend).

Runs in its own venv (benchmarks/README.md): `python pfl_job.py JOB.npz`. Timed, inside this
process: from building pfl's federated dataset to the return of `FederatedAveraging.run`
(every round: the cohort of all clients trains, the weighted mean of their model differences is
applied by a central SGD step of 1.0, then central evaluation on the test set). Not timed:
interpreter start-up, imports, reading the job file.

The job is privlab's (job.py): same clients' records, initial weights and recipe (SGD lr 0.1,
batch 16, 2 local epochs). Updates are weighted by each client's record count
(`WeightByDatapoints`), as FedAvg is. pfl iterates a client's records in stored order; with
16 records and batch 16 every epoch is one full batch, so order does not change the step.
"""

from __future__ import annotations

import sys

import job as jobfile
import torch
from torch.nn import functional as F


def main() -> None:
    torch.set_num_threads(1)
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Weighted
    from pfl.model.pytorch import PyTorchModel

    job = jobfile.load(sys.argv[1])

    class Net(jobfile.MLP):
        """pfl's PyTorchModel asks the module for its loss and metrics."""

        def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
            self.eval() if eval else self.train()
            return F.cross_entropy(self(x), y)

        def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict:
            self.eval() if eval else self.train()
            with torch.no_grad():
                logits = self(x)
            n = len(y)
            return {
                "loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), n),
                "accuracy": Weighted(float((logits.argmax(1) == y).sum()), n),
            }

    features = int(job.shards[0][0][0].numel())
    classes = int(job.initial[list(job.initial)[-1]].shape[0])
    net = Net(features, job.hidden, classes)
    net.load_state_dict(job.initial)
    n = len(job.shards)

    t0 = jobfile.clock()
    users = {k: [x, y] for k, (x, y) in enumerate(job.shards)}
    train = FederatedDataset(
        lambda k: Dataset(raw_data=users[k], user_id=k),
        get_user_sampler("minimize_reuse", list(range(n))),
    )
    model = PyTorchModel(
        model=net,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
    )
    evaluation = CentralEvaluationCallback(
        Dataset(raw_data=[job.x_test, job.y_test]),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        frequency=1,
    )
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=job.rounds,
            evaluation_frequency=1,
            train_cohort_size=n,
            val_cohort_size=None,
        ),
        backend=SimulatedBackend(
            training_data=train, val_data=None, postprocessors=[WeightByDatapoints()]
        ),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=job.lr,
            local_num_epochs=job.local_epochs,
            local_batch_size=job.batch_size,
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[evaluation],
    )
    seconds = jobfile.clock() - t0
    jobfile.report("pfl", job, seconds, jobfile.accuracy(net, job))


if __name__ == "__main__":
    main()
