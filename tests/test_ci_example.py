"""The documented GitHub Actions example, exercised: its privlab commands run as written, in a
copy of the example folder, after the one-off baseline step its header documents."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xmlschema

EXAMPLE = Path(__file__).parents[1] / "examples" / "github-actions"
WORKFLOW = EXAMPLE / "privacy-regression.yml"


def workflow_commands(text: str, program: str) -> list[str]:
    """The shell lines of the workflow's `run:` steps that call `program`."""
    out = []
    for line in text.splitlines():
        body = line.strip().removeprefix("- ").removeprefix("run:").strip()
        if body.startswith(f"{program} "):
            out.append(body)
    return out


def privlab(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("privlab")
    return subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_the_workflow_installs_with_constraints_and_uploads_the_report() -> None:
    text = WORKFLOW.read_text()
    assert any("-c constraints.txt" in c for c in workflow_commands(text, "pip"))
    assert "actions/upload-artifact" in text and "if: always()" in text
    assert ".privlab-cache" in text  # reference models are cached between CI runs
    assert workflow_commands(text, "privlab")


@pytest.mark.slow
def test_the_workflow_commands_pass_and_write_junit_and_summary(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "privacy", tmp_path / "privacy")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    env["PRIVLAB_CACHE_DIR"] = str(tmp_path / ".privlab-cache")
    first = privlab(
        "run", "privacy/scenario.toml", "--out", "reports/ci", "-q", cwd=tmp_path, env=env
    )
    assert first.returncode == 0, first.stderr
    step = ["baseline", "update", "reports/ci/results.json", "--baseline", "privacy/baseline.json"]
    assert privlab(*step, cwd=tmp_path, env=env).returncode == 0
    for command in workflow_commands(WORKFLOW.read_text(), "privlab"):
        args = [
            a.replace("$GITHUB_STEP_SUMMARY", env["GITHUB_STEP_SUMMARY"])
            for a in shlex.split(command)
        ][1:]
        done = privlab(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit.xsd")).validate(
        str(tmp_path / "reports" / "ci" / "junit.xml")
    )
    assert "passed" in (tmp_path / "summary.md").read_text().splitlines()[0]
