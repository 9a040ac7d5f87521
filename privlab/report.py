"""The HTML report: one self-contained file rendered from results.json (schema 1).

It has to read well when opened straight from a CI artifact, so it carries its CSS inline and
its figures as inline SVG (see `privlab.plots`), and loads nothing from anywhere. Python here
shapes the results into rows and columns and supplies formatting filters; the template
(`templates/report.html.j2`) only lays them out. Every part of the results may be missing:
a missing number shows as an em dash rather than failing the report.
"""

from __future__ import annotations

import statistics
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from privlab import grading, report_figures, report_verdict
from privlab.report_format import (  # re-exported: report sections import them from here
    FILTERS,
    MISSING,
    as_number,
    auc_class,
    bound_text,
    fmt_bytes,
    fmt_delta,
    fmt_epsilon,
    fmt_fixed,
    fmt_int,
    fmt_metric,
    fmt_params,
    fmt_seconds,
    fmt_sig,
    fmt_value,
    metric_label,
    pretty_json,
)
from privlab.results import atomic_write_text

HEADLINE_METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
"""Shown first for membership attacks: AUC alone hides the low-FPR regime (Carlini et al.)."""
SUMMARY_METRICS_PER_ATTACK = 5
COUNT_METRICS = ("n_members", "n_nonmembers")
"""Sample counts go in the attack's column header, where they qualify every rate below them."""
__all__ = [
    "FILTERS",
    "MISSING",
    "Section",
    "as_dict",
    "as_list",
    "as_number",
    "auc_class",
    "bound_text",
    "extra_sections",
    "fmt_bytes",
    "fmt_delta",
    "fmt_epsilon",
    "fmt_fixed",
    "fmt_int",
    "fmt_metric",
    "fmt_params",
    "fmt_seconds",
    "fmt_sig",
    "fmt_value",
    "metric_label",
    "pretty_json",
    "render_report",
    "report_context",
    "write_report",
]
_KNOWN_VARIANT_KEYS = {
    "defenses", "utility", "attacks", "privacy", "cost", "notes", "status", "diverged_at_round",
}  # fmt: skip


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
    return grading.below_resolution(key, n_nonmembers)


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


def _headline_cells(
    variants: dict[str, Any], columns: list[dict[str, Any]], overrides: dict[str, Any]
) -> None:
    """Give every column its key metric's name and every row its value and grade there."""
    for col in columns:
        col["headline"] = ""
    for v in variants.values():
        cells = []
        for col in columns:
            entry = as_dict(as_dict(v.get("attacks")).get(col["id"]))
            if not entry:
                cells.append({"value": MISSING, "grade": "", "rule": "", "limited": False})
                continue
            g = grading.grade(str(entry.get("family") or ""), as_dict(entry.get("metrics")),
                              overrides)  # fmt: skip
            label, value = report_verdict.headline(entry, g)
            col["headline"] = col["headline"] or label
            cells.append(
                {"value": value, "grade": g.level, "rule": g.rule, "limited": g.below_resolution}
            )
        v["_headline_cells"] = cells


def _invocation(results: dict[str, Any], scenario: dict[str, Any]) -> tuple[str, bool]:
    """The command that reproduces the run, and whether the run recorded it (else an
    equivalent one is derived from the scenario name and seed)."""
    given = results.get("invocation")
    if isinstance(given, str) and given:
        return given, True
    seed = results.get("seed", scenario.get("seed"))
    return f"privlab run {scenario.get('name') or 'SCENARIO'} --seed {seed}", False


def report_context(results: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, shaped and with plots built; useful to test on its own."""
    from privlab import plots

    scenario = as_dict(results.get("scenario"))
    variants = {
        str(k): dict(v) for k, v in as_dict(results.get("variants")).items() if isinstance(v, dict)
    }
    columns = _attack_columns(scenario, variants)
    overrides = grading.overrides_of(results)
    _headline_cells(variants, columns, overrides)
    raw_expectations = as_list(results.get("expectations"))
    expectations = [_expectation(e) for e in raw_expectations if isinstance(e, dict)]
    failed = sum(1 for e in expectations if not e["passed"])
    rows = _variant_rows(variants, columns)
    colours = plots.variant_colours(results)
    for row in rows:
        row["colour"] = colours.get(row["name"], "#999999")
        row["headlines"] = variants[row["name"]]["_headline_cells"]
        row["status"] = str(variants[row["name"]].get("status") or "ok")
        row["diverged_at"] = variants[row["name"]].get("diverged_at_round")
    with plots.use_colours(colours):
        figures = report_figures.core_figures(results)
        sections = extra_sections(results)
    command, recorded = _invocation(results, scenario)
    verdicts = report_verdict.verdicts(results, fmt_seconds, fmt_bytes)
    return {
        "title": str(scenario.get("name") or "privlab run"),
        "description": str(scenario.get("description") or ""),
        "measured": _measured(results, scenario, len(variants)),
        "verdicts": verdicts,
        "overall": report_verdict.overall(verdicts),
        "adversaries": report_verdict.adversaries(results),
        "grading_rules": grading_rules(overrides),
        "columns": columns,
        "any_resolution_limited": any(c["limited"] for r in rows for c in r["headlines"]),
        "rows": rows,
        "colours": colours,
        "any_approximate": any(r["privacy"] and r["privacy"]["approximate"] for r in rows),
        "expectations": expectations,
        "expectations_failed": failed,
        "figures": figures,
        "sections": sections,
        "scenario": scenario,
        "invocation": command,
        "invocation_recorded": recorded,
        "versions": as_dict(results.get("versions")),
        "schema_version": results.get("schema_version"),
        "privlab_version": results.get("privlab_version"),
        "started": str(as_dict(results.get("timing")).get("started") or ""),
        "seconds": as_dict(results.get("timing")).get("seconds"),
    }


def grading_rules(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The bands in force (defaults with the scenario's overrides), for the report's legend."""
    out = []
    for family in grading.DEFAULT_BANDS:
        bands = grading.bands_for(family, overrides)
        unit = grading.UNITS[family]
        out.append(
            {
                "family": family,
                "what": grading.WHAT[family],
                "bands": ", ".join(f"{k} ≥ {bands[k]:g}{unit}" for k in grading.LEVELS),
                "overridden": family in overrides,
            }
        )
    return out


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
