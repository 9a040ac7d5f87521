"""Output folders that change all at once: a run's files are never mixed with an earlier run's.

Writing results.json and report.html one after the other, each atomically, still leaves a
window in which the folder holds the new results beside the old report. Instead, both files
(and hard links to anything else the folder held) are staged in a hidden sibling folder, which
is then swapped with the output folder in one step: Linux's renameat2(RENAME_EXCHANGE). Where
that call is missing (another OS, a file system without it) the old folder is renamed aside
and the staged one renamed into place; a run killed between those two renames leaves the old
folder aside under a name that the next write to the same folder puts back.

Whatever a kill -9 interrupts, the folder is as it was or complete. Two cases cannot move the
folder and fall back to one atomic rename per file (results.json last): the folder is (or
holds) the working directory, or it is a mount point. Leftovers (staging folders,
`.tmp` files) carry their writer's process id and are removed by the next write once that
process is gone. Files and folders get the permissions the umask allows (0644 / 0755 under the
usual 022), as any other program's output would.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

STAGING = "privlab-staging"
ASIDE = "privlab-old"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def tmp_prefix(name: str) -> str:
    """Prefix of a temporary file for `name`, carrying this process id (see `clean_stale`)."""
    return f".{name}.{os.getpid()}."


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_folder(folder: Path, files: dict[str, str]) -> None:
    """Make `folder` hold the new `files` (name -> text) and whatever else it held, in one step."""
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    if folder.is_dir() and (folder == Path.cwd() or folder in Path.cwd().parents):
        _write_in_place(folder, files)  # moving the working directory would strand its users
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{STAGING}-{os.getpid()}-", dir=parent))
    try:
        existed = folder.is_dir()
        os.chmod(staging, (folder.stat().st_mode & 0o7777) if existed else 0o777 & ~umask())
        if existed:
            _link_others(folder, staging, skip=set(files))
        for name, text in files.items():
            _write_file(staging / name, text)
        _fsync_dir(staging)
        if not existed:
            os.rename(staging, folder)  # fails (and changes nothing) if the folder appeared
        elif not _exchange(staging, folder):
            _swap_by_renames(staging, folder)
        _fsync_dir(parent)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        _write_in_place(folder, files)  # a mount point cannot be renamed
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the old files


def _write_in_place(folder: Path, files: dict[str, str]) -> None:
    """Last resort where the folder itself cannot move (the working directory, a mount point):
    each file atomically, results last, so a kill in between leaves the old results beside
    the new report, never half a file."""
    for name in sorted(files, key=lambda n: n == "results.json"):
        atomic_write_text(folder / name, files[name])


def _write_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _link_others(folder: Path, staging: Path, skip: set[str]) -> None:
    """Hard links (copies where links fail) of the folder's other entries: a swap keeps them."""
    for entry in folder.iterdir():
        if entry.name in skip or _is_leftover(entry.name):
            continue
        target = staging / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_by_renames(staging: Path, folder: Path) -> None:
    """Fallback swap: old folder aside, staged folder in. `clean_stale` undoes a half swap."""
    aside = folder.parent / f".{folder.name}.{ASIDE}-{os.getpid()}-{staging.name[-8:]}"
    os.rename(folder, aside)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    os.rename(aside, staging)  # removed with the staging folder


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_FOLDER_PID = re.compile(rf"\.(?:{STAGING}|{ASIDE})-(\d+)-")
_TMP_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def _is_leftover(name: str) -> bool:
    return name.startswith(".") and (
        name.endswith(".tmp") or f".{STAGING}-" in name or f".{ASIDE}-" in name
    )


def _writer_alive(name: str) -> bool:
    match = _FOLDER_PID.search(name) or _TMP_PID.search(name)
    if match is None:
        return False  # an older privlab's temporary file: nobody is writing it any more
    if int(match[1]) == os.getpid():
        return False  # a killed writer's id, reused by this process (which is not writing it)
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale(folder: Path) -> None:
    """Remove what killed writers left for `folder` (and put a half-swapped folder back)."""
    folder = Path(folder).resolve()
    parent = folder.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        name = entry.name
        if not name.startswith(f".{folder.name}.") or _writer_alive(name):
            continue
        if f".{ASIDE}-" in name and not folder.exists():
            with contextlib.suppress(OSError):
                os.rename(entry, folder)  # killed mid-swap: the old folder was complete
        elif f".{ASIDE}-" in name or f".{STAGING}-" in name:
            shutil.rmtree(entry, ignore_errors=True)
    if folder.is_dir():
        for entry in folder.iterdir():
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp") and not _writer_alive(name):
                entry.unlink(missing_ok=True)
