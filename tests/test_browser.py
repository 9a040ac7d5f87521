"""The report in a real browser (headless Chromium over the DevTools protocol).

Fails on a console error, a network request or content wider than the page, on screen at
1,280 px and 900 px and in print media at A4 width. The detector itself is tested on a page
that commits each failure. Skipped where chromium is not installed (.ci/run installs it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chromium_page import browser, check_page, chromium
from test_report import make_results

from privlab.png import png_data_uri

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed")

BROKEN = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head>
<body><p>broken on purpose</p>
<div style="width: 2000px; background: #eee">a wide block</div>
<div style="width: 300px; overflow-x: auto"><table><tr><td style="white-space: nowrap">
a long table cell that needs a horizontal scrollbar to be read in full, which the report
must never need</td></tr></table></div>
<img src="http://127.0.0.1:9/pixel.png" alt="">
<script>console.error("deliberate console error"); undefined_function();</script>
</body></html>"""

CLEAN = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>clean</title></head>
<body><p>nothing wrong here</p><img src="{png_data_uri(np.full((3, 4, 4), 0.5))}" alt="">
</body></html>"""


@pytest.fixture
def results() -> dict[str, Any]:
    return make_results()


@pytest.fixture(scope="module")
def port() -> Any:
    with browser() as p:
        yield p


def test_detector_catches_each_failure_kind(port: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(BROKEN, encoding="utf-8")
    found = check_page(port, page)
    assert any("deliberate console error" in e for e in found.console_errors)
    assert any("undefined_function" in e for e in found.console_errors)
    assert any(u.startswith("http://127.0.0.1:9/") for u in found.requests)
    wide = found.too_wide.get("screen 1280px", [])
    assert any("page scrollWidth" in w for w in wide)
    assert any("(overflow-x auto)" in w for w in wide)


def test_detector_passes_a_clean_page(port: str, tmp_path: Path) -> None:
    page = tmp_path / "clean.html"
    page.write_text(CLEAN, encoding="utf-8")
    assert check_page(port, page).problems() == []


def _check_report(port: str, path: Path) -> None:
    found = check_page(port, path, widths=(1280, 900))
    assert found.problems() == [], f"{path}:\n" + "\n".join(found.problems())


def test_report_is_clean_and_escapes_script(port: str, tmp_path: Path, results: Any) -> None:
    """A scenario description carrying script and an event handler renders as text."""
    from privlab.report import write_report

    data = copy.deepcopy(results)
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    data["scenario"]["description"] = evil
    data["scenario"]["name"] = "<script>window.__pwned = 3</script>"
    path = tmp_path / "report.html"
    write_report(data, path)
    found = check_page(
        port,
        path,
        widths=(1280, 900),
        evaluate={
            "pwned": "typeof window.__pwned",
            "shown": "document.body.innerText.includes('<script>window.__pwned = 1</script>')",
            "title": "document.querySelector('h1').textContent",
        },
    )
    assert found.problems() == [], "\n".join(found.problems())
    assert found.values == {
        "pwned": "undefined",
        "shown": True,
        "title": "<script>window.__pwned = 3</script>",
    }


@pytest.mark.slow
def test_every_bundled_scenario_report(port: str, tmp_path_factory: Any) -> None:
    """Every bundled scenario, run with few rounds (tests/browser_reports.py), in Chromium."""
    from browser_reports import build_reports

    reports = build_reports(tmp_path_factory.mktemp("bundled"))
    failures = []
    for name, (path, _) in reports.items():
        found = check_page(port, path, widths=(1280, 900))
        failures += [f"{name}: {p}" for p in found.problems()]
    assert not failures, "\n".join(failures)
