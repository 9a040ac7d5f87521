"""Engines: the vectorised clients and the lean sequential path against independent loops.

References: torch.optim.SGD for the SGD arithmetic; a plain PyTorch loop (one deep copy of the
model and one torch.optim.SGD per client, FedProx as in Li et al. 2020, Algorithm 2) for local
training; the sequential engine for the vectorised one.
"""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import collect, make_shards
from torch.nn import functional as F

from privlab.engine.base import ClientShard
from privlab.engine.permutations import epoch_permutations
from privlab.engine.sequential import SequentialEngine
from privlab.engine.sgd import sgd_update
from privlab.engine.vectorised import VectorisedEngine, linear_stack
from privlab.models import build_model
from privlab.runner import ScenarioRun
from privlab.scenario import ModelSpec, load_scenario
from privlab.training import TrainSettings


def _shards(sizes: list[int], seed: int = 0) -> list[ClientShard]:
    return make_shards(sizes, seed)


def _model(hidden: list[int] | None = None, activation: str = "relu") -> torch.nn.Module:
    torch.manual_seed(3)
    params = {"hidden": hidden or [16], "activation": activation}
    return build_model(ModelSpec(name="mlp", params=params), (1, 12), 5)


def _plain_client(model, shard, s: TrainSettings, start) -> dict[str, torch.Tensor]:
    """One client as a hand-written loop: deepcopy, torch.optim.SGD, FedProx after each step."""
    local = copy.deepcopy(model)
    local.load_state_dict(start)
    opt = torch.optim.SGD(
        local.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    anchor = [p.detach().clone() for p in local.parameters()]
    n = len(shard.y)
    for _ in range(s.local_epochs):
        order = torch.randperm(n, generator=shard.generator)
        for i in range(0, n, s.batch_size):
            idx = order[i : i + s.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(local(shard.x[idx]), shard.y[idx]).backward()
            opt.step()
            with torch.no_grad():
                for p, a in zip(local.parameters(), anchor, strict=True):
                    p.sub_(p - a, alpha=s.lr * s.fedprox_mu)
    return {k: v.detach().clone() for k, v in local.state_dict().items()}


RECIPES = [
    TrainSettings(batch_size=4, lr=0.1, local_epochs=1),
    TrainSettings(batch_size=5, lr=0.05, local_epochs=2, momentum=0.9, weight_decay=1e-3),
    TrainSettings(batch_size=3, lr=0.1, local_epochs=2, fedprox_mu=0.5, momentum=0.5),
    # full batch (every client's batch holds all its records): steps are whole epochs
    TrainSettings(batch_size=32, lr=0.1, local_epochs=3),
    TrainSettings(
        batch_size=20, lr=0.05, local_epochs=2, momentum=0.9, weight_decay=1e-2, fedprox_mu=0.2
    ),
]


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 1e-2)])
def test_sgd_update_is_torch_sgd_bitwise(momentum: float, wd: float) -> None:
    g = torch.Generator().manual_seed(1)
    p_ref = [torch.randn(4, 3, generator=g, requires_grad=True), torch.randn(3, generator=g)]
    p_ref[1].requires_grad_()
    p_own = [p.detach().clone() for p in p_ref]
    opt = torch.optim.SGD(p_ref, lr=0.1, momentum=momentum, weight_decay=wd)
    bufs: list[torch.Tensor | None] = [None, None]
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in p_ref]
        for p, gr in zip(p_ref, grads, strict=True):
            p.grad = gr.clone()
        opt.step()
        sgd_update(p_own, grads, bufs, lr=0.1, momentum=momentum, weight_decay=wd)
    for a, b in zip(p_ref, p_own, strict=True):
        assert torch.equal(a.detach(), b)


@pytest.mark.parametrize("settings", RECIPES)
def test_sequential_engine_equals_a_plain_loop_per_client_bitwise(settings) -> None:
    model, sizes = _model(), [7, 13, 4, 20]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    engine = SequentialEngine(_shards(sizes), model, settings)
    refs = _shards(sizes)  # same seeds: the same generator streams
    for _ in range(2):  # generators carry over between rounds
        got = collect(engine, start, [0, 1, 2, 3])
        for k in range(len(sizes)):
            want = _plain_client(model, refs[k], settings, start)
            for key in want:
                assert torch.equal(got[k][key], want[key]), (k, key)


