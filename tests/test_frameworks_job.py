"""The job file benchmarks/frameworks.py hands pfl and Flower is privlab's job: the same
clients' records, the same initial weights, and (run by hand with the file's own recipe) the
same FedAvg result as privlab's run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "fw_jobs")]

frameworks = pytest.importorskip("frameworks")
jobfile = pytest.importorskip("job")


def test_the_job_file_is_privlabs_job(tmp_path: Path) -> None:
    from privlab.models import build_model

    path = tmp_path / "job.npz"
    frameworks.write_job(6, 2, path)
    job = jobfile.load(str(path))
    run = frameworks.job_run(6, 2)
    _, s, _, _, data, clients = run.variants[0]
    assert len(job.shards) == 6 and (job.rounds, job.local_epochs, job.batch_size) == (2, 2, 16)
    for (x, y), c in zip(job.shards, clients, strict=True):
        assert len(y) in (15, 16)  # 32 records a client, half held out (rounding: one has 15)
        assert torch.equal(x, torch.as_tensor(data.x_train[c.train_idx]))
        assert torch.equal(y, torch.as_tensor(data.y_train[c.train_idx]))
    torch.manual_seed(s.seed)
    ours = build_model(s.model, data.input_shape, data.num_classes).state_dict()
    theirs = jobfile.model_of(job).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    # FedAvg by hand from the file (the frameworks' recipe) against privlab's own run.
    model = jobfile.model_of(job)
    for _ in range(job.rounds):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        total = sum(len(y) for _, y in job.shards)
        mean = {k: torch.zeros_like(v) for k, v in start.items()}
        for k, (x, y) in enumerate(job.shards):
            local = jobfile.model_of(job)
            local.load_state_dict(start)
            jobfile.local_sgd(local, x, y, job, k)
            for key, v in local.state_dict().items():
                mean[key] += v * (len(y) / total)
        model.load_state_dict(mean)
    results = run.run()
    utility = next(iter(results["variants"].values()))["utility"]
    assert jobfile.accuracy(model, job) == pytest.approx(utility["final_accuracy"], abs=1e-6)
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(model(job.x_test), job.y_test))
    assert loss == pytest.approx(utility["per_round"][-1]["loss"], abs=1e-5)
