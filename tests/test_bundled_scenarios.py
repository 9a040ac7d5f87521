"""Every bundled scenario validates and prepares (data, partition, every component's checks)
without training: a broken bundled file fails here, not in a user's hands."""

from __future__ import annotations

import pytest

from privlab.runner import ScenarioRun
from privlab.scenario import load_scenario
from privlab.scenario_source import bundled_scenarios


@pytest.mark.parametrize("name", sorted(bundled_scenarios()))
def test_bundled_scenario_prepares(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.description, "a bundled scenario says what it shows"
    run = ScenarioRun(scenario)
    assert len(run.variants) == len(scenario.variant_list())


def test_a_variant_caused_error_names_the_variant() -> None:
    from privlab.errors import ScenarioError

    scenario = load_scenario(
        None,
        ["expectations=[]", 'variants=[{name="ok"}, {name="odd", set={"topology.params.zz"=1}}]'],
    )
    with pytest.raises(ScenarioError, match=r"variant 'odd': topology\.params\.zz"):
        ScenarioRun(scenario)
