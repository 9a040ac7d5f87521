"""Output folders: a run writes only inside its folder, the folder's two files always come
from one run (a kill -9 at any point leaves it as before or complete), leftovers of killed
writers are cleaned, and files honour the umask."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privlab import publish
from privlab.cli import app
from privlab.publish import clean_stale, publish_folder

runner = CliRunner()
TINY = [
    "partition.num_clients=3",
    "topology.rounds=2",
    "model.params={hidden=[8]}",
    'variants=[{name="plain"}]',
    "expectations=[]",
]
OLD = {"results.json": '{"run": "old"}\n', "report.html": "<html>old</html>\n"}
NEW = {"results.json": '{"run": "new"}\n', "report.html": "<html>new</html>\n"}


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def state(folder: Path) -> dict[str, str] | None:
    """The pair in a folder (None: no folder)."""
    if not folder.exists():
        return None
    return {p.name: p.read_text() for p in folder.iterdir() if not p.name.startswith(".")}


def leftovers(folder: Path) -> list[str]:
    here = [p.name for p in folder.iterdir()] if folder.exists() else []
    beside = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    return [n for n in here if n.startswith(".")] + beside


def test_a_run_honours_the_umask_and_leaves_nothing_else(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "reports" / "run"
        result = runner.invoke(app, ["run", *sets(TINY), "--out", str(out), "--quiet"])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]
    for name in ("results.json", "report.html"):
        assert (out / name).stat().st_mode & 0o777 == 0o644
    assert out.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]
    data = json.loads((out / "results.json").read_text())
    assert data["variants"]["plain"]["status"] == "ok"


def test_the_name_cannot_leave_the_reports_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    for name in ("..", "."):
        result = runner.invoke(app, ["run", "--set", f'name="{name}"'])
        assert result.exit_code == 2 and "name:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    assert list((tmp_path / "reports").iterdir()) == []


def test_publish_swaps_the_pair_and_keeps_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    publish_folder(folder, OLD)
    (folder / "notes.txt").write_text("mine")
    (folder / "figs").mkdir()
    (folder / "figs" / "a.svg").write_text("<svg/>")
    publish_folder(folder, NEW)
    assert (folder / "results.json").read_text() == NEW["results.json"]
    assert (folder / "report.html").read_text() == NEW["report.html"]
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "figs" / "a.svg").read_text() == "<svg/>"
    assert leftovers(folder) == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_publish_honours_any_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        publish_folder(tmp_path / "out", NEW)
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "results.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


def test_stale_leftovers_of_dead_writers_are_cleaned(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    publish_folder(folder, OLD)
    dead = _dead_pid()
    (folder / f".results.json.{dead}.abc123.tmp").write_text("half")
    (folder / ".report.html.legacy_x.tmp").write_text("half")  # an older privlab's name
    (tmp_path / f".out.{publish.STAGING}-{dead}-zzz").mkdir()
    alive = tmp_path / f".out.{publish.STAGING}-1-keep"  # pid 1 is alive: not ours to remove
    alive.mkdir()
    publish_folder(folder, NEW)
    assert leftovers(folder) == [alive.name]
    assert state(folder) == NEW


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------ kill -9 at every step of a write


def _killed_at(step: int, folder: Path, exchange: bool) -> bool:
    """Publish NEW over OLD in a child that dies (os._exit, like kill -9: no cleanup runs)
    just before its `step`-th file-system call. True if the child was killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        calls = [0]

        def wrap(fn):  # type: ignore[no-untyped-def]
            def inner(*a, **k):  # type: ignore[no-untyped-def]
                calls[0] += 1
                if calls[0] == step:
                    os._exit(9)
                return fn(*a, **k)

            return inner

        for name in ("open", "fsync", "rename", "replace", "link", "chmod", "mkdir", "unlink"):
            setattr(os, name, wrap(getattr(os, name)))
        publish.shutil.rmtree = wrap(publish.shutil.rmtree)
        publish._exchange = wrap(publish._exchange if exchange else lambda a, b: False)
        try:
            publish_folder(folder, NEW)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the write failed in step {step} (exit {code})"
    return code == 9


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_a_kill_at_any_step_leaves_the_folder_as_before_or_complete(
    tmp_path: Path, exchange: bool
) -> None:
    steps = 0
    for step in range(1, 200):
        folder = tmp_path / f"s{step}" / "out"
        publish_folder(folder, OLD)
        (folder / "keep.txt").write_text("mine")
        killed = _killed_at(step, folder, exchange)
        if not exchange:
            clean_stale(folder)  # the fallback's half swap is undone by the next reader/writer
        got = state(folder)
        assert got in ({**OLD, "keep.txt": "mine"}, {**NEW, "keep.txt": "mine"}), (step, got)
        publish_folder(folder, NEW)  # the next write cleans whatever the killed one left
        assert leftovers(folder) == [], (step, leftovers(folder))
        if not killed:
            steps = step
            break
    assert steps > 5  # the write really has several steps, each one was interrupted


CHILD = r"""
import json, sys
from pathlib import Path
from privlab.publish import publish_folder
folder, pad = Path(sys.argv[1]), "x" * 400_000
print("ready", flush=True)
for gen in range(1, 1_000_000):
    publish_folder(folder, {"results.json": json.dumps({"gen": gen, "pad": pad}),
                            "report.html": f"<html>{gen}</html>" + pad})
"""


def _generations(folder: Path) -> tuple[int, int]:
    results = json.loads((folder / "results.json").read_text())["gen"]
    report = int((folder / "report.html").read_text().split("</html>")[0].removeprefix("<html>"))
    return results, report


def test_kill_9_at_random_moments_never_mixes_two_runs(tmp_path: Path) -> None:
    """A real SIGKILL, at random moments of a writer that rewrites the folder in a loop."""
    folder = tmp_path / "out"
    rng = random.Random(10)
    last = 0
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if folder.exists():
            results_gen, report_gen = _generations(folder)
            assert results_gen == report_gen
            last = results_gen
    assert last > 0
    publish_folder(folder, NEW)
    assert leftovers(folder) == []


@pytest.mark.slow
def test_kill_9_during_privlab_run(tmp_path: Path) -> None:
    """The whole CLI, killed at random moments: the earlier pair or a complete new one."""
    folder = tmp_path / "out"
    publish_folder(folder, OLD)
    rng = random.Random(3)
    cmd = [sys.executable, "-m", "privlab", "run", *sets(TINY), "--out", str(folder), "-q"]
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = state(folder)
        assert got is not None
        if got != OLD:
            data = json.loads(got["results.json"])
            assert data["scenario"]["name"] == "default" and "<html" in got["report.html"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert leftovers(folder) == []


def test_the_working_directory_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "here"
    publish_folder(folder, OLD)
    monkeypatch.chdir(folder)
    inode = folder.stat().st_ino
    publish_folder(Path("."), NEW)
    assert folder.stat().st_ino == inode and Path.cwd() == folder  # not moved away
    assert state(folder) == NEW and leftovers(folder) == []
