"""Where a scenario's raw dict comes from: a bundled name or a file, its TOML, and `--set
a.b=value` overrides, each failure as one line naming what is wrong, before any validation
(privlab.scenario) or training. Hostile input (deep nesting, NaN) is refused iteratively."""

from __future__ import annotations

import difflib
import math
import stat
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from privlab.errors import ScenarioError

MAX_DEPTH = 64
"""Deepest nesting of tables and arrays a scenario may hold (parsers recurse per level)."""


def bundled_scenarios() -> dict[str, str]:
    """Name -> description of the scenarios shipped in privlab.scenarios."""
    out = {}
    for item in sorted(resources.files("privlab.scenarios").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            try:
                desc = tomllib.loads(item.read_text()).get("description", "")
            except tomllib.TOMLDecodeError:
                desc = "(invalid TOML)"
            out[item.name.removesuffix(".toml")] = desc
    return out


def describe_path(path: Path) -> str:
    """What a path that is not a regular file is, for error messages ("a directory", ...)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"is {kind}, not a file" if kind.startswith("a ") else f"is {kind}"


def read_text_file(path: Path, field: str) -> str:
    """A regular file's UTF-8 text, or a one-line ScenarioError saying what is wrong."""
    if not path.is_file():
        raise ScenarioError(f"{field}: '{path}' {describe_path(path)}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{field}: '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
            f"at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ScenarioError(f"{field}: cannot read '{path}' ({exc.strerror or exc})") from None


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """tomllib.loads with its two failure modes (syntax, nesting that exhausts the recursion
    limit) as one-line ScenarioErrors."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{what}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(
            f"{what}: nested too deeply (at most {MAX_DEPTH} levels of tables and arrays)"
        ) from None


def read_scenario_source(ref: str | None) -> tuple[dict[str, Any], Path | None]:
    """Raw dict of a bundled scenario name or a path (None: the bundled default)."""
    ref = ref or "default"
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        text, base = read_text_file(path, "scenario"), path.resolve().parent
    else:
        names = bundled_scenarios()
        if ref not in names:
            close = difflib.get_close_matches(ref, list(names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ScenarioError(
                f"scenario: no bundled scenario or file '{ref}'{hint} (bundled: {', '.join(names)})"
            )
        text = resources.files("privlab.scenarios").joinpath(f"{ref}.toml").read_text()
        base = None
    return parse_toml(text, f"scenario '{ref}'"), base


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value); the value is read as a TOML value, else as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(f"--set: expected KEY=VALUE, got '{text}'")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    except RecursionError:
        raise ScenarioError(
            f"--set {key}: value nested too deeply (at most {MAX_DEPTH} levels)"
        ) from None
    return key, parsed


def check_plain_data(raw: Any, where: str = "") -> None:
    """Refuse nesting deeper than MAX_DEPTH and any NaN or infinite float, anywhere (component
    params included): iterative, so a hostile input cannot exhaust the recursion limit."""
    stack: list[tuple[Any, str, int]] = [(raw, where, 0)]
    while stack:
        node, path, depth = stack.pop()
        field = path or "scenario"
        if isinstance(node, float) and not math.isfinite(node):
            raise ScenarioError(f"{field}: must be a finite number (got {node})")
        if isinstance(node, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ScenarioError(
                    f"{field}: nested too deeply (at most {MAX_DEPTH} levels of tables and arrays)"
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `raw[a][b]... = value`; numeric parts index lists (e.g. `attacks.0.params.x`)."""
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:i]) or "scenario"
                raise ScenarioError(
                    f"--set {dotted}: '{where}' has {len(node)} entries, no index '{part}'"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(f"--set {dotted}: '{'.'.join(parts[:i])}' is not a table")
