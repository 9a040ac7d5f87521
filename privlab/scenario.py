"""Scenario files: TOML validated by pydantic v2, with `--set a.b=value` overrides.

A scenario declares data, partition, model, topology (with its training settings), attacks,
defenses, variants (defense settings compared side by side in one run), expectations and a seed.
Every error names the field, the value and what is allowed, in one line.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from privlab import registry
from privlab.errors import ScenarioError
from privlab.scenario_source import (
    apply_override,
    check_plain_data,
    parse_override,
    read_scenario_source,
)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
MAX_LR = 100.0
"""Learning rates above this diverge for every model privlab builds: refused up front."""
MAX_SEED = 2**63 - 1
"""torch, numpy and JSON readers all take a signed 64-bit seed."""
MAX_TASKS = 4096
"""Most Ray tasks per round a scenario may ask for (`client_tasks`)."""


class Strict(BaseModel):
    """Unknown fields refused; floats must be finite (NaN or inf never reach training)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class DataSpec(Strict):
    name: str = "digits"
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    params: dict[str, Any] = Field(default_factory=dict)


class PartitionSpec(Strict):
    scheme: Literal["iid", "dirichlet", "shards", "by_group"] = "iid"
    """by_group: one client per group of the data set (e.g. each clinic on its own peer)."""
    num_clients: Annotated[int, Field(gt=0, le=100_000)] = 10
    alpha: Annotated[float, Field(gt=0, le=1e6)] = 0.5
    shards_per_client: Annotated[int, Field(gt=0, le=100_000)] = 2
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """Share of each client's samples kept out of training: the exact non-members."""


class ModelSpec(Strict):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)
    _base_dir: Path | None = PrivateAttr(default=None)
    """The scenario file's folder: a `python` model factory is imported from there."""


class NetworkSpec(Strict):
    """Every client's link (pfl-style cost model: the source brief names communication as the
    bottleneck): round latency = the slowest party's transfer time plus one latency per
    message, from the bytes it really sent and received."""

    uplink_mbps: PositiveFloat = 10.0
    downlink_mbps: PositiveFloat = 50.0
    latency_ms: Annotated[float, Field(ge=0)] = 50.0


class TopologySpec(Strict):
    name: str = "federated"
    rounds: Annotated[int, Field(gt=0, le=100_000)] = 20
    client_fraction: Fraction = 1.0
    local_epochs: Annotated[int, Field(gt=0, le=10_000)] = 1
    batch_size: Annotated[int, Field(gt=0, le=1_000_000)] = 32
    lr: Annotated[float, Field(gt=0, le=MAX_LR)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, le=1e3)] = 0.0
    fedprox_mu: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Probability that a sampled client drops out of a round."""
    server_lr: Annotated[float, Field(gt=0, le=MAX_LR)] = 1.0
    params: dict[str, Any] = Field(default_factory=dict)
    """Topology-specific settings (cut layer, peers, ...)."""
    network: NetworkSpec | None = None
    """Client links for the simulated communication latency (none: bytes only)."""


class ComponentSpec(Strict):
    name: str
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.id or self.name


class VariantSpec(Strict):
    name: Annotated[str, Field(min_length=1)]
    defenses: list[ComponentSpec] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)
    """Overrides (dotted path -> value) applied to the scenario for this variant only."""


class ExpectationSpec(Strict):
    metric: str
    """Path inside a variant's results, e.g. `utility.final_accuracy` or `attacks.mia.auc`."""
    variant: str | None = None
    """Variant name; none means every variant."""
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _has_bound(self) -> ExpectationSpec:
        if self.min is None and self.max is None:
            raise ValueError("an expectation needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}): nothing can pass")
        return self


