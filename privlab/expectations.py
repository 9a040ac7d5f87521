"""Expectations: checked for sense while preparing (before any training), graded after.

An expectation names a metric by its path in a variant's results (`utility.final_accuracy`,
`attacks.mia.auc`) and bounds it. A path that no variant can produce would only fail after all
training; `check_expectation_paths` refuses it up front instead.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from privlab.errors import ScenarioError
from privlab.results import lookup
from privlab.results_schema import SECTIONS, section_fields

if TYPE_CHECKING:
    from privlab.attacks.base import Attack
    from privlab.scenario import Scenario

METRIC_SUFFIXES = ("_ci", "_baseline", "_gain", "_n")
"""Companions of a metric `m` by the shared conventions (interval, baseline, gain, count)."""


def check_expectation_paths(scenario: Scenario, attacks: dict[str, list[Attack]]) -> None:
    """Refuse, while preparing, an expectation whose metric no variant it applies to can
    produce. Sound without running anything: the section must exist; a utility, privacy,
    cost or robustness key must be a field of that section's schema; an attack id must be an
    attack of every variant the expectation applies to; and where the attack's class declares
    `metric_names` (its full vocabulary), the metric must be one of them (or a companion:
    `_ci`, `_baseline`, `_gain`, `_n`; or a targeted probe's metric). Attacks that declare no
    vocabulary have their metric names checked after the run (a missing one breaches)."""
    for i, e in enumerate(scenario.expectations):
        field = f"expectations.{i}.metric"
        parts = e.metric.split(".")
        head = parts[0]
        if head in SECTIONS:
            allowed = section_fields(head)
            if len(parts) < 2 or parts[1] not in allowed:
                raise ScenarioError(
                    f"{field}: '{e.metric}' names no field of {head}{_hint(parts[1:], allowed)} "
                    f"(allowed: {', '.join(f'{head}.{a}' for a in allowed)})"
                )
            continue
        if head != "attacks":
            continue  # other heads are refused while the scenario is read
        if len(parts) < 3 or (parts[2] == "metrics" and len(parts) < 4):
            raise ScenarioError(f"{field}: '{e.metric}' must be attacks.<attack id>.<metric>")
        # Metric keys may hold dots themselves (`tpr_at_0.1pct_fpr`): the rest is the metric.
        aid, metric = parts[1], ".".join(parts[3:] if parts[2] == "metrics" else parts[2:])
        for vname in [e.variant] if e.variant else list(attacks):
            by_id = {a.id: a for a in attacks[vname]}
            if aid not in by_id:
                ids = sorted(by_id)
                where = f"variant '{vname}'" if len(attacks) > 1 else "the scenario"
                raise ScenarioError(
                    f"{field}: no attack with id '{aid}' in {where}{_hint([aid], ids)} "
                    f"(attack ids: {', '.join(ids) or 'none'})"
                )
            names = metric_vocabulary(by_id[aid])
            known = names is None or any(metric == n or metric.startswith(f"{n}.") for n in names)
            if not known:
                raise ScenarioError(
                    f"{field}: attack '{aid}' ({by_id[aid].spec.name}) reports no metric "
                    f"'{metric}'{_hint([metric], sorted(names or ()))} "
                    f"(its metrics: {', '.join(_plain(names or set()))})"
                )


def metric_vocabulary(attack: Attack) -> set[str] | None:
    """Every metric name an attack can report, if its class declares them (`metric_names`)."""
    declared = getattr(type(attack), "metric_names", None)
    if declared is None:
        return None
    base = set(declared) | {p.metric for p in attack.probes()}
    return base | {f"{m}{suffix}" for m in base for suffix in METRIC_SUFFIXES}


def _hint(given: list[str], allowed: list[str]) -> str:
    close = difflib.get_close_matches(given[0], allowed, n=1) if given else []
    return f"; did you mean '{close[0]}'?" if close else ""


def check_expectations(scenario: Scenario, variants: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for e in scenario.expectations:
        names = [e.variant] if e.variant else list(variants)
        for name in names:
            actual = lookup(variants[name], e.metric)
            ok = isinstance(actual, int | float) and not isinstance(actual, bool)
            passed = (
                ok and (e.min is None or actual >= e.min) and (e.max is None or actual <= e.max)
            )
            out.append(
                {
                    "metric": e.metric,
                    "variant": name,
                    "min": e.min,
                    "max": e.max,
                    "actual": actual if ok else None,
                    "passed": bool(passed),
                }
            )
    return out


def _plain(names: set[str]) -> list[str]:
    return sorted(n for n in names if not n.endswith(METRIC_SUFFIXES))
