"""The CI gate's outputs that CI systems already understand: JUnit XML and a markdown summary.

JUnit layout (valid against the Jenkins/Ant JUnit schema, junit-10.xsd, which allows properties
on a testsuite but not on a testcase): one `testsuite` per scenario x variant, holding that
variant's metrics as `property` elements, and one `testcase` per check (expectation or baseline
entry) with a `failure` when it failed. Gate-level problems (nothing compared, a baseline variant
missing) are a testcase of their own in a `gate` suite, so a CI that counts failed testcases
sees them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from privlab.gate import GateOutcome, metric_paths
from privlab.results import lookup


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def junit_xml(results: dict[str, Any], outcome: GateOutcome) -> str:
    scenario = str((results.get("scenario") or {}).get("name", "scenario"))
    root = ET.Element("testsuites", name=f"privlab {scenario}")
    total = failures = 0
    variants = results.get("variants") or {}
    by_variant: dict[str, list] = {name: [] for name in variants}
    for check in outcome.checks:
        by_variant.setdefault(check.variant, []).append(check)
    for name, checks in by_variant.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{scenario}.{name}",
            tests=str(len(checks)),
            failures=str(sum(not c.passed for c in checks)),
            errors="0",
            skipped="0",
        )
        v = variants.get(name)
        if isinstance(v, dict):
            props = ET.SubElement(suite, "properties")
            for path in metric_paths(v):
                ET.SubElement(props, "property", name=path, value=_fmt(lookup(v, path)))
        for check in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"privlab.{scenario}.{name}",
                name=f"{check.kind}: {check.metric} ({check.expected})",
            )
            if not check.passed:
                failure = ET.SubElement(case, "failure", type=check.kind, message=check.message)
                failure.text = check.message
            total += 1
            failures += not check.passed
    if outcome.problems:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{scenario}.gate",
            tests=str(len(outcome.problems)),
            failures=str(len(outcome.problems)),
            errors="0",
            skipped="0",
        )
        for i, problem in enumerate(outcome.problems):
            case = ET.SubElement(
                suite, "testcase", classname=f"privlab.{scenario}.gate", name=f"gate problem {i}"
            )
            failure = ET.SubElement(case, "failure", type="gate", message=problem)
            failure.text = problem
            total += 1
            failures += 1
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_summary(results: dict[str, Any], outcome: GateOutcome) -> str:
    """A CI job summary (e.g. GitHub's $GITHUB_STEP_SUMMARY): verdict first, failures first."""
    scenario = (results.get("scenario") or {}).get("name", "scenario")
    failed = [c for c in outcome.checks if not c.passed]
    verdict = "passed" if outcome.passed else "FAILED"
    lines = [
        f"## privlab check: {_md(scenario)}: {verdict}",
        "",
        f"{len(outcome.checks) - len(failed)} of {len(outcome.checks)} check(s) held"
        + (f"; {len(outcome.problems)} gate problem(s)" if outcome.problems else "")
        + ".",
        "",
    ]
    for problem in outcome.problems:
        lines.append(f"- **{_md(problem)}**")
    if outcome.problems:
        lines.append("")
    if outcome.checks:
        lines += [
            "| result | variant | check | metric | actual | bound |",
            "|---|---|---|---|---|---|",
        ]
        for c in sorted(outcome.checks, key=lambda c: c.passed):
            actual = "missing" if c.actual is None else f"{c.actual:.4g}"
            mark = "pass" if c.passed else "**FAIL**"
            lines.append(
                f"| {mark} | {_md(c.variant)} | {c.kind} | `{_md(c.metric)}` | {actual} | "
                f"{_md(c.expected)} |"
            )
        lines.append("")
    for note in outcome.notes:
        lines.append(f"- {_md(note)}")
    return "\n".join(lines).rstrip() + "\n"
