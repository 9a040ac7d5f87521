"""The communication cost model against hand-computed link times (bytes x 8 / bandwidth)."""

from __future__ import annotations

import pytest

from privlab.engine.network import link_ms
from privlab.errors import ScenarioError
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario

NET = "topology.network={uplink_mbps=2.0, downlink_mbps=20.0, latency_ms=30.0}"


def test_link_time_is_bits_over_bandwidth_plus_latency() -> None:
    # 1 MB up at 8 Mbps is one second; 2 MB down at 16 Mbps another; two messages of 50 ms.
    ms = link_ms(1_000_000, 2_000_000, 2, uplink_mbps=8, downlink_mbps=16, latency_ms=50)
    assert ms == pytest.approx(1000 + 1000 + 100)


def _run(extra: list[str]) -> dict:
    overrides = [
        "partition.num_clients=4",
        "topology.rounds=2",
        "model.params={hidden=[16]}",
        "attacks=[]",
        "expectations=[]",
        NET,
        *extra,
    ]
    return ScenarioRun(load_scenario(None, overrides)).run()["variants"]


def test_federated_round_latency_from_model_size() -> None:
    v = _run(['variants=[{name="plain"}]'])["plain"]
    # digits (64 features), MLP [16], 10 classes: float32 weights down and the update up.
    params = 64 * 16 + 16 + 16 * 10 + 10
    nbytes = 4 * params
    expected = 2 * 30.0 + 8 * nbytes / 20e3 + 8 * nbytes / 2e3
    net = v["cost"]["network"]
    assert net["round_latency_ms"][1:] == [pytest.approx(expected, abs=1e-3)] * 2
    assert net["round_latency_ms"][0] == 0.0  # nothing crosses a client link at set-up
    assert net["client_bytes_up_per_round"][1:] == [4 * nbytes] * 2
    assert net["client_bytes_down_per_round"][1:] == [4 * nbytes] * 2
    assert net["total_latency_ms"] == pytest.approx(2 * expected, abs=1e-2)


def test_secure_aggregation_shows_its_price_on_the_uplink() -> None:
    out = _run(['variants=[{name="plain"}, {name="he", defenses=[{name="secure_aggregation"}]}]'])
    plain, he = out["plain"]["cost"]["network"], out["he"]["cost"]["network"]
    assert he["client_bytes_up_per_round"][1] > 5 * plain["client_bytes_up_per_round"][1]
    assert he["round_latency_ms"][1] > plain["round_latency_ms"][1]


def test_without_a_network_only_bytes_are_reported() -> None:
    overrides = ["partition.num_clients=3", "topology.rounds=1", "attacks=[]", "expectations=[]"]
    v = ScenarioRun(load_scenario(None, [*overrides, 'variants=[{name="v"}]'])).run()
    net = v["variants"]["v"]["cost"]["network"]
    assert "round_latency_ms" not in net and net["client_bytes_up_per_round"][1] > 0


@pytest.mark.parametrize("bad", ["uplink_mbps=0", "latency_ms=-1", "jitter=3"])
def test_bad_network_names_the_field(bad: str) -> None:
    with pytest.raises(ScenarioError, match=r"topology\.network"):
        load_scenario(None, [f"topology.network={{{bad}}}"])
