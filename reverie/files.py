"""The one filesystem helper: atomic writes, directory fsync and an advisory lock.

Durable state (the version registry, the controller's state) is rewritten
whole: written to a hidden temporary file in the same directory, fsynced,
renamed over the old file, and the directory fsynced, so a crash leaves the
old file or the new one, never half of either.  Writers on one directory are
serialised with an ``fcntl`` lock, which the kernel releases when the process
holding it dies (a crashed writer leaves no lock held).
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


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
