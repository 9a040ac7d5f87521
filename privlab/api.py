"""The Python API: what the CLI does, for notebooks and scripts.

    import privlab
    results = privlab.run("default", overrides=["topology.rounds=5"], seed=1)
    results.strongest_attack("no_defense").value
    results.metric("utility.final_accuracy")          # {variant: value}
    privlab.report(results, "report.html")
    same = privlab.load_results("reports/default/results.json")

`Results` is a read-only mapping over the exact results.json document (so every plot function
and the report accept it), with typed accessors for the common questions. The CLI's `run` is a
thin layer over `execute` below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privlab.errors import ScenarioError
from privlab.results import SCHEMA_VERSION, lookup

ProgressFn = Callable[[str, int, int, float], None]


class _View(Mapping[str, Any]):
    """A read-only mapping over one part of a results document."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(list(self._data)[:8])})"


class AttackOutcome(_View):
    """`variants.<v>.attacks.<id>`: threat model, metrics (with `_ci`, `_baseline`, `_gain`)."""

    @property
    def name(self) -> str:
        return str(self._data.get("name", ""))

    @property
    def family(self) -> str:
        return str(self._data.get("family", ""))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self._data.get("metrics", {}))

    @property
    def threat_model(self) -> dict[str, Any]:
        return dict(self._data.get("threat_model", {}))


class VariantResult(_View):
    """`variants.<v>`: utility, attacks, privacy, cost, notes (see privlab.results)."""

    @property
    def accuracy(self) -> float:
        return float(self._data["utility"]["final_accuracy"])

    @property
    def epsilon(self) -> float | None:
        privacy = self._data.get("privacy") or {}
        return privacy.get("epsilon")

    @property
    def utility(self) -> dict[str, Any]:
        return dict(self._data.get("utility", {}))

    @property
    def attacks(self) -> dict[str, AttackOutcome]:
        return {k: AttackOutcome(v) for k, v in self._data.get("attacks", {}).items()}

    def metric(self, path: str) -> Any:
        """A value by dotted path, e.g. `attacks.lira.auc` or `utility.group_accuracy_gap`."""
        return lookup(dict(self._data), path)


@dataclass(frozen=True)
class StrongestAttack:
    """The attack with the highest value of `metric` in one variant."""

    variant: str
    attack_id: str
    name: str
    metric: str
    value: float
    ci: tuple[float, float] | None = None


class Results(_View):
    """A results.json document (schema 1) with helpers; `to_dict()` gives the document."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if data.get("schema_version") != SCHEMA_VERSION or not isinstance(
            data.get("variants"), Mapping
        ):
            raise ScenarioError(
                f"results: not a privlab results document of schema {SCHEMA_VERSION}"
            )
        super().__init__(data)

    @property
    def name(self) -> str:
        return str(self._data["scenario"]["name"])

    @property
    def seed(self) -> int:
        return int(self._data["seed"])

    @property
    def variants(self) -> dict[str, VariantResult]:
        return {k: VariantResult(v) for k, v in self._data["variants"].items()}

    @property
    def passed(self) -> bool:
        """True when every expectation of the scenario held."""
        return all(e.get("passed") for e in self._data.get("expectations", []))

    def metric(self, path: str, variant: str | None = None) -> Any:
        """One variant's value at a dotted path, or {variant: value} for every variant."""
        if variant is not None:
            return self._variant(variant).metric(path)
        return {name: v.metric(path) for name, v in self.variants.items()}

    def strongest_attack(self, variant: str, metric: str = "auc") -> StrongestAttack | None:
        """The attack with the highest `metric` (default AUC) in `variant` (None if none
        reports it)."""
        best: StrongestAttack | None = None
        for aid, attack in self._variant(variant).attacks.items():
            value = attack.metrics.get(metric)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if best is None or value > best.value:
                ci = attack.metrics.get(f"{metric}_ci")
                best = StrongestAttack(
                    variant, aid, attack.name, metric, float(value), tuple(ci) if ci else None
                )
        return best

    def strongest_attacks(self, metric: str = "auc") -> dict[str, StrongestAttack | None]:
        """The strongest attack of every variant."""
        return {name: self.strongest_attack(name, metric) for name in self._data["variants"]}

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    def save(self, path: str | Path) -> None:
        from privlab.results import write_results

        write_results(Path(path), self.to_dict())

    def _variant(self, name: str) -> VariantResult:
        if name not in self._data["variants"]:
            allowed = ", ".join(self._data["variants"])
            raise ScenarioError(f"variant: unknown variant '{name}' (allowed: {allowed})")
        return VariantResult(self._data["variants"][name])