class ReportSpec(Strict):
    """How the report grades risk: `grading.<family>.<band> = value` overrides the default
    bands of privlab.grading (families membership, reconstruction, backdoor, label_leakage)."""

    grading: dict[str, dict[str, float]] = Field(default_factory=dict)

    @field_validator("grading")
    @classmethod
    def _bands(cls, grading: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        from privlab.grading import check_overrides

        check_overrides(grading)
        return grading


class Scenario(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)] = "scenario"
    """The output folder's name under reports/: one path component, never '.' or '..'."""
    description: str = ""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    engine: Literal["auto", "sequential"] = "auto"
    """How clients train: "auto" vectorises them where the model allows (else sequential);
    "sequential" forces the one-client-at-a-time reference path."""
    backend: Literal["local", "ray"] = "local"
    """Where variants run: in this process, or as Ray tasks (`pip install 'privlab[ray]'`) on a
    local Ray started by privlab or the cluster at `ray_address`; results are identical."""
    ray_address: str | None = None
    client_tasks: bool | int = False
    """With backend = "ray", where a round's clients train: false, in the variant's process;
    true, as Ray tasks, one per CPU of the cluster; N, as N Ray tasks per round
    (privlab.engine.ray_clients: it pays only when a client's local training is long)."""
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    """Local worker processes for variants (or, with one variant, its reference models);
    1: everything in this process. Results are identical for every count."""
    data: DataSpec = Field(default_factory=DataSpec)
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    topology: TopologySpec = Field(default_factory=TopologySpec)
    attacks: list[ComponentSpec] = Field(default_factory=list)
    defenses: list[ComponentSpec] = Field(default_factory=list)
    """Defenses applied in every variant."""
    variants: list[VariantSpec] = Field(default_factory=list)
    expectations: list[ExpectationSpec] = Field(default_factory=list)
    report: ReportSpec = Field(default_factory=ReportSpec)

    _base_dir: Path | None = PrivateAttr(default=None)
    """The scenario file's folder (None: bundled or built in code); relative paths resolve here."""

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise ValueError(
                "must be a folder name of letters, digits, '_', '-' and '.', "
                "starting with a letter, digit or '_'"
            )
        return name

    @field_validator("client_tasks", mode="before")
    @classmethod
    def _task_count(cls, value: Any) -> bool | int:
        if isinstance(value, bool) or (isinstance(value, int) and 1 <= value <= MAX_TASKS):
            return value
        raise ValueError(f"must be true, false or a number of tasks per round (1 to {MAX_TASKS})")

    def variant_list(self) -> list[VariantSpec]:
        return self.variants or [VariantSpec(name="baseline")]


