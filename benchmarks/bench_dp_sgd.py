"""DP-SGD cost: privlab's fast path and Opacus against non-private training, side by side.

Two measurements in this one process, on one torch thread (as `privlab run`), repeats
interleaved so machine load hits every contender alike; medians, then ratios:

1. Local training (the default scenario's model and recipe: MLP [256] on digits, batch 16,
   lr 0.1) on all training records of the default partition, for `--epochs` epochs:
   non-private privlab LocalTrainer; privlab DP-SGD on the fast path (book-keeping clipping);
   privlab DP-SGD through Opacus (path = "opacus"); vanilla Opacus (PrivacyEngine.make_private
   with Poisson sampling and a plain training loop).
2. The whole default FedAvg job (attacks off): the undefended variant (vectorised engine)
   against DP-SGD on the vectorised DP engine (privlab.engine.vectorised_dp), on the fast path
   one client at a time (engine = "sequential") and through Opacus (noise multiplier 1.0, so
   noise calibration is not timed; see --calibration); `--clients N` for N clients.

    python benchmarks/bench_dp_sgd.py [--repeats 5] [--epochs 5] [--clients N] [--calibration]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from privlab.defenses.dp_sgd import DPSGD
from privlab.models import build_model
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, load_scenario
from privlab.training import LocalTrainer, TrainSettings, seeded_generator

NOISE = 1.0


def _data(run: ScenarioRun) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    _, s, _, _, data, clients = run.variants[0]
    idx = torch.as_tensor([i for c in clients for i in c.train_idx])
    x, y = torch.as_tensor(data.x_train)[idx], torch.as_tensor(data.y_train)[idx]
    torch.manual_seed(s.seed)
    return x, y, build_model(s.model, data.input_shape, data.num_classes)


def local_contenders(run: ScenarioRun, epochs: int) -> dict[str, Callable[[], float]]:
    import copy

    from opacus import PrivacyEngine

    x, y, model = _data(run)
    spec = run.variants[0][1].topology
    settings = TrainSettings(batch_size=spec.batch_size, lr=spec.lr, local_epochs=epochs)

    def privlab_trainer(path: str | None) -> Callable[[], float]:
        def go() -> float:
            m = copy.deepcopy(model)
            if path is None:
                t: LocalTrainer = LocalTrainer(m, x, y, settings, seeded_generator(0))
            else:
                d = DPSGD(
                    ComponentSpec(name="dp_sgd", params={"noise_multiplier": NOISE, "path": path}),
                    "defenses.0",
                )
                t = d.make_trainer(m, x, y, settings, seeded_generator(0), planned_epochs=epochs)
                assert t.privacy()["path"] == ("book-keeping" if path == "auto" else "opacus")
            return t.train(t.state()).mean_loss

        return go

    def vanilla_opacus() -> float:
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=spec.lr)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=spec.batch_size
        )
        engine = PrivacyEngine(accountant="prv")
        m, opt, loader = engine.make_private(
            module=m,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=NOISE,
            max_grad_norm=1.0,
            poisson_sampling=True,
        )
        total = 0.0
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(m(xb), yb)
                loss.backward()
                opt.step()
                total += float(loss)
        return total

    return {
        "non-private (privlab)": privlab_trainer(None),
        "DP-SGD fast path (privlab)": privlab_trainer("auto"),
        "DP-SGD Opacus path (privlab)": privlab_trainer("opacus"),
        "DP-SGD vanilla Opacus": vanilla_opacus,
    }


def fedavg_contenders(clients: int | None = None) -> dict[str, Callable[[], float]]:
    extra = [] if clients is None else [f"partition.num_clients={clients}"]

    def job(defenses: str, engine: str = "auto") -> Callable[[], float]:
        scenario = load_scenario(
            "default",
            ["attacks=[]", "expectations=[]", f'engine="{engine}"', *extra,
             f'variants=[{{name="v", defenses={defenses}}}]'],
        )  # fmt: skip
        run = ScenarioRun(scenario)

        def go() -> float:
            res = run.run()["variants"]["v"]
            return res["utility"]["final_accuracy"]

        return go

    dp = '[{{name="dp_sgd", params={{noise_multiplier={n}, path="{p}"}}}}]'
    return {
        "FedAvg non-private": job("[]"),
        "FedAvg DP-SGD vectorised engine": job(dp.format(n=NOISE, p="auto")),
        "FedAvg DP-SGD fast path, sequential": job(dp.format(n=NOISE, p="auto"), "sequential"),
        "FedAvg DP-SGD Opacus path": job(dp.format(n=NOISE, p="opacus")),
    }


def measure(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    for fn in contenders.values():  # warm-up: lazy imports, allocator growth
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def table(title: str, med: dict[str, float], base: str) -> None:
    print(title)
    for name, t in med.items():
        print(f"  {name:36s} {t:8.3f} s   {t / med[base]:5.2f}x {base}")


def calibration_timing() -> None:
    """PRV noise calibration: first call (search) vs a cached call from disk."""
    from privlab.defenses import dp_calibration as cal

    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["PRIVLAB_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        cal.calibrate_noise(8.0, 1e-5, 1 / 5, 60, "prv")
        first = time.perf_counter() - t0
        cal.calibrate_noise.cache_clear()  # as a new process would see it
        t0 = time.perf_counter()
        cal.calibrate_noise(8.0, 1e-5, 1 / 5, 60, "prv")
        cached = time.perf_counter() - t0
    print(f"PRV noise calibration: search {first:.3f} s, from the disk cache {cached * 1e3:.2f} ms")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--calibration", action="store_true")
    parser.add_argument("--skip-fedavg", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--clients", type=int, default=None, help="part 2 with N clients")
    args = parser.parse_args()
    run = ScenarioRun(load_scenario("default", ["attacks=[]", "expectations=[]"]))
    x, _, _ = _data(run)
    if not args.skip_local:
        local = measure(local_contenders(run, args.epochs), args.repeats)
        table(
            f"local training, default model and recipe, {len(x)} records, {args.epochs} "
            f"epochs (median of {args.repeats}; target: fast path <= 2x non-private)",
            local,
            "non-private (privlab)",
        )
    if not args.skip_fedavg:
        fed = measure(fedavg_contenders(args.clients), args.repeats)
        who = "" if args.clients is None else f", {args.clients} clients"
        table(f"whole default FedAvg job{who} (median of {args.repeats})", fed,
              "FedAvg non-private")  # fmt: skip
        vec, seq = (
            fed["FedAvg DP-SGD vectorised engine"],
            fed["FedAvg DP-SGD fast path, sequential"],
        )
        print(f"  vectorised DP engine: {seq / vec:.2f}x faster than the sequential fast path")
    if args.calibration:
        calibration_timing()


if __name__ == "__main__":
    main()