# --------------------------------------------------------------------------- entry points


def run(
    scenario: Any = None,
    *,
    overrides: list[str] | Mapping[str, Any] | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    threads: int = 1,
    progress: ProgressFn | None = None,
) -> Results:
    """Run a scenario (a bundled name, a .toml path or a `Scenario`; None: the default) and
    return its results; with `out`, also write results.json and report.html there.

    `overrides` are `--set` strings ("topology.rounds=5") or a {dotted path: value} mapping.
    """
    return execute(
        _scenario(scenario, overrides, seed),
        None if out is None else Path(out),
        threads=threads,
        progress=progress,
    )


def execute(
    scenario: Any,
    out: Path | None,
    *,
    threads: int = 1,
    progress: ProgressFn | None = None,
    attack_progress: Any = None,
    invocation: str | None = None,
) -> Results:
    """Run a validated Scenario; write both files into `out` (checked writable first)."""
    import torch

    from privlab.results import ensure_writable
    from privlab.runner import ScenarioRun

    if out is not None:
        ensure_writable(out)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = ScenarioRun(
            scenario, progress=progress, attack_progress=attack_progress, invocation=invocation
        )
        results = Results(run.run())
    finally:
        torch.set_num_threads(previous)
    if out is not None:
        write_outputs(results, out)
    return results


def write_outputs(results: Mapping[str, Any], folder: Path) -> None:
    """results.json and report.html; the report renders first, so a failure writes neither,
    and both replace the folder's old pair together."""
    from privlab.report import render_report
    from privlab.results import write_output_folder

    data = dict(results)
    html = render_report(data)
    try:  # both files replace the folder's old pair in one step
        write_output_folder(folder, data, html)
    except OSError as exc:
        raise ScenarioError(f"--out: cannot write to '{folder}' ({exc.strerror or exc})") from None


def load_results(path: str | Path) -> Results:
    """Read a results.json written by `privlab run` (or `Results.save`)."""
    from privlab.results import read_results

    return Results(read_results(Path(path)))


def report(results: Mapping[str, Any] | str | Path, path: str | Path) -> Path:
    """Render the self-contained HTML report of `results` (an object or a results.json path)."""
    from privlab.report import write_report

    data = load_results(results) if isinstance(results, str | Path) else results
    target = Path(path)
    write_report(dict(data), target)
    return target


def _scenario(ref: Any, overrides: list[str] | Mapping[str, Any] | None, seed: int | None) -> Any:
    """A validated Scenario from a name, a path or a Scenario, with overrides and seed."""
    from privlab.scenario import Scenario, build_scenario
    from privlab.scenario_source import apply_override, parse_override, read_scenario_source

    if isinstance(ref, Scenario) and not overrides and seed is None:
        return ref
    if isinstance(ref, Scenario):
        raw, base = ref.model_dump(mode="json"), ref._base_dir
    else:
        raw, base = read_scenario_source(None if ref is None else str(ref))
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = [parse_override(text) for text in overrides or []]
    for key, value in pairs:
        apply_override(raw, key, value)
    if seed is not None:
        raw["seed"] = seed
    return build_scenario(raw, base)
