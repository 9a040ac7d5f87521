"""The schema of results.json (version 1) as pydantic models, checked whenever a file is read.

`privlab check`, `privlab report` and the Python API read results files that a user may have
edited by hand. These models are strict on the types of the core fields every reader relies on,
require the few that readers cannot do without (the scenario's name; per variant the final
accuracy and the attacks' metrics; every field of an expectation's outcome), and are permissive
elsewhere: other parts of privlab add keys (fairness,
confidence intervals, baselines, topology extras), and an extra key is never an error. A file
that does not fit is refused with one line naming the first wrong field.

The same models list the keys an expectation may name in each section (`section_fields`), so
`expectations.N.metric = "utility.acc"` is refused while preparing, before any training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from privlab.errors import ScenarioError

Num = Annotated[float, Field(strict=True)]
"""A JSON number (int or float), never a bool or a string that looks like one."""
Int = Annotated[int, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
MetricValue = Num | Str | bool | None | list[Num | None]


class _Open(BaseModel):
    """Core fields typed strictly; any other key is kept and not checked."""

    model_config = ConfigDict(extra="allow", strict=True)


class RoundRow(_Open):
    round: Int | None = None
    accuracy: Num | None = None
    loss: Num | None = None
    participants: Int | None = None
    epsilon: Num | None = None


class Utility(_Open):
    final_accuracy: Num | None
    final_loss: Num | None = None
    train_loss: Num | None = None
    per_round: list[RoundRow] = Field(default_factory=list)
    per_client_accuracy: dict[str, Num | None] | None = None
    per_group_accuracy: dict[str, Num | None] | None = None
    client_accuracy_gap: Num | None = None
    group_accuracy_gap: Num | None = None


class AttackEntry(_Open):
    name: Str | None = None
    family: Str | None = None
    threat_model: dict[str, Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, MetricValue]
    artifacts: dict[str, Any] = Field(default_factory=dict)
    ci_methods: dict[str, Str] | None = None


class Privacy(_Open):
    epsilon: Num | None = None
    delta: Num | None = None
    accountant: Str | None = None
    approximate: bool = False
    per_client: dict[str, Num | None] | None = None


class Cost(_Open):
    bytes_per_round: list[Int] = Field(default_factory=list)
    bytes_total: Int | None = None
    seconds: Num | None = None
    seconds_per_round: list[Num | None] = Field(default_factory=list)


class Robustness(_Open):
    detection_precision: Num | None = None
    detection_recall: Num | None = None
    rejected_client_rounds: Int | None = None
    malicious_client_rounds: Int | None = None
    rounds: Int | None = None


class DefenseEntry(_Open):
    name: Str


class VariantResult(_Open):
    status: Literal["ok", "diverged"] = "ok"
    diverged_at_round: Int | None = None
    defenses: list[DefenseEntry] = Field(default_factory=list)
    utility: Utility
    attacks: dict[str, AttackEntry]
    privacy: Privacy | None = None
    cost: Cost | None = None
    notes: list[Str] = Field(default_factory=list)
    robustness: Robustness | None = None
    topology: dict[str, Any] | None = None


class ExpectationResult(_Open):
    metric: Str
    variant: Str
    min: Num | None
    max: Num | None
    actual: Num | None
    passed: bool


class ScenarioInfo(_Open):
    name: Str


class Results(_Open):
    schema_version: Literal[1]
    privlab_version: Str | None = None
    scenario: ScenarioInfo
    seed: Int | None = None
    versions: dict[str, Str] = Field(default_factory=dict)
    variants: dict[str, VariantResult]
    expectations: list[ExpectationResult] = Field(default_factory=list)
    notes: list[Str] = Field(default_factory=list)
    timing: dict[str, Any] | None = None


SECTIONS: dict[str, type[BaseModel]] = {
    "utility": Utility,
    "privacy": Privacy,
    "cost": Cost,
    "robustness": Robustness,
}
"""Sections of a variant's results an expectation may name, besides `attacks`."""


def section_fields(section: str) -> list[str]:
    """The keys of one section that an expectation may name (declared fields only)."""
    return sorted(SECTIONS[section].model_fields)


def validate_results(data: Any, path: Path) -> None:
    """Raise a one-line ScenarioError naming the first field of `data` that does not fit."""
    try:
        Results.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"results: '{path}': {_describe(exc, data)}") from None


def _describe(exc: ValidationError, data: Any) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    # Keep the part of the location that exists in the file: pydantic appends the member of a
    # union it tried (e.g. 'float'), which is no field of the file.
    node, parts = data, []
    for part in loc:
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        )
        if present:
            node = node[part]
        elif err["type"] == "missing" and part == loc[-1]:
            parts.append(str(part))
            break
        else:
            break
        parts.append(str(part))
    field = ".".join(parts) or "(top level)"
    if err["type"] == "missing":
        return f"{field}: required field is missing"
    shown = node if not isinstance(node, dict | list) else type(node).__name__
    text = repr(shown)
    if len(text) > 60:
        text = text[:57] + "..."
    # Deeper than the file goes: a union's members all failed; pydantic's text is per member.
    msg = err["msg"] if len(loc) == len(parts) else "wrong type"
    return f"{field}: {msg} (got {text})"