UNEQUAL, EQUAL = [7, 13, 1, 20, 9, 9, 2], [9] * 7  # equal: chunks of consecutive clients


@pytest.mark.parametrize("settings", RECIPES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("record_space", [False, True])
@pytest.mark.parametrize("sizes", [UNEQUAL, EQUAL])
def test_vectorised_engine_matches_sequential(
    settings, activation: str, record_space, sizes: list[int]
) -> None:
    """Unequal sizes (short last batches, clients that stop early), several chunks, and
    equal sizes (a chunk's records are then a view of the store); the first layer dense and
    in record space (alpha * W0 + C^T X)."""
    model = _model([16, 8], activation)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seq = SequentialEngine(_shards(sizes), model, settings)
    vec = VectorisedEngine(_shards(sizes), model, settings, chunk_size=3, record_space=record_space)
    ids = [0, 2, 3, 4, 5, 6]  # a sampled subset; client 1 sits out
    for _ in range(2):
        want, got = collect(seq, start, ids), collect(vec, start, ids)
        assert sorted(got) == ids
        for k in ids:
            for key in want[k]:
                torch.testing.assert_close(got[k][key], want[k][key], rtol=1e-5, atol=1e-6)
        start = want[ids[0]]


def test_vectorised_engine_only_takes_linear_stacks() -> None:
    assert linear_stack(build_model(ModelSpec(name="logreg"), (1, 8, 8), 10)) is not None
    assert linear_stack(build_model(ModelSpec(name="cnn"), (1, 8, 8), 10)) is None


def _run(engine: str, extra: list[str]) -> dict:
    base = [
        f'engine="{engine}"',
        "partition.num_clients=6",
        'partition.scheme="dirichlet"',  # unequal client sizes
        "topology.rounds=3",
        "topology.momentum=0.9",
        "topology.weight_decay=0.001",
        "topology.fedprox_mu=0.1",
        "topology.client_fraction=0.67",
        "model.params={hidden=[32]}",
        "expectations=[]",
        'variants=[{name="v"}]',
    ]
    return ScenarioRun(load_scenario(None, base + extra)).run()["variants"]["v"]


@pytest.mark.parametrize(
    "extra",
    [
        ["attacks=[]"],  # nothing observes: the streamed mean
        # a server-side attacker sees every single update (materialised per client)
        ['attacks=[{name="analytic_fc", params={rounds=[1], max_targets=2}}]'],
        # a data-poisoning client: its own poisoned shard inside the stack
        ['attacks=[{name="label_flip", params={fraction=0.34}}]'],
    ],
)
def test_federated_run_vectorised_matches_sequential(extra: list[str]) -> None:
    seq, vec = _run("sequential", extra), _run("auto", extra)
    assert seq["cost"]["engine"]["name"] == "sequential"
    assert vec["cost"]["engine"]["name"] == "vectorised"
    assert vec["cost"]["bytes_per_round"] == seq["cost"]["bytes_per_round"]
    for a, b in zip(seq["utility"]["per_round"], vec["utility"]["per_round"], strict=True):
        assert a["participants"] == b["participants"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=0.01)
    for attack, result in seq["attacks"].items():
        for key, value in result["metrics"].items():
            if isinstance(value, float) and not key.endswith("_seconds"):
                assert vec["attacks"][attack]["metrics"][key] == pytest.approx(value, abs=2e-3)


@pytest.mark.parametrize("sizes", [[12, 12, 12], [1, 7, 22, 3, 2], [5, 30, 9]])
def test_epoch_permutations_are_torch_randperm_bitwise(sizes: list[int]) -> None:
    """The batched draws against torch.randperm itself: same permutations, and every
    generator left in the same state (30 > MAX_N takes the randperm fallback)."""
    mine = [torch.Generator().manual_seed(100 + k) for k in range(len(sizes))]
    ref = [torch.Generator().manual_seed(100 + k) for k in range(len(sizes))]
    for _ in range(2):
        got = epoch_permutations(mine, sizes, 3)
        want = torch.cat(
            [torch.randperm(n, generator=g) for g, n in zip(ref, sizes, strict=True) for _ in "abc"]
        )
        assert torch.equal(got, want)
        for a, b in zip(mine, ref, strict=True):
            assert torch.equal(a.get_state(), b.get_state())
    assert epoch_permutations(mine, sizes, 2, values=False) is None
    for g, n in zip(ref, sizes, strict=True):
        torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    for a, b in zip(mine, ref, strict=True):
        assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("record_space", [False, True])
@pytest.mark.parametrize(
    "settings",
    [
        RECIPES[0],
        RECIPES[1],
        RECIPES[3],
        RECIPES[4],
        TrainSettings(batch_size=4, lr=0.1, local_epochs=2, fedprox_mu=0.3),  # plain + proximal
    ],
)
@pytest.mark.parametrize("sizes", [UNEQUAL[:5], EQUAL[:5]])
def test_train_sums_is_the_weighted_sum_of_trained_weights(
    settings, record_space, sizes: list[int]
) -> None:
    """The engine's weighted sums (FedAvg's streamed mean) against tensordot of the
    sequential engine's per-client weights."""
    model = _model([16])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seq = SequentialEngine(_shards(sizes), model, settings)
    vec = VectorisedEngine(_shards(sizes), model, settings, chunk_size=2, record_space=record_space)
    ids = [0, 1, 3, 4]
    coef = {k: (k + 1) / 10 for k in ids}
    trained = collect(seq, start, ids)
    want = {key: sum(coef[k] * w[key] for k, w in trained.items()) for key in start}
    got = {key: torch.zeros_like(v) for key, v in start.items()}
    seen = []
    for chunk, sums in vec.train_sums(start, ids, coef):
        seen += chunk
        for key in got:
            got[key] += sums[key]
    assert sorted(seen) == ids
    for key in start:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_sequential_train_sums_equals_the_base_class_bitwise() -> None:
    """The sequential engine's own weighted sums against Engine.train_sums (tensordot of the
    stacked copies), bit for bit, on fresh engines with the same generators."""
    from privlab.engine.base import Engine

    model, sizes = _model([16]), [7, 13, 1, 20]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    coef = {k: (k + 1) / 7 for k in range(4)}
    ours = SequentialEngine(_shards(sizes), model, RECIPES[1]).train_sums(start, range(4), coef)
    base_engine = SequentialEngine(_shards(sizes), model, RECIPES[1])
    theirs = Engine.train_sums(base_engine, start, range(4), coef)
    for (ids_a, a), (ids_b, b) in zip(ours, theirs, strict=True):
        assert ids_a == ids_b
        for key in start:
            assert torch.equal(a[key], b[key])


def test_vectorised_engine_reads_shards_rewritten_in_place() -> None:
    """A data-poisoning attack rewrites a shard's tensors in place between rounds: the next
    round trains on the new records (the engine's record store is rebuilt)."""
    settings, sizes = RECIPES[0], [6, 9, 4]
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seq_shards, vec_shards = _shards(sizes), _shards(sizes)
    seq = SequentialEngine(seq_shards, model, settings)
    vec = VectorisedEngine(vec_shards, model, settings)
    for r in range(3):
        if r:
            for shards in (seq_shards, vec_shards):
                shards[1].y.copy_((shards[1].y + 1) % 5)
                shards[2].x.mul_(-1)
        want, got = collect(seq, start, [0, 1, 2]), collect(vec, start, [0, 1, 2])
        for k in want:
            for key in want[k]:
                torch.testing.assert_close(got[k][key], want[k][key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sizes", [[12] * 1000, [3, 40, 7, 12, 25] * 300])
def test_chunks_are_balanced_and_within_the_limits(sizes: list[int]) -> None:
    """Every client in exactly one chunk; chunks of near-equal rows under CHUNK_ROWS and
    CHUNK_PARAMETERS, with no short tail (1,000 equal clients: 7 chunks of 142-143, not
    7 of 142 and one of 6)."""
    from privlab.engine import vectorised

    vec = VectorisedEngine(_shards(sizes), _model(), RECIPES[3])
    chunks = vec.chunks(range(len(sizes)))
    assert sorted(k for c in chunks for k in c) == list(range(len(sizes)))
    rows = [sum(sizes[k] + 1 for k in c) for c in chunks]
    assert max(rows) <= vectorised.CHUNK_ROWS + max(sizes)
    assert max(rows) - min(rows) <= 2 * max(sizes) + 2
    if len(set(sizes)) == 1:
        assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    params = sum(p.numel() for p in _model().parameters())
    assert max(map(len, chunks)) * params <= max(vectorised.CHUNK_PARAMETERS, params)
