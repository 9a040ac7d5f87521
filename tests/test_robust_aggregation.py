"""Robust aggregation rules: properties (hypothesis) and known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.defenses import robust_aggregation as ra
from privlab.errors import ScenarioError
from privlab.scenario import ComponentSpec, build_scenario
from privlab.topologies.base import DefenseStack

RULES = {
    "krum": lambda s, f: ra.krum(s, f),
    "multi_krum": lambda s, f: ra.multi_krum(s, f, None),
    "median": lambda s, f: ra.coordinate_median(s),
    "trimmed_mean": lambda s, f: ra.trimmed_mean(s, f),
    "bulyan": lambda s, f: ra.bulyan(s, f),
    "geometric_median": lambda s, f: ra.geometric_median(s, iters=500, tol=1e-12),
    "centered_clipping": lambda s, f: ra.centered_clipping(s, torch.zeros(s.shape[1]), 1.0, 3),
    "fltrust": lambda s, f: ra.fltrust(s, s.mean(dim=0)),
    "norm_bounding": lambda s, f: ra.norm_bounding(s, 1.0),
}


def honest_and_malicious(seed: int, n: int, d: int, f: int, scale: float) -> torch.Tensor:
    """n - f honest rows around a common centre, f rows far away (continuous: no ties)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=d)
    rows = centre + 0.1 * rng.normal(size=(n, d))
    rows[:f] = rng.normal(size=(f, d)) * scale + scale
    return torch.as_tensor(rows, dtype=torch.float64)


cases = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(1, 3),  # f
    st.integers(1, 12),  # d
    st.floats(0.5, 100.0) | st.floats(-100.0, -0.5),  # malicious offset/scale
)


@settings(max_examples=40, deadline=None)
@given(case=cases, rule=st.sampled_from(sorted(RULES)), perm_seed=st.integers(0, 1000))
def test_permutation_invariance(case, rule, perm_seed):
    seed, f, d, scale = case
    n = 4 * f + 3
    stack = honest_and_malicious(seed, n, d, f, scale)
    perm = torch.as_tensor(np.random.default_rng(perm_seed).permutation(n))
    a = RULES[rule](stack, f)
    b = RULES[rule](stack[perm], f)
    torch.testing.assert_close(a.vector, b.vector, rtol=1e-6, atol=1e-6)
    if a.selected is not None:
        assert sorted(perm[b.selected].tolist()) == a.selected


@settings(max_examples=60, deadline=None)
@given(case=cases, extra=st.integers(0, 3))
def test_coordinate_rules_stay_in_honest_range(case, extra):
    """With fewer than half malicious rows, median and trimmed mean (trim >= f) lie in the
    honest rows' coordinate-wise range however far the malicious rows are."""
    seed, f, d, scale = case
    n = 2 * f + 1 + extra
    stack = honest_and_malicious(seed, n, d, f, scale)
    lo, hi = stack[f:].min(dim=0).values, stack[f:].max(dim=0).values
    for out in (ra.coordinate_median(stack), ra.trimmed_mean(stack, f)):
        assert torch.all(out.vector >= lo - 1e-9) and torch.all(out.vector <= hi + 1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), d=st.integers(1, 12))
def test_equal_to_mean_when_nobody_attacks(seed, n, d):
    """Rules that must reduce to FedAvg on honest updates do: norm bounding and centered
    clipping with a bound above every norm, a trimmed mean that trims nothing, Multi-Krum
    that keeps everyone, FLTrust when every update equals the server's."""
    stack = torch.as_tensor(np.random.default_rng(seed).normal(size=(n, d)))
    mean = stack.mean(dim=0)
    big = float(torch.linalg.vector_norm(stack, dim=1).max()) * 2 + 1
    torch.testing.assert_close(ra.norm_bounding(stack, big).vector, mean)
    torch.testing.assert_close(ra.centered_clipping(stack, torch.zeros(d), big).vector, mean)
    torch.testing.assert_close(ra.trimmed_mean(stack, 0).vector, mean)
    torch.testing.assert_close(ra.multi_krum(stack, 0, n).vector, mean)
    same = mean.repeat(n, 1)
    torch.testing.assert_close(ra.fltrust(same, mean).vector, mean)


