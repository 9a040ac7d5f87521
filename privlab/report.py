"""The HTML report: one self-contained file rendered from results.json (schema 1).

It has to read well when opened straight from a CI artifact, so it carries its CSS inline and
its figures as inline SVG (see `privlab.plots`), and loads nothing from anywhere. Python here
shapes the results into rows and columns and supplies formatting filters; the template
(`templates/report.html.j2`) only lays them out. Every part of the results may be missing:
a missing number shows as an em dash rather than failing the report.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from privlab import plots
from privlab.results import atomic_write_text

MISSING = "—"
HEADLINE_METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
"""Shown first for membership attacks: AUC alone hides the low-FPR regime (Carlini et al.)."""
SUMMARY_METRICS_PER_ATTACK = 5
COUNT_METRICS = ("n_members", "n_nonmembers")
"""Sample counts go in the attack's column header, where they qualify every rate below them."""
_METRIC_LABELS = {
    "auc": "AUC",
    "tpr_at_1pct_fpr": "TPR@1%FPR",
    "tpr_at_0.1pct_fpr": "TPR@0.1%FPR",
    "advantage": "advantage",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "mse": "MSE",
}
_TPR_AT = re.compile(r"^tpr_at_(\d+(?:\.\d+)?)pct_fpr$")
_KNOWN_VARIANT_KEYS = {"defenses", "utility", "attacks", "privacy", "cost", "notes"}


# --------------------------------------------------------------------------- filters


