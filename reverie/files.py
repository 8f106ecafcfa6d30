"""The one filesystem helper: atomic writes, the modes of what is renamed into place, directory fsync and an
advisory lock.

Durable state (the version registry, the controller's state) is rewritten
whole: written to a hidden temporary file in the same directory, fsynced,
renamed over the old file, and the directory fsynced, so a crash leaves the
old file or the new one, never half of either.  Writers on one directory are
serialised with an ``fcntl`` lock, which the kernel releases when the process
holding it dies (a crashed writer leaves no lock held).

A file or directory put in place by a rename gets the mode the process's umask gives any new one
(``settle_modes``; ``mkstemp`` makes 0600 files, ``mkdtemp`` 0700 directories, safetensors 0600 files, and a rename
keeps them): what reverie writes is as readable as what any other program writes there.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """This process's umask, read from ``/proc`` (setting it to read it back would race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def settle_modes(root: str | Path) -> None:
    """Give the directory ``root`` and everything in it the modes a new directory and file get under the umask,
    before the rename that puts it in place: ``mkdtemp`` made it 0700, and writers such as safetensors make their
    files 0600, which a rename keeps."""
    umask = current_umask()
    root = Path(root)
    for p in (root, *root.rglob("*")):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path``; ``default`` when the file does not exist; ``ValueError`` when it is corrupted."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is corrupted: {text[:100]!r}") from e


@contextlib.contextmanager
def locked(path: str | Path):
    """An exclusive advisory lock on ``path`` (created if missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def acquire(path: str | Path, *, wait: bool = True):
    """Take an exclusive advisory lock on ``path`` (created if missing) and return the open file that holds it
    (``close()`` releases it), or None when ``wait`` is false and someone else holds it.  For a lock held
    across awaits; ``locked`` is the block form."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except BaseException:
        f.close()
        raise
    return f