def _format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "scenario"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_fields(model, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        allowed_text = f"allowed: {', '.join(allowed)}" if allowed else "no fields are allowed here"
        return f"{field}: unknown field{hint} ({allowed_text})"
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    return f"{field}: {err['msg'].removeprefix('Value error, ')}{shown}"


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def validate_params(model: type[BaseModel], params: dict[str, Any], field: str) -> BaseModel:
    """Validate a component's params with its pydantic model; one-line error on failure.

    Every component's floats must be finite, whatever its own model says: a NaN or infinite
    value (given, or parsed from a string such as "nan") is refused here, so no attack or
    defense file needs its own check."""
    check_plain_data(params, field)
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        raise ScenarioError(_format_validation_error(exc, model, prefix=f"{field}.")) from None
    check_plain_data(_model_values(validated), field)
    return validated


def _model_values(model: BaseModel) -> dict[str, Any]:
    """A validated model's field values, nested models opened, without pydantic's serialiser
    (which could refuse or mangle the very non-finite values this looks for)."""

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return _model_values(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {name: plain(getattr(model, name)) for name in type(model).model_fields}


def build_scenario(raw: dict[str, Any], base_dir: Path | None = None) -> Scenario:
    check_plain_data(raw)
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(_format_validation_error(exc, Scenario)) from None
    _check_names(scenario)
    if scenario.client_tasks and scenario.backend != "ray":
        raise ScenarioError(
            f"client_tasks: clients run as Ray tasks only with backend = 'ray' (got "
            f"'{scenario.backend}'); set backend = \"ray\" or client_tasks = false"
        )
    if base_dir is not None:
        for section, key in PATH_FIELDS:
            params = getattr(scenario, section).params
            if key in params:
                path = Path(str(params[key])).expanduser()
                if not path.is_absolute():
                    params[key] = str((base_dir / path).resolve())
    scenario._base_dir = scenario.model._base_dir = base_dir
    return scenario


PATH_FIELDS = (("data", "path"), ("data", "root"), ("topology", "weights"), ("topology", "members"))
"""Params holding file paths, resolved against the scenario file's folder."""


def portable_dump(s: Scenario) -> dict[str, Any]:
    """The scenario as JSON with paths inside its folder written relative to it again, so the
    same folder run from anywhere gives the same results.json; where it ran (backend, Ray
    address, workers, client tasks) is left out, as results are identical on every backend."""
    raw = s.model_dump(mode="json", exclude={"backend", "ray_address", "workers", "client_tasks"})
    if s._base_dir is None:
        return raw
    base = str(s._base_dir.resolve())
    for section, key in PATH_FIELDS:
        value = raw[section]["params"].get(key)
        if isinstance(value, str) and Path(value).is_absolute():
            with contextlib.suppress(ValueError):
                raw[section]["params"][key] = Path(value).relative_to(base).as_posix()
    return raw


def _check_names(s: Scenario) -> None:
    registry.datasets.check(s.data.name, "data.name")
    registry.models.check(s.model.name, "model.name")
    registry.topologies.check(s.topology.name, "topology.name")
    seen: set[str] = set()
    for i, a in enumerate(s.attacks):
        registry.attacks.check(a.name, f"attacks.{i}.name")
        if a.key in seen:
            raise ScenarioError(f"attacks.{i}.id: duplicate attack id '{a.key}' (give each an id)")
        seen.add(a.key)
    for i, d in enumerate(s.defenses):
        registry.defenses.check(d.name, f"defenses.{i}.name")
    names: set[str] = set()
    for i, v in enumerate(s.variants):
        if v.name in names:
            raise ScenarioError(f"variants.{i}.name: duplicate variant name '{v.name}'")
        names.add(v.name)
        for j, d in enumerate(v.defenses):
            registry.defenses.check(d.name, f"variants.{i}.defenses.{j}.name")
    variant_names = {v.name for v in s.variant_list()}
    for i, e in enumerate(s.expectations):
        if e.variant is not None and e.variant not in variant_names:
            raise ScenarioError(
                f"expectations.{i}.variant: unknown variant '{e.variant}' "
                f"(allowed: {', '.join(sorted(variant_names))})"
            )
        head = e.metric.split(".")[0]
        if head not in {"utility", "attacks", "privacy", "cost", "robustness"}:
            raise ScenarioError(
                f"expectations.{i}.metric: '{e.metric}' must start with utility, attacks, "
                "privacy, cost or robustness"
            )


def load_scenario(
    ref: str | None, overrides: list[str] | None = None, seed: int | None = None
) -> Scenario:
    """Load a bundled name or a TOML path, apply `--set` overrides and `--seed`, validate."""
    raw, base = read_scenario_source(ref)
    for text in overrides or []:
        apply_override(raw, *parse_override(text))
    if seed is not None:
        raw["seed"] = seed
    return build_scenario(raw, base)


def variant_scenario(scenario: Scenario, variant: VariantSpec, index: int) -> Scenario:
    """The scenario as one variant runs it: its `set` overrides applied, defenses merged."""
    if not variant.set:
        return scenario
    raw = copy.deepcopy(scenario.model_dump(mode="json"))
    raw.pop("variants", None)
    raw.pop("expectations", None)
    for key, value in variant.set.items():
        if key.split(".")[0] in {"variants", "expectations", "seed"}:
            raise ScenarioError(f"variants.{index}.set: '{key}' cannot be set per variant")
        apply_override(raw, key, value)
    try:
        return build_scenario(raw, scenario._base_dir)
    except ScenarioError as exc:
        raise ScenarioError(f"variants.{index}.set: {exc}") from None