def as_number(value: Any) -> float | None:
    """A finite float, or None for anything that is not a real number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def fmt_fixed(value: Any, decimals: int = 3) -> str:
    f = as_number(value)
    return MISSING if f is None else f"{f:.{decimals}f}"


def fmt_sig(value: Any, digits: int = 3) -> str:
    """Significant digits, so small rates such as TPR 0.00123 keep their information."""
    f = as_number(value)
    if f is None:
        return MISSING
    if f == 0:
        return "0"
    text = f"{f:#.{digits}g}"
    return text.rstrip(".") if "e" not in text else text


def fmt_epsilon(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return "∞"
    return fmt_fixed(value, 2)


def fmt_delta(value: Any) -> str:
    f = as_number(value)
    if f is None:
        return MISSING
    if f == 0 or abs(f) >= 1e-3:
        return f"{f:g}"
    mantissa, _, exponent = f"{f:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_int(value: Any) -> str:
    f = as_number(value)
    return MISSING if f is None else f"{round(f):,}"


def fmt_metric(value: Any, key: str = "") -> str:
    """Per-metric precision: AUC 3 decimals, rates 3 significant digits, counts as integers."""
    f = as_number(value)
    if f is None:
        return MISSING
    if key == "auc" or key.endswith("_auc") or key in {"accuracy", "advantage"}:
        return fmt_fixed(f, 3)
    if key.startswith(("tpr", "fpr")) or "_tpr" in key or "_fpr" in key:
        return fmt_sig(f, 3)
    if key.startswith("n_") or (isinstance(value, int) and not isinstance(value, bool)):
        return fmt_int(f)
    if abs(f) >= 1000:
        return fmt_int(f)
    return fmt_sig(f, 3)


def fmt_bytes(value: Any) -> str:
    """Binary units (KiB, MiB...), as message sizes are counted in bytes."""
    f = as_number(value)
    if f is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(f) < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return MISSING  # pragma: no cover


def fmt_seconds(value: Any) -> str:
    f = as_number(value)
    if f is None:
        return MISSING
    if f < 60:
        return f"{f:.2f} s" if f < 10 else f"{f:.1f} s"
    minutes, seconds = divmod(round(f), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_value(value: Any) -> str:
    """Short display of a parameter value (a defense's noise multiplier, a list of layers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def fmt_params(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items() if v is not None)


def metric_label(key: str) -> str:
    if key in _METRIC_LABELS:
        return _METRIC_LABELS[key]
    m = _TPR_AT.match(key)
    if m:
        return f"TPR@{m.group(1)}%FPR"
    return key.replace("_", " ")


def auc_class(value: Any) -> str:
    """CSS class by distance from chance: an AUC of 0.3 leaks as much as one of 0.7."""
    f = as_number(value)
    if f is None:
        return ""
    d = abs(f - 0.5)
    if d < 0.05:
        return "risk-chance"
    if d < 0.1:
        return "risk-low"
    if d < 0.2:
        return "risk-mid"
    return "risk-high"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def bound_text(expectation: dict[str, Any]) -> str:
    lo, hi = expectation.get("min"), expectation.get("max")
    if lo is not None and hi is not None:
        return f"{fmt_value(lo)} ≤ x ≤ {fmt_value(hi)}"
    if lo is not None:
        return f"≥ {fmt_value(lo)}"
    if hi is not None:
        return f"≤ {fmt_value(hi)}"
    return MISSING


FILTERS = {
    "fixed": fmt_fixed,
    "sig": fmt_sig,
    "accuracy": lambda v: fmt_fixed(v, 3),
    "auc": lambda v: fmt_fixed(v, 3),
    "epsilon": fmt_epsilon,
    "delta": fmt_delta,
    "int": fmt_int,
    "metric": fmt_metric,
    "bytes": fmt_bytes,
    "seconds": fmt_seconds,
    "value": fmt_value,
    "params": fmt_params,
    "metric_label": metric_label,
    "auc_class": auc_class,
    "pretty_json": pretty_json,
}


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("privlab", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,  # a template typo fails the tests instead of vanishing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


# --------------------------------------------------------------------------- shaping


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _resolution_limited(key: str, n_nonmembers: int | None) -> bool:
    """True when a TPR@x%FPR asks for an FPR below 1/n: not measurable with n non-members."""
    m = _TPR_AT.match(key)
    return bool(m and n_nonmembers and float(m.group(1)) / 100 < 1 / n_nonmembers)


def _counts(values: list[Any]) -> str:
    nums = sorted({int(f) for v in values if (f := as_number(v)) is not None})
    if not nums:
        return ""
    return f"{nums[0]:,}" if len(nums) == 1 else f"{nums[0]:,}–{nums[-1]:,}"


def _attack_columns(scenario: dict[str, Any], variants: dict[str, Any]) -> list[dict[str, Any]]:
    """One column group per attack id, in scenario order, with its numeric metric keys."""
    order: list[str] = []
    for spec in as_list(scenario.get("attacks")):
        if isinstance(spec, dict) and (key := spec.get("id") or spec.get("name")):
            order.append(str(key))
    for v in variants.values():
        order += [str(k) for k in as_dict(v.get("attacks"))]
    columns = []
    for attack_id in dict.fromkeys(order):
        entries = [
            e
            for v in variants.values()
            if isinstance(e := as_dict(v.get("attacks")).get(attack_id), dict)
        ]
        if not entries:
            continue
        keys: list[str] = []
        for e in entries:
            keys += [
                k for k, val in as_dict(e.get("metrics")).items() if as_number(val) is not None
            ]
        keys = list(dict.fromkeys(keys))
        metrics = [k for k in HEADLINE_METRICS if k in keys]
        metrics += [k for k in keys if k not in HEADLINE_METRICS and k not in COUNT_METRICS]
        metrics = metrics[:SUMMARY_METRICS_PER_ATTACK]  # all of them are in the variant cards
        first = entries[0]
        n_non = [as_dict(e.get("metrics")).get("n_nonmembers") for e in entries]
        n_non_known = [int(f) for x in n_non if (f := as_number(x)) is not None]
        columns.append(
            {
                "id": attack_id,
                "name": str(first.get("name") or attack_id),
                "family": str(first.get("family") or ""),
                "threat_model": as_dict(first.get("threat_model")),
                "metrics": metrics,
                "n_members": _counts([as_dict(e.get("metrics")).get("n_members") for e in entries]),
                "n_nonmembers": _counts(n_non),
                "min_nonmembers": min(n_non_known) if n_non_known else None,
                "has_roc": any(
                    isinstance(as_dict(e.get("artifacts")).get("roc"), dict) for e in entries
                ),
            }
        )
    return columns


def _defense(d: dict[str, Any]) -> dict[str, Any]:
    name = str(d.get("name") or d.get("id") or "?")
    ident = str(d.get("id") or "")
    return {"name": name, "id": ident if ident != name else "", "params": as_dict(d.get("params"))}


def _privacy(p: Any) -> dict[str, Any] | None:
    if not isinstance(p, dict):
        return None
    return {
        "epsilon": p.get("epsilon"),
        "delta": p.get("delta"),
        "accountant": str(p.get("accountant") or ""),
        "approximate": bool(p.get("approximate")),
    }


def _expectation(e: dict[str, Any]) -> dict[str, Any]:
    metric = str(e.get("metric") or "")
    variant = e.get("variant")
    return {
        "metric": metric,
        "metric_key": metric.rsplit(".", 1)[-1],
        "variant": "every variant" if variant is None else str(variant),
        "bound": bound_text(e),
        "actual": e.get("actual"),
        "passed": bool(e.get("passed")),
    }


def _cost_summary(cost: dict[str, Any]) -> dict[str, Any]:
    per_round = [f for x in as_list(cost.get("bytes_per_round")) if (f := as_number(x)) is not None]
    mean = statistics.fmean(per_round) if per_round else None
    varies = bool(per_round) and min(per_round) != max(per_round)
    return {
        "bytes_per_round": mean,
        "bytes_per_round_varies": varies,
        "bytes_per_round_min": min(per_round) if per_round else None,
        "bytes_per_round_max": max(per_round) if per_round else None,
        "bytes_total": cost.get("bytes_total"),
        "seconds": cost.get("seconds"),
        "rounds": len(per_round),
    }


def _per_client(privacy: dict[str, Any]) -> list[tuple[str, Any]]:
    """Clients in numeric order ("2" before "10"), any non-numeric ids after them."""
    items = [(str(k), v) for k, v in as_dict(privacy.get("per_client")).items()]
    return sorted(items, key=lambda kv: (0, int(kv[0]), "") if kv[0].isdigit() else (1, 0, kv[0]))


def _variant_rows(variants: dict[str, Any], columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, v in variants.items():
        attacks = as_dict(v.get("attacks"))
        raw_privacy = v.get("privacy")
        privacy = _privacy(raw_privacy)
        per_client = _per_client(raw_privacy) if isinstance(raw_privacy, dict) else []
        client_eps = [f for _, x in per_client if (f := as_number(x)) is not None]
        cells = []
        for col in columns:
            metrics = as_dict(as_dict(attacks.get(col["id"])).get("metrics"))
            n_non = as_number(metrics.get("n_nonmembers"))
            for key in col["metrics"]:
                cells.append(
                    {
                        "key": key,
                        "value": metrics.get(key),
                        "limited": _resolution_limited(key, int(n_non) if n_non else None),
                    }
                )
        rows.append(
            {
                "name": name,
                "defenses": [
                    _defense(d) for d in as_list(v.get("defenses")) if isinstance(d, dict)
                ],
                "final_accuracy": as_dict(v.get("utility")).get("final_accuracy"),
                "final_loss": as_dict(v.get("utility")).get("final_loss"),
                "cells": cells,
                "attack_metrics": [
                    (aid, [(k, m) for k, m in as_dict(as_dict(a).get("metrics")).items()])
                    for aid, a in attacks.items()
                ],
                "privacy": privacy,
                "per_client": per_client,
                "per_client_range": (
                    (min(client_eps), statistics.median(client_eps), max(client_eps))
                    if client_eps
                    else None
                ),
                "cost": _cost_summary(as_dict(v.get("cost"))),
                "notes": [str(n) for n in as_list(v.get("notes"))],
                "extra": {k: val for k, val in v.items() if k not in _KNOWN_VARIANT_KEYS},
            }
        )
    return rows


def _measured(results: dict[str, Any], scenario: dict[str, Any], n_variants: int) -> dict[str, Any]:
    """The facts for the one-paragraph "what this run measured" line."""
    partition = as_dict(scenario.get("partition"))
    topology = as_dict(scenario.get("topology"))
    seed = results.get("seed", scenario.get("seed"))
    return {
        "topology": topology.get("name"),
        "dataset": as_dict(scenario.get("data")).get("name"),
        "model": as_dict(scenario.get("model")).get("name"),
        "clients": partition.get("num_clients"),
        "partition": partition.get("scheme"),
        "rounds": topology.get("rounds"),
        "seed": seed,
        "n_variants": n_variants,
        "n_attacks": len(as_list(scenario.get("attacks"))),
    }


def report_context(results: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, shaped and with plots built; useful to test on its own."""
    scenario = as_dict(results.get("scenario"))
    variants = {
        str(k): v for k, v in as_dict(results.get("variants")).items() if isinstance(v, dict)
    }
    columns = _attack_columns(scenario, variants)
    raw_expectations = as_list(results.get("expectations"))
    expectations = [_expectation(e) for e in raw_expectations if isinstance(e, dict)]
    failed = sum(1 for e in expectations if not e["passed"])
    roc_plots = []
    for col in columns:
        if col["has_roc"] and (svg := plots.roc_plot(results, col["id"])):
            roc_plots.append({"id": col["id"], "name": col["name"], "svg": svg})
    rows = _variant_rows(variants, columns)
    return {
        "title": str(scenario.get("name") or "privlab run"),
        "description": str(scenario.get("description") or ""),
        "measured": _measured(results, scenario, len(variants)),
        "columns": columns,
        "any_resolution_limited": any(
            _resolution_limited(k, c["min_nonmembers"]) for c in columns for k in c["metrics"]
        ),
        "any_auc": any("auc" in c["metrics"] for c in columns),
        "rows": rows,
        "any_approximate": any(r["privacy"] and r["privacy"]["approximate"] for r in rows),
        "expectations": expectations,
        "expectations_failed": failed,
        "accuracy_svg": plots.accuracy_plot(results),
        "sections": extra_sections(results),
        "roc_plots": roc_plots,
        "scenario": scenario,
        "versions": as_dict(results.get("versions")),
        "schema_version": results.get("schema_version"),
        "privlab_version": results.get("privlab_version"),
        "started": str(as_dict(results.get("timing")).get("started") or ""),
        "seconds": as_dict(results.get("timing")).get("seconds"),
    }


# --------------------------------------------------------------------------- extra sections


@dataclass(frozen=True)
class Section:
    """A report section contributed by a module of privlab.report_sections.

    `html` must already be safe: build it with plots.py (which escapes) and html.escape.
    """

    title: str
    html: str
    caption: str = ""
    order: int = 100


def extra_sections(results: dict[str, Any]) -> list[Section]:
    """Sections from every module in privlab.report_sections that defines
    `sections(results) -> list[Section]` (attack and topology families add their own figures
    there, e.g. reconstructions or accuracy against the malicious fraction)."""
    import importlib
    import pkgutil

    from privlab import report_sections

    found: list[Section] = []
    for info in sorted(pkgutil.iter_modules(report_sections.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"privlab.report_sections.{info.name}")
        maker = getattr(module, "sections", None)
        if maker is not None:
            found += maker(results)
    return sorted(found, key=lambda sec: (sec.order, sec.title))


# --------------------------------------------------------------------------- public API


def render_report(results: dict[str, Any]) -> str:
    """The report as one self-contained HTML document."""
    template = _environment().get_template("report.html.j2")
    return template.render(**report_context(results))


def write_report(results: dict[str, Any], path: Path) -> None:
    """Render first, then write atomically: a failed render never leaves half a report."""
    atomic_write_text(Path(path), render_report(results))


class _CallableModule(types.ModuleType):
    """`privlab.report(results, path)` is the API's report function, while `privlab.report` is
    also this module (importing a submodule sets the package attribute): calling the module
    calls the function."""

    def __call__(self, results: Any, path: Any) -> Path:
        from privlab.api import report

        return report(results, path)


sys.modules[__name__].__class__ = _CallableModule
