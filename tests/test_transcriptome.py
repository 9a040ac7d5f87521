"""Synthetic clinic transcriptomes, the by-group partition, and the flagship swarm scenario
(Warnat-Herresthal et al. 2021: the swarm beats every single clinic and comes close to central)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privlab.data import load_dataset
from privlab.data_transcriptome import TranscriptomeParams, generate
from privlab.errors import ScenarioError
from privlab.partition import partition
from privlab.scenario import DataSpec, PartitionSpec

SMALL = {"n_genes": 300, "n_signature": 20, "clinic_sizes": [200, 100, 40]}


def test_clinics_sizes_prevalence_and_groups() -> None:
    p = TranscriptomeParams(**SMALL, prevalence=[0.2, 0.5, 0.8])
    x, y, site = generate(p, seed=3)
    assert x.shape == (340, 300) and np.bincount(site).tolist() == [200, 100, 40]
    assert [round(y[site == s].mean(), 2) for s in range(3)] == [0.2, 0.5, 0.8]
    assert (x >= 0).all()  # log2(1 + counts)
    d = load_dataset(DataSpec(name="transcriptome", params=SMALL, test_fraction=0.25), 3)
    assert d.groups_train is not None and d.groups_test is not None
    assert len(d.groups_train) == len(d.y_train) and set(np.unique(d.groups_test)) == {0, 1, 2}
    assert np.allclose(d.x_train.mean(0), 0, atol=1e-4)  # z-scored with train statistics
    again = load_dataset(DataSpec(name="transcriptome", params=SMALL, test_fraction=0.25), 3)
    np.testing.assert_array_equal(d.x_train, again.x_train)


def test_only_the_signature_separates_cases_and_clinics_shift_every_gene() -> None:
    """Independent checks with scipy: Welch t-tests of cases vs controls find the signature
    (and little else) within one clinic; one-way ANOVA across clinics finds batch effects."""
    p = TranscriptomeParams(n_genes=400, n_signature=20, clinic_sizes=[400, 400])
    x, y, site = generate(p, seed=0)
    one = site == 0
    _, pv = stats.ttest_ind(x[one & (y == 1)], x[one & (y == 0)], equal_var=False)
    hits = np.flatnonzero(pv < 1e-4)
    assert 15 <= len(hits) <= 22  # the 20 signature genes, at most a stray one or two
    _, pv_site = stats.f_oneway(x[site == 0], x[site == 1])
    assert np.mean(pv_site < 0.01) > 0.25  # many genes differ between clinics (~1% by chance)
    no_batch = TranscriptomeParams(
        n_genes=400, n_signature=20, clinic_sizes=[400, 400], batch_effect=0.0
    )
    x0, _, s0 = generate(no_batch, seed=0)
    _, pv0 = stats.f_oneway(x0[s0 == 0], x0[s0 == 1])
    assert np.mean(pv0 < 0.01) < 0.05  # ~1% false positives without batch effects


def test_expression_is_log_normal_ish() -> None:
    """Raw counts are right-skewed; their log is close to symmetric."""
    x, _, _ = generate(TranscriptomeParams(**SMALL), seed=1)
    counts = 2.0**x - 1
    assert np.median(stats.skew(counts, axis=0)) > 0.5
    assert abs(np.median(stats.skew(x, axis=0))) < 0.3


def test_by_group_puts_each_clinic_on_its_own_client() -> None:
    groups = np.repeat(np.arange(4), [50, 20, 10, 5]).astype(np.int64)
    y = np.zeros(len(groups), dtype=np.int64)
    spec = PartitionSpec(scheme="by_group", num_clients=4, holdout_fraction=0.3)
    clients = partition(y, spec, 0, groups)
    for k, c in enumerate(clients):
        idx = np.concatenate([c.train_idx, c.holdout_idx])
        assert set(groups[idx]) == {k} and len(idx) == (groups == k).sum()
    with pytest.raises(ScenarioError, match=r"partition.num_clients: 'by_group' needs one client"):
        partition(y, PartitionSpec(scheme="by_group", num_clients=3), 0, groups)
    with pytest.raises(ScenarioError, match=r"partition.scheme: 'by_group' needs a data set"):
        partition(y, spec, 0, None)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n_signature": 5000}, "data.params"),
        ({"prevalence": [0.5]}, "data.params"),
        ({"clinic_sizes": [5, 100]}, "data.params.clinic_sizes"),
        ({"n_gene": 10}, "data.params.n_gene"),
    ],
)
def test_bad_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_dataset(DataSpec(name="transcriptome", params=params), 0)
    assert str(err.value).startswith(field)


@pytest.mark.slow
def test_swarm_beats_every_single_clinic_and_comes_close_to_central() -> None:
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario

    keep = (
        "variants=[{name='swarm'}, {name='central', set={'topology.name'='central', "
        "'topology.params'={}, attacks=[]}}, {name='alone', "
        "set={'topology.params.local_only'=true, attacks=[]}}]"
    )
    v = ScenarioRun(load_scenario("transcriptome_swarm", [keep])).run()["variants"]
    swarm = v["swarm"]["utility"]["final_accuracy"]
    central = v["central"]["utility"]["final_accuracy"]
    alone = v["alone"]["topology"]["per_peer_accuracy"]
    assert len(alone) == 5
    assert swarm > max(alone.values()) + 0.03
    assert swarm > central - 0.05
    # the curious peer learns membership of the specialist centre's patients
    assert v["swarm"]["attacks"]["mia_curious_peer"]["metrics"]["auc"] > 0.7
