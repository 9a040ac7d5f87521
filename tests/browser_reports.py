"""Reports of every bundled scenario, run small (few rounds) for the browser test."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SMALL = ["topology.rounds=3"]
"""The override that keeps every bundled scenario short; a scenario that refuses it (an attack
scheduled in a later round) runs as bundled."""
ATTACK_CAPS = {
    "iterations": 10,
    "steps": 5,
    "epochs": 10,
    "pretrain_steps": 20,
    "num_reference_models": 4,
    "max_targets": 1,
    "max_examples": 8,
    "restarts": 1,
}
"""Attack effort capped (only where a scenario sets it higher): the browser test checks how a
report renders, not what the attack finds."""


def small(name: str) -> Any:  # a privlab Scenario
    from privlab.errors import ScenarioError
    from privlab.scenario import build_scenario, load_scenario

    try:
        scenario = load_scenario(name, SMALL, None)
    except ScenarioError:
        scenario = load_scenario(name, None, None)
    raw = scenario.model_dump(mode="json")
    for attack in raw["attacks"]:
        for key, cap in ATTACK_CAPS.items():
            if isinstance(attack["params"].get(key), int) and attack["params"][key] > cap:
                attack["params"][key] = cap
    try:
        return build_scenario(raw)
    except ScenarioError:
        return scenario


def build_reports(folder: Path) -> dict[str, tuple[Path, float]]:
    """Run each bundled scenario into folder/<name>/ and return name -> (report, seconds)."""
    import torch

    from privlab.errors import ScenarioError
    from privlab.report import write_report
    from privlab.runner import ScenarioRun
    from privlab.scenario import load_scenario
    from privlab.scenario_source import bundled_scenarios

    torch.set_num_threads(1)
    out = {}
    for name in bundled_scenarios():
        t0 = time.perf_counter()
        try:
            run = ScenarioRun(small(name))
        except ScenarioError:  # a capped attack refuses its setting: run it as bundled
            run = ScenarioRun(load_scenario(name, None, None))
        results = run.run()
        path = folder / name / "report.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_report(results, path)
        out[name] = (path, time.perf_counter() - t0)
    return out


if __name__ == "__main__":  # time it: python tests/browser_reports.py /tmp/folder
    import sys

    t = time.perf_counter()
    for name, (_, s) in build_reports(Path(sys.argv[1])).items():
        print(f"{name} {s:.1f} s", flush=True)
    print(f"total {time.perf_counter() - t:.1f} s")
