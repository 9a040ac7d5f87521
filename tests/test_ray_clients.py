"""Clients as Ray tasks (`client_tasks`) give bitwise the local engine's results.

Reference: the same inner engine run locally on identical shards (the vectorised engine, the
sequential engine, and the sequential engine with DP-SGD trainers on both of DP-SGD's paths):
trained weights, weighted sums, generator states and privacy spent must be equal, bit for bit,
round after round, also when an attack rewrites shards in place between rounds. Then a bundled
scenario end to end against the local backend. Skipped cleanly when Ray is not installed."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_shards

from privlab.engine.base import ClientShard
from privlab.engine.sequential import SequentialEngine
from privlab.engine.vectorised import VectorisedEngine
from privlab.models import build_model
from privlab.results import strip_timing
from privlab.runner import ScenarioRun
from privlab.scenario import ComponentSpec, ModelSpec, load_scenario
from privlab.topologies.base import DefenseTrainers
from privlab.training import TrainSettings

ray = pytest.importorskip("ray")

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _shards(sizes: list[int]) -> list[ClientShard]:
    return make_shards(sizes, data_seed=1)


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_model(ModelSpec(name="mlp", params={"hidden": [16]}), (1, 12), 5)


def _rounds(local, remote, shards_l, shards_r, start, rounds: int, sums: bool) -> None:
    """Train both engines round after round on the same clients; everything must be equal."""
    ids = list(range(len(shards_l)))
    for r in range(rounds):
        if r:  # an attacker rewrites two clients' records in place (data poisoning)
            for shards in (shards_l, shards_r):
                shards[1].y.copy_((shards[1].y + 1) % 5)
                shards[-1].x.mul_(-1)
        active = ids[r % 2 :: 1 + r % 2]  # rounds of different clients
        coef = {k: 1.0 / (k + 2) for k in active}
        want = list(local.train_sums(start, active, coef) if sums else local.train(start, active))
        got = list(remote.train_sums(start, active, coef) if sums else remote.train(start, active))
        assert [c for c, _ in got] == [c for c, _ in want]  # the same chunks, in order
        for (_, a), (_, b) in zip(want, got, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for sl, sr in zip(shards_l, shards_r, strict=True):
            assert torch.equal(sl.generator.get_state(), sr.generator.get_state())
        start = {k: v + 0.01 * r for k, v in start.items()}


@pytest.mark.parametrize("sums", [False, True])
def test_vectorised_clients_as_ray_tasks_are_bitwise_local(local_ray, sums: bool) -> None:
    """150 clients of unequal sizes: three 64-client buckets, sent as two tasks."""
    import functools

    from privlab.engine.ray_clients import RayClientEngine

    sizes = [3 + (7 * k) % 11 for k in range(150)]
    settings = TrainSettings(batch_size=4, lr=0.1, local_epochs=2, momentum=0.9)
    model = _model()
    build = functools.partial(VectorisedEngine, model=model, settings=settings, chunk_size=64)
    shards_l, shards_r = _shards(sizes), _shards(sizes)
    local = build(shards_l)
    remote = RayClientEngine(shards_r, build, True, None)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _rounds(local, remote, shards_l, shards_r, start, 3, sums)
    desc = remote.describe()
    assert desc["name"] == "vectorised" and desc["client_tasks"]["tasks"] == 2
    assert desc["client_tasks"]["tasks_per_round"] == [2, 2, 2]  # round 2: 64 + 11 clients


@pytest.mark.parametrize("dp", [None, "auto", "opacus"])
def test_sequential_and_dp_clients_as_ray_tasks_are_bitwise_local(local_ray, dp) -> None:
    """Sequential clients, plain or with DP-SGD trainers (book-keeping fast path, Opacus): the
    generators' and the accountants' state come back from the tasks, so the next round's
    noise and batches and the privacy spent are the local ones."""
    import functools

    from defenses.dp_sgd import DPSGD
    from privlab.engine.ray_clients import RayClientEngine

    sizes = [9, 4, 13, 7, 11]
    settings = TrainSettings(batch_size=4, lr=0.1, local_epochs=1)
    model = _model()
    factory = None
    if dp is not None:
        spec = ComponentSpec(name="dp_sgd", params={"noise_multiplier": 1.1, "path": dp})
        factory = DefenseTrainers(DPSGD(spec, "defenses.0"), model, settings, planned_epochs=3)
    build = functools.partial(
        SequentialEngine, model=model, settings=settings, trainer_factory=factory
    )
    shards_l, shards_r = _shards(sizes), _shards(sizes)
    local = build(shards_l)
    remote = RayClientEngine(shards_r, build, 2, None)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _rounds(local, remote, shards_l, shards_r, start, 3, sums=False)
    assert remote.privacy() == local.privacy()
    if dp is not None:
        spent = remote.privacy()["2"]
        assert spent["steps"] == 2 * 4  # rounds 1 and 3, 13 records in batches of 4
        assert spent["path"] == ("opacus" if dp == "opacus" else "book-keeping")
    assert remote.describe()["client_tasks"]["tasks_per_round"] == [2, 2, 2]


def test_vectorised_dp_clients_as_ray_tasks_are_bitwise_local(local_ray) -> None:
    """The DP-SGD defense's vectorised engine (DefenseEngine, as a federated run builds it):
    130 clients in three 64-client chunks over two tasks; each client's accountant history and
    generator come back, so weights, noise and privacy spent are the local ones."""
    import functools

    from defenses.dp_sgd import DPSGD
    from privlab.engine.ray_clients import RayClientEngine
    from privlab.engine.vectorised_dp import VectorisedDPEngine
    from privlab.topologies.base import DefenseEngine

    sizes = [3 + (5 * k) % 9 for k in range(130)]
    settings = TrainSettings(batch_size=4, lr=0.1, local_epochs=1)
    model = _model()
    spec = ComponentSpec(name="dp_sgd", params={"noise_multiplier": 1.1})
    defense = DPSGD(spec, "defenses.0")
    trainers = DefenseTrainers(defense, model, settings, planned_epochs=3)
    fallback = functools.partial(
        SequentialEngine, model=model, settings=settings, trainer_factory=trainers
    )
    build = DefenseEngine(defense, model, settings, 3, fallback)
    shards_l, shards_r = _shards(sizes), _shards(sizes)
    local = build(shards_l)
    assert isinstance(local, VectorisedDPEngine)
    remote = RayClientEngine(shards_r, build, 2, None)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _rounds(local, remote, shards_l, shards_r, start, 3, sums=True)
    assert remote.privacy() == local.privacy()
    assert remote.privacy()["0"]["steps"] > 0
    assert remote.describe()["client_tasks"]["tasks_per_round"][0] == 2


def _without_tasks(results: dict) -> dict:
    out = strip_timing(results)
    for v in out["variants"].values():
        assert v["cost"]["engine"].pop("client_tasks")["backend"] == "ray"
    return out


def test_scenario_with_client_tasks_gives_local_results(local_ray) -> None:
    """Data poisoning switched on from round 2 (shards rewritten in place between rounds),
    FedAvg and the median (single updates), several variants (each a Ray task that sends its
    clients out as Ray tasks too): results.json is the local backend's, `cost.engine` aside,
    which says the clients ran as Ray tasks."""
    overrides = [
        "topology.rounds=3",
        "attacks.0.params.start_round=2",
        'variants=[{name="fedavg"}, {name="median", defenses=[{name="median"}]}]',
        "expectations=[]",
    ]
    local = ScenarioRun(load_scenario("poisoning_data", overrides)).run()
    remote = ScenarioRun(
        load_scenario("poisoning_data", [*overrides, 'backend="ray"', "client_tasks=true"])
    ).run()
    assert _without_tasks(remote) == strip_timing(local)
    assert "client_tasks" not in remote["scenario"]  # where it ran, as `backend`


@pytest.mark.slow
def test_default_scenario_with_dp_sgd_and_client_tasks_gives_local_results(local_ray) -> None:
    """The bundled default scenario: DP-SGD with a target epsilon (noise calibrated in each
    task), RMIA with reference models, a curious server watching client 0's update."""
    overrides = ["topology.rounds=3"]
    local = ScenarioRun(load_scenario("default", overrides)).run()
    remote = ScenarioRun(
        load_scenario("default", [*overrides, 'backend="ray"', "client_tasks=2"])
    ).run()
    assert _without_tasks(remote) == strip_timing(local)
    assert any(v["privacy"] for v in local["variants"].values())  # DP-SGD's epsilon compared
