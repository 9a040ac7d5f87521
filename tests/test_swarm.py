"""Swarm learning: ledger-backed merging, faults, and the swarm-specific attacks."""

from __future__ import annotations

import pytest

from privlab.errors import ScenarioError
from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario
from privlab.topologies.swarm import coordinate_median, trimmed_mean, weighted_mean

BASE = [
    "partition.num_clients=4",
    "model.params={hidden=[32]}",
    "topology.name=swarm",
    "topology.rounds=4",
    "topology.local_epochs=3",
    "topology.batch_size=16",
    "topology.lr=0.2",
    'variants=[{name="plain"}]',
    "expectations=[]",
    "attacks=[]",
]


def _run(extra: list[str]) -> dict:
    results = ScenarioRun(load_scenario("default", BASE + extra)).run()
    return next(iter(results["variants"].values()))


def test_swarm_trains_and_every_round_is_on_a_verified_ledger() -> None:
    v = _run([])
    assert v["utility"]["final_accuracy"] > 0.85
    ledger = v["topology"]["ledger"]
    assert ledger["verified"] and ledger["entries"] == 4 * (4 + 1)  # commits + one merge
    assert v["topology"]["paused_rounds"] == 0


def test_crash_rejoin_and_pause_below_min_peers() -> None:
    faults = (
        "topology.params={min_peers=3, faults=[{peer=1, crash_round=2, rejoin_round=4},"
        "{peer=2, crash_round=3, rejoin_round=4}]}"
    )
    v = _run([faults])
    notes = v["notes"]
    assert "round 2: peer1 crashed" in notes
    assert "round 3: swarm paused: 2 live peer(s) < min_peers 3" in notes
    assert "round 4: peer1 rejoined and synced merged model of round 2" in notes
    assert [r["participants"] for r in v["utility"]["per_round"]] == [4, 3, 0, 4]
    assert v["topology"]["paused_rounds"] == 1 and v["topology"]["ledger"]["verified"]
    assert v["utility"]["final_accuracy"] > 0.8


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{faults=[{peer=7, crash_round=1}]}", "topology.params.faults.0.peer: peer 7"),
        ("{faults=[{peer=1, crash_round=3, rejoin_round=2}]}", "topology.params.faults.0.rejoin"),
        ("{min_peers=9}", "topology.params.min_peers: 9 but only 4 peers"),
        ("{merge='krum'}", "topology.params.merge"),
    ],
)
def test_bad_swarm_params_name_the_field(params: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        _run([f"topology.params={params}"])
    assert str(err.value).startswith(message)


def test_unenrolled_commit_is_refused_and_tamper_is_detected_naming_the_entry() -> None:
    attacks = (
        "attacks=[{name='unenrolled_commit', id='intruder', params={rounds=[1, 3]}},"
        "{name='unenrolled_commit', id='impostor', params={impersonate=2, rounds=[2]}},"
        "{name='ledger_tamper', id='tamper', params={entry=2, at_round=3}}]"
    )
    v = _run([attacks])
    assert v["attacks"]["intruder"]["metrics"] == {"attempts": 2, "accepted": 0, "rejected": 2}
    assert "not enrolled" in v["attacks"]["intruder"]["artifacts"]["reasons"][0]
    assert v["attacks"]["impostor"]["metrics"]["accepted"] == 0
    assert "signature" in v["attacks"]["impostor"]["artifacts"]["reasons"][0]
    tamper = v["attacks"]["tamper"]["metrics"]
    assert tamper["detected"] == 1 and tamper["detected_entry"] == tamper["tampered_entry"] == 2
    ledger = v["topology"]["ledger"]
    assert not ledger["verified"] and ledger["bad_entry"] == 2
    assert ledger["message"].startswith("entry 2 (round 1, commit by peer2)")
    assert any("refused to merge: entry 2" in n for n in v["notes"])


def test_swarm_attacks_refuse_other_topologies_and_loss_threshold_runs_on_swarm() -> None:
    fed = [b for b in BASE if not b.startswith("topology.name")]
    with pytest.raises(ScenarioError, match="'peer_membership' does not apply to topology"):
        ScenarioRun(load_scenario("default", [*fed, "attacks=[{name='peer_membership'}]"]))
    v = _run(["attacks=[{name='loss_threshold', id='mia'}]"])
    assert 0 <= v["attacks"]["mia"]["metrics"]["auc"] <= 1


def test_merges_match_their_definitions() -> None:
    import torch

    stack = [{"w": torch.tensor([1.0, 10.0])}, {"w": torch.tensor([2.0, -5.0])},
             {"w": torch.tensor([100.0, 0.0])}]  # fmt: skip
    assert torch.equal(coordinate_median(stack)["w"], torch.tensor([2.0, 0.0]))
    assert torch.allclose(weighted_mean(stack, [1, 1, 2])["w"], torch.tensor([50.75, 1.25]))
    assert torch.equal(trimmed_mean(stack, 0.34)["w"], torch.tensor([2.0, 0.0]))
    assert torch.allclose(trimmed_mean(stack, 0.0)["w"], weighted_mean(stack, [1, 1, 1])["w"])


def test_rogue_peer_breaks_the_mean_but_not_the_median() -> None:
    rogue = "attacks=[{name='rogue_peer', id='rogue', params={peers=[0], boost=5.0}}]"
    mean = _run([rogue, "topology.params={merge='mean'}"])
    median = _run([rogue, "topology.params={merge='median'}"])
    assert mean["utility"]["final_accuracy"] < 0.5
    assert median["utility"]["final_accuracy"] > 0.8


def test_curious_peer_sees_individual_commits() -> None:
    v = _run(["attacks=[{name='peer_membership', id='peer', params={attacker=0, victim=3}}]"])
    m = v["attacks"]["peer"]["metrics"]
    assert m["n_members"] > 0 and 0 <= m["auc"] <= 1


@pytest.mark.slow
def test_non_iid_swarm_beats_local_only_and_approaches_central() -> None:
    results = ScenarioRun(load_scenario("swarm_noniid")).run()["variants"]
    swarm = results["swarm"]["utility"]["final_accuracy"]
    central = results["central"]["utility"]["final_accuracy"]
    local = results["local_only"]["utility"]["final_accuracy"]
    assert swarm > local + 0.2
    assert swarm > central - 0.08


def test_curious_peer_leaks_more_than_the_merged_model() -> None:
    """Peers see individual commits: loss-threshold MIA (Yeom et al.) on the victim's commit
    beats the same test run by an outsider on the merged model."""
    results = ScenarioRun(load_scenario("swarm_curious_peer", ["variants=[{name='swarm'}]"])).run()
    attacks = results["variants"]["swarm"]["attacks"]
    peer = attacks["mia_curious_peer"]["metrics"]["auc"]
    outsider = attacks["mia_outsider"]["metrics"]["auc"]
    assert peer > 0.56 and peer > outsider + 0.03


def test_report_compares_swarm_with_central_and_local_only() -> None:
    from privlab.report import render_report

    variants = (
        "variants=[{name='swarm'}, {name='central', set={'topology.name'='central'}},"
        "{name='alone', set={'topology.params.local_only'=true}}]"
    )
    results = ScenarioRun(load_scenario("default", [*BASE, variants])).run()
    v = results["variants"]
    assert v["alone"]["topology"]["local_only"] and "topology" not in v["central"]
    html = render_report(results)
    assert "Swarm learning: accuracy and the ledger" in html
    assert "against the central baseline" in html and "against local-only training" in html
    assert "against the best peer alone (peer" in html and "refused merges" in html


def test_swarm_runs_are_deterministic_including_signatures() -> None:
    extra = ["attacks=[{name='unenrolled_commit', id='i'}, {name='loss_threshold', id='m'}]"]
    a = ScenarioRun(load_scenario("default", BASE + extra)).run()
    b = ScenarioRun(load_scenario("default", BASE + extra)).run()
    for r in (a, b):
        r.pop("timing")
        for v in r["variants"].values():
            v["cost"].pop("seconds")
            v["cost"].pop("seconds_per_round")
    assert a == b


def test_defenses_that_need_a_server_are_refused() -> None:
    with pytest.raises(ScenarioError, match="'fltrust' needs a server holding root data"):
        _run(["data.test_fraction=0.2", "variants=[{name='f', defenses=[{name='fltrust'}]}]"])
    v = _run(["variants=[{name='k', defenses=[{name='median'}]}]"])  # the leader's merge rule
    assert v["utility"]["final_accuracy"] > 0.8


def test_swarm_with_a_mean_merge_equals_fedavg_with_full_participation() -> None:
    """No aggregator, same result: the leader's sample-weighted mean is FedAvg's aggregate."""
    swarm = _run([])
    fed = _run(["topology.name=federated", "topology.params={}"])
    for a, b in zip(swarm["utility"]["per_round"], fed["utility"]["per_round"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"])


def test_insiders_forging_replaying_and_resigning_are_refused_in_a_run() -> None:
    attacks = (
        "attacks=[{name='insider_forgery', id='forge', params={attacker=0, victim=2, "
        "rounds=[2, 3]}},"
        "{name='ledger_tamper', id='resign', params={entry=5, at_round=3, resign='own_key'}}]"
    )
    v = _run([attacks])
    forge = v["attacks"]["forge"]["metrics"]
    assert forge["attempts"] == 2 * 4 and forge["accepted"] == 0  # 4 submissions per round
    for mode in ("scenario_key", "replay", "own_key_as_victim"):
        assert forge[f"{mode}_attempts"] > 0 and forge[f"{mode}_accepted"] == 0
    reasons = v["attacks"]["forge"]["artifacts"]["reasons"]
    assert any(r.startswith("replay: index") for r in reasons)
    resign = v["attacks"]["resign"]["metrics"]
    # entries 0-3 commits and 4 the merge of round 1; entry 5 is peer0's own round-2 commit,
    # validly re-signed with its own key, so the break shows at entry 6 (peer1's commit)
    assert resign["resigned_entries"] > 1 and resign["detected"] == 1
    assert resign["detected_entry"] == 6
    assert [r["participants"] for r in v["utility"]["per_round"]] == [4, 4, 0, 0]
    assert v["topology"]["refused_merges"] == 2 and v["topology"]["paused_rounds"] == 0


def test_rejoining_peer_never_syncs_a_merge_at_or_after_a_tampered_entry() -> None:
    faults = "topology.params={min_peers=2, faults=[{peer=1, crash_round=2, rejoin_round=4}]}"
    # round 1 entries 0..4 (merge 4), round 2: three commits 5..7, merge 8; tamper merge 8
    tamper = "attacks=[{name='ledger_tamper', id='t', params={entry=8, at_round=3}}]"
    v = _run([faults, tamper])
    assert (
        "round 4: peer1 rejoined and synced merged model of round 1 "
        "(ledger fails verification at entry 8)"
    ) in v["notes"]
    assert v["attacks"]["t"]["metrics"]["detected_entry"] == 8


def test_local_only_reports_each_peer_alone() -> None:
    v = _run(["topology.params={local_only=true}"])
    alone = v["topology"]["per_peer_accuracy"]
    assert sorted(alone) == ["0", "1", "2", "3"]
    mean = sum(alone.values()) / 4
    assert v["utility"]["final_accuracy"] == pytest.approx(mean, abs=1e-5)


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        (
            "{name='ledger_tamper', params={entry=40, at_round=3}}",
            "attacks.0.params.entry: entry 40",
        ),
        (
            "{name='ledger_tamper', params={at_round=9}}",
            "attacks.0.params.at_round: round 9 never comes",
        ),
        ("{name='insider_forgery', params={victim=9}}", "attacks.0.params.victim: peer 9"),
        ("{name='insider_forgery', params={rounds=[1]}}", "attacks.0.params.rounds"),
        ("{name='unenrolled_commit', params={impersonate=5}}", "attacks.0.params.impersonate"),
    ],
)
def test_ledger_attack_params_that_cannot_apply_are_refused_up_front(
    attack: str, message: str
) -> None:
    with pytest.raises(ScenarioError) as err:
        _run([f"attacks=[{attack}]"])
    assert str(err.value).startswith(message)
