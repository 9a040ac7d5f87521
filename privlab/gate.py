"""The CI gate: expectations and a committed baseline, compared without passing vacuously.

A *check* is one comparison: a scenario expectation (a bound on one variant's metric) or a
baseline entry (a metric's value recorded earlier, with a direction and a tolerance). The gate
fails when any check fails, and also when there was nothing to compare: a baseline variant or
metric that the results lack is a failure of its own (the precedent is pytest's "no tests ran").

Baseline file (JSON, committed beside the scenario; written only by `privlab baseline update`)::

    {"privlab_baseline": 1, "scenario": "default",
     "entries": [{"variant": "no_defense", "metric": "attacks.mia.auc", "value": 0.71,
                  "direction": "higher_is_worse", "tolerance": 0.02, "relative": false}]}

`direction` is `higher_is_worse` (leakage, epsilon), `lower_is_worse` (accuracy, a
reconstruction's error) or `two_sided` (a metric privlab has no direction for, e.g. a plug-in's:
any move beyond the tolerance fails). `relative` tolerances are fractions of the recorded value.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from privlab.errors import ScenarioError
from privlab.results import is_timing_key, lookup

BASELINE_FORMAT = 1
Direction = Literal["higher_is_worse", "lower_is_worse", "two_sided"]
DIRECTIONS: tuple[str, ...] = ("higher_is_worse", "lower_is_worse", "two_sided")

# Known attack metrics, by the way they move when the attacker gains. Bounded ones ([0, 1]) take
# the tolerance as an absolute margin, unbounded ones (dB, squared error) as a fraction.
HIGHER_IS_WORSE: dict[str, bool] = {  # metric -> relative tolerance?
    "auc": False,
    "tpr_at_1pct_fpr": False,
    "tpr_at_0.1pct_fpr": False,
    "tpr_at_0pct_fpr": False,
    "advantage": False,
    "balanced_accuracy": False,
    "ssim": False,
    "label_accuracy": False,
    "backdoor_success": False,
    "targeted_misclassification": False,
    "psnr": True,
    "psnr_max": True,
    "psnr_gain": True,
    "epsilon_lower_bound": True,
}
LOWER_IS_WORSE: dict[str, bool] = {"mse": True, "mse_ratio": True}


@dataclass(frozen=True)
class BaselineEntry:
    variant: str
    metric: str
    value: float
    direction: Direction
    tolerance: float
    relative: bool = False


@dataclass
class Check:
    """One comparison and its outcome, as the terminal, JUnit and markdown outputs show it."""

    kind: Literal["expectation", "baseline"]
    variant: str
    metric: str
    passed: bool
    actual: float | None
    message: str
    expected: str
    """The bound in words: 'max 0.55', 'higher_is_worse, baseline 0.71 ± 0.02'."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateOutcome:
    checks: list[Check]
    problems: list[str]
    """Failures that are not a single comparison: nothing compared, a variant missing, ..."""
    notes: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return self.problems + [c.message for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [c.to_json() for c in self.checks],
            "problems": self.problems,
            "notes": self.notes,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def known_direction(metric: str) -> tuple[Direction, bool] | None:
    """Direction and relative-tolerance flag privlab knows for a metric path, else None."""
    leaf = metric.rsplit(".", 1)[-1]
    head = metric.split(".", 1)[0]
    if head == "utility" and "accuracy" in leaf and not leaf.endswith("_gap"):
        return "lower_is_worse", False
    if head == "utility" and leaf.endswith("_gap"):
        return "higher_is_worse", False
    if metric == "privacy.epsilon":
        return "higher_is_worse", True
    if head == "attacks" and leaf in HIGHER_IS_WORSE:
        return "higher_is_worse", HIGHER_IS_WORSE[leaf]
    if head == "attacks" and leaf in LOWER_IS_WORSE:
        return "lower_is_worse", LOWER_IS_WORSE[leaf]
    return None


def metric_paths(variant_result: dict[str, Any]) -> list[str]:
    """Every numeric metric path of one variant (timing fields aside), as `lookup` reads it:
    `attacks.<id>.<metric>` for attack metrics, dotted keys elsewhere."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not is_timing_key(str(key)):
                    walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif _number(node) is not None:
            out.append(prefix)

    for section in ("utility", "privacy", "cost", "robustness", "topology"):
        node = variant_result.get(section)
        if isinstance(node, dict):
            walk({k: v for k, v in node.items() if k != "per_round"}, section)
    for aid, attack in (variant_result.get("attacks") or {}).items():
        if isinstance(attack, dict):
            walk(attack.get("metrics") or {}, f"attacks.{aid}")
    return out


def default_metrics(variant_result: dict[str, Any]) -> list[str]:
    """What `privlab baseline update` records unless told otherwise: every metric with a known
    direction (accuracy, epsilon, the attacks' headline leakage metrics)."""
    return [p for p in metric_paths(variant_result) if known_direction(p) is not None]


def make_entries(
    results: dict[str, Any],
    patterns: list[str] | None,
    tolerance: float,
    direction: Direction | None = None,
) -> list[BaselineEntry]:
    """Baseline entries for every variant: the default metrics, or those matching `patterns`
    (fnmatch on the metric path, e.g. `attacks.*.tpr_at_0.1pct_fpr`, plug-in metrics too)."""
    entries = []
    for name, v in results["variants"].items():
        paths = metric_paths(v) if patterns else default_metrics(v)
        if patterns:
            paths = [p for p in paths if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]
        for path in paths:
            known = known_direction(path)
            chosen, relative = known if known else (direction or "two_sided", False)
            value = _number(lookup(v, path))
            if value is not None:
                entries.append(BaselineEntry(name, path, value, chosen, tolerance, relative))
    if patterns and not entries:
        raise ScenarioError(
            f"--metric: no numeric metric matches {', '.join(patterns)} "
            "(metric paths look like utility.final_accuracy or attacks.<id>.auc)"
        )
    return entries


def baseline_document(scenario: str, entries: list[BaselineEntry]) -> dict[str, Any]:
    return {
        "privlab_baseline": BASELINE_FORMAT,
        "scenario": scenario,
        "entries": [asdict(e) for e in entries],
    }


def _entry(raw: Any, i: int, path: Path) -> BaselineEntry:
    where = f"baseline '{path}': entries.{i}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table with variant, metric, value")
    for key in ("variant", "metric"):
        if not isinstance(raw.get(key), str):
            raise ScenarioError(f"{where}.{key}: expected a string")
    value, tol = _number(raw.get("value")), _number(raw.get("tolerance", 0.0))
    if value is None:
        raise ScenarioError(f"{where}.value: expected a finite number (got {raw.get('value')!r})")
    if tol is None or tol < 0:
        raise ScenarioError(f"{where}.tolerance: expected a number >= 0")
    direction = raw.get("direction", "two_sided")
    if direction not in DIRECTIONS:
        raise ScenarioError(f"{where}.direction: expected one of {', '.join(DIRECTIONS)}")
    return BaselineEntry(
        raw["variant"], raw["metric"], value, direction, tol, bool(raw.get("relative", False))
    )


def read_baseline(path: Path, tolerance: float = 0.02) -> tuple[str | None, list[BaselineEntry]]:
    """A baseline file, or (for compatibility) an earlier results.json, whose default metrics
    become entries with `tolerance`. Returns the scenario name it belongs to and its entries."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"--baseline: file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ScenarioError(f"--baseline: '{path}' is a directory, not a baseline file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"--baseline: '{path}' is not valid JSON ({exc})") from None
    if isinstance(data, dict) and "privlab_baseline" in data:
        if data["privlab_baseline"] != BASELINE_FORMAT:
            raise ScenarioError(
                f"--baseline: '{path}' has format {data['privlab_baseline']!r}, "
                f"this privlab reads format {BASELINE_FORMAT}"
            )
        raw_entries = data.get("entries")
        if not isinstance(raw_entries, list):
            raise ScenarioError(f"baseline '{path}': entries: expected a list")
        return data.get("scenario"), [_entry(e, i, path) for i, e in enumerate(raw_entries)]
    if isinstance(data, dict) and isinstance(data.get("variants"), dict):
        return (data.get("scenario") or {}).get("name"), make_entries(data, None, tolerance)
    raise ScenarioError(f"--baseline: '{path}' is neither a privlab baseline nor a results.json")


def _bound_text(e: BaselineEntry) -> str:
    tol = f"{e.tolerance:.0%}" if e.relative else f"{e.tolerance:g}"
    return f"{e.direction}, baseline {e.value:g} ± {tol}"


def compare_entry(e: BaselineEntry, actual: float) -> tuple[bool, bool]:
    """(passed, improved beyond the tolerance) for one baseline entry."""
    margin = e.tolerance * abs(e.value) if e.relative else e.tolerance
    up, down = actual > e.value + margin, actual < e.value - margin
    if e.direction == "higher_is_worse":
        return not up, down
    if e.direction == "lower_is_worse":
        return not down, up
    return not (up or down), False


def baseline_checks(
    results: dict[str, Any],
    entries: list[BaselineEntry],
    tolerance: float | None = None,
) -> tuple[list[Check], list[str], list[str]]:
    """Checks for baseline entries (tolerance: override each entry's), plus the problems
    (variants or metrics the results lack) and notes (improvements, unbaselined variants)."""
    variants = results.get("variants") or {}
    checks: list[Check] = []
    problems: list[str] = []
    notes: list[str] = []
    missing_variants = sorted({e.variant for e in entries} - set(variants))
    for name in missing_variants:
        problems.append(
            f"baseline variant '{name}' is not in the results "
            f"(results have: {', '.join(variants) or 'none'})"
        )
    for e in entries:
        if e.variant not in variants:
            continue
        if tolerance is not None:
            e = BaselineEntry(e.variant, e.metric, e.value, e.direction, tolerance, e.relative)
        actual = _number(lookup(variants[e.variant], e.metric))
        if actual is None:
            problems.append(
                f"{e.variant}: baseline metric '{e.metric}' is missing from the results"
            )
            continue
        passed, improved = compare_entry(e, actual)
        verb = "held" if passed else "moved the wrong way"
        checks.append(
            Check(
                "baseline",
                e.variant,
                e.metric,
                passed,
                actual,
                f"{e.variant}: {e.metric} {verb}: {e.value:g} -> {actual:g} ({_bound_text(e)})",
                _bound_text(e),
            )
        )
        if improved:
            notes.append(
                f"{e.variant}: {e.metric} improved {e.value:g} -> {actual:g}; "
                "`privlab baseline update` would ratchet it"
            )
    unbaselined = sorted(set(variants) - {e.variant for e in entries})
    if entries and unbaselined:
        notes.append(f"variants without a baseline: {', '.join(unbaselined)}")
    return checks, problems, notes


def expectation_checks(results: dict[str, Any]) -> list[Check]:
    out = []
    for e in results.get("expectations") or []:
        bounds = " and ".join(
            f"{word} {e[key]:g}"
            for word, key in (("min", "min"), ("max", "max"))
            if isinstance(e.get(key), int | float)
        )
        actual = _number(e.get("actual"))
        shown = "missing" if actual is None else f"{actual:g}"
        verb = "holds" if e.get("passed") else "breached"
        out.append(
            Check(
                "expectation",
                str(e.get("variant")),
                str(e.get("metric")),
                bool(e.get("passed")),
                actual,
                f"{e.get('variant')}: {e.get('metric')} = {shown} {verb} ({bounds})",
                bounds,
            )
        )
    return out


def evaluate_gate(
    results: dict[str, Any],
    baseline: tuple[str | None, list[BaselineEntry]] | None = None,
    tolerance: float | None = None,
) -> GateOutcome:
    """All checks of one results set; never passes when nothing was compared."""
    checks = expectation_checks(results)
    problems: list[str] = []
    notes: list[str] = []
    if baseline is not None:
        scenario, entries = baseline
        name = (results.get("scenario") or {}).get("name")
        if scenario is not None and name is not None and scenario != name:
            problems.append(f"the baseline is for scenario '{scenario}', the results for '{name}'")
        if not entries:
            problems.append("the baseline has no entries: it compares nothing")
        more, more_problems, notes = baseline_checks(results, entries, tolerance)
        checks += more
        problems += more_problems
    if not checks and not problems:
        problems.append(
            "nothing was checked: the results hold no expectations and no --baseline was given "
            "(a gate that compares nothing cannot pass)"
        )
    return GateOutcome(checks, problems, notes)


def ratchet(
    old: list[BaselineEntry], new: list[BaselineEntry], accept_worse: bool
) -> tuple[list[BaselineEntry], list[str]]:
    """Merge freshly measured entries into an existing baseline. An entry that got better (or
    stayed within tolerance) takes the new value; one that got worse keeps the old value unless
    `accept_worse`. Returns the merged entries and what changed, line by line."""
    by_key = {(e.variant, e.metric): e for e in old}
    merged: list[BaselineEntry] = []
    changes: list[str] = []
    seen = set()
    for e in new:
        key = (e.variant, e.metric)
        seen.add(key)
        prev = by_key.get(key)
        if prev is None:
            merged.append(e)
            changes.append(f"added {e.variant}: {e.metric} = {e.value:g} ({e.direction})")
            continue
        kept = BaselineEntry(
            prev.variant, prev.metric, e.value, prev.direction, prev.tolerance, prev.relative
        )
        ok, _ = compare_entry(prev, e.value)
        worse = not ok or _strictly_worse(prev, e.value)
        if worse and not accept_worse:
            merged.append(prev)
            changes.append(
                f"kept {e.variant}: {e.metric} = {prev.value:g} (new {e.value:g} is worse; "
                "--accept-worse records it)"
            )
        else:
            merged.append(kept)
            if kept.value != prev.value:
                changes.append(f"updated {e.variant}: {e.metric} {prev.value:g} -> {e.value:g}")
    for e in old:
        if (e.variant, e.metric) not in seen:
            merged.append(e)
            changes.append(f"kept {e.variant}: {e.metric} = {e.value:g} (not in the new results)")
    return merged, changes


def _strictly_worse(e: BaselineEntry, value: float) -> bool:
    if e.direction == "higher_is_worse":
        return value > e.value
    if e.direction == "lower_is_worse":
        return value < e.value
    return False