@settings(max_examples=30, deadline=None)
@given(case=cases)
def test_krum_family_rejects_far_outliers(case):
    seed, f, d, _ = case
    n = 4 * f + 3
    stack = honest_and_malicious(seed, n, d, f, 1e3)
    assert set(ra.krum(stack, f).selected).isdisjoint(range(f))
    assert set(ra.multi_krum(stack, f).selected).isdisjoint(range(f))
    assert set(ra.bulyan(stack, f).selected).isdisjoint(range(f))


def test_known_values():
    stack = torch.tensor([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [100.0, -50.0]])
    torch.testing.assert_close(ra.coordinate_median(stack).vector, torch.tensor([1.5, 15.0]))
    torch.testing.assert_close(ra.trimmed_mean(stack, 1).vector, torch.tensor([1.5, 15.0]))
    torch.testing.assert_close(
        ra.norm_bounding(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 1.0).vector,
        torch.tensor([0.3, 0.9]),
    )
    g = ra.fltrust(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(g.vector, torch.tensor([1.0, 0.0]))
    assert g.selected == [0]


def test_geometric_median_matches_scipy():
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    pts = rng.normal(size=(9, 3))
    pts[0] = 50.0
    ours = ra.geometric_median(torch.as_tensor(pts), iters=2000, tol=1e-12).vector.numpy()
    ref = minimize(lambda z: np.linalg.norm(pts - z, axis=1).sum(), pts.mean(0), tol=1e-12).x
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_flatten_round_trip():
    update = {"b": torch.randn(3), "a": torch.randn(2, 4)}
    back = ra.unflatten(ra.flatten(update), update)
    for k in update:
        torch.testing.assert_close(back[k], update[k])


def _stack_of(*defenses: dict):
    from privlab import registry

    out = []
    for i, d in enumerate(defenses):
        spec = ComponentSpec(**d)
        out.append(registry.defenses.get(spec.name)(spec, f"defenses.{i}"))
    return DefenseStack.build(out)


def test_secure_aggregation_conflict_is_one_line():
    stack = [
        {"name": "secure_aggregation"},
        {"name": "krum", "params": {"f": 1}},
    ]
    with pytest.raises(ScenarioError) as err:
        _stack_of(*stack)
    message = str(err.value)
    assert "\n" not in message and "update_clipping" in message
    assert message.startswith("defenses.1.name: 'krum'") and "secure_aggregation" in message
    ok = _stack_of(
        {"name": "secure_aggregation"}, {"name": "update_clipping", "params": {"max_norm": 1.0}}
    )
    assert ok.client_update and ok.transport is not None and ok.aggregation is None


def test_update_clipping_bounds_the_norm():
    stack = _stack_of({"name": "update_clipping", "params": {"max_norm": 0.5}})
    update = {"w": torch.full((4,), 3.0)}
    out = stack.client_update[0].transform(update, generator=torch.Generator())
    assert float(torch.linalg.vector_norm(out["w"])) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "f", "clients", "message"),
    [("krum", 4, 10, r"more than 2f \+ 2"), ("bulyan", 2, 10, r"4f \+ 3")],
)
def test_too_few_clients_for_f(name, f, clients, message):
    from privlab.runner import ScenarioRun

    scenario = build_scenario(
        {
            "partition": {"num_clients": clients},
            "topology": {"rounds": 1},
            "defenses": [{"name": name, "params": {"f": f}}],
        }
    )
    with pytest.raises(ScenarioError, match=message) as err:
        ScenarioRun(scenario)
    assert "\n" not in str(err.value) and "defenses.0.params.f" in str(err.value)
