"""The reference-model cache: damaged entries are rebuilt with a notice, never used."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from privlab.reference_cache import checksum, load_entry, save_entry
from privlab.reference_models import ReferenceJob, subset_masks, train_reference_models
from privlab.training import TrainSettings


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReferenceJob:
    monkeypatch.setenv("PRIVLAB_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    return ReferenceJob(
        x=x,
        y=y,
        masks=subset_masks(30, 2, 15, rng),
        settings=TrainSettings(batch_size=8, lr=0.2, local_epochs=1),
        rounds=2,
        num_clients=1,
        server_lr=1.0,
        model_key="mlp",
        seed=3,
    )


def _cache_path(job: ReferenceJob) -> Path:
    from privlab.reference_models import cache_dir

    return cache_dir() / f"ref-{job.key()}.pt"


def _damage_values(path: Path) -> None:
    """Right shapes, wrong values, the old checksum kept (a bit flip or a hand edit)."""
    entry = torch.load(path, weights_only=True)
    name = next(iter(entry["params"]))
    entry["params"][name] = entry["params"][name] + 0.5
    torch.save(entry, path)


def _damage_checksum_too(path: Path) -> None:
    """Wrong values written for another job, with a checksum that matches them."""
    entry = torch.load(path, weights_only=True)
    entry["key"] = "0" * 64
    entry["checksum"] = checksum(entry["params"], entry["buffers"])
    torch.save(entry, path)


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage": lambda p: p.write_bytes(b"\x00not a torch file\xff" * 50),
    "wrong_values": _damage_values,
    "another_job": _damage_checksum_too,
    "not_an_entry": lambda p: torch.save({"params": {}}, p),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_a_one_line_notice(job, damage, capsys) -> None:
    fresh, hit = train_reference_models(job, _mlp)
    assert not hit
    path = _cache_path(job)
    DAMAGE[damage](path)
    rebuilt, hit = train_reference_models(job, _mlp)
    assert not hit
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rebuilding" in err[0] and str(path) in err[0]
    x = torch.as_tensor(job.x)
    assert torch.equal(rebuilt.logits(x), fresh.logits(x))
    again, hit = train_reference_models(job, _mlp)  # the rebuilt entry is whole again
    assert hit and torch.equal(again.logits(x), fresh.logits(x))
    assert capsys.readouterr().err == ""


def test_an_intact_entry_loads_without_a_notice(job, capsys) -> None:
    train_reference_models(job, _mlp)
    _, hit = train_reference_models(job, _mlp)
    assert hit and capsys.readouterr().err == ""


def test_checksum_covers_values_names_and_shapes() -> None:
    a = {"w": torch.zeros(2, 3)}
    assert checksum(a, {}) != checksum({"w": torch.zeros(3, 2)}, {})
    assert checksum(a, {}) != checksum({"v": torch.zeros(2, 3)}, {})
    b = {"w": torch.zeros(2, 3)}
    b["w"][1, 2] = 1e-30
    assert checksum(a, {}) != checksum(b, {})


def test_concurrent_writers_never_leave_a_torn_entry(tmp_path: Path) -> None:
    """Many writers of the same entry at once, readers in between: every read that finds a
    file finds a whole, verified entry, and no temporary file is left behind."""
    path = tmp_path / "ref-x.pt"
    params = {f"p{i}": torch.randn(4, 256, 64) for i in range(4)}
    expected = {k: tuple(v.shape) for k, v in params.items()}
    errors: list[str] = []

    def write() -> None:
        for _ in range(5):
            save_entry(path, "x", params, {})

    def read() -> None:
        for _ in range(20):
            if path.exists() and load_entry(path, "x", expected) is None:
                errors.append("torn")

    threads = [threading.Thread(target=write) for _ in range(4)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert load_entry(path, "x", expected) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["ref-x.pt"]
