"""The policy-version registry: which weights each version id names, and which one is promoted.

Version ids come from ``learner.checkpoint.VersionCounter`` (strictly
increasing, never reused, persisted).  The registry lives in one local
directory::

    root/
      counter.json          the VersionCounter
      registry.json         {"model": base model dir, "promoted": id, "versions": {id: info}}
      v00000007/            the weights of version 7 (safetensors buckets)

``registry.json`` is rewritten atomically (temp file, fsync, rename) under an
``fcntl`` lock, so a restart always finds the last promoted version and a
replica that starts loads it before it takes traffic.  The base model is
version ``base``: its weights are the model directory's own safetensors files.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from learner.checkpoint import VersionCounter


class VersionError(Exception):
    """A version that does not exist, or a registry that belongs to another model."""


@dataclass
class VersionInfo:
    version: int
    weights: list[str]  # safetensors files, in load order
    created: float
    source: str  # "base", "state_dict", "checkpoint:<dir>"
    note: str = ""
    extra: dict = field(default_factory=dict)


def model_weight_files(model_dir: str | Path) -> list[str]:
    files = sorted(str(p.resolve()) for p in Path(model_dir).glob("*.safetensors"))
    if not files:
        raise VersionError(f"{model_dir} has no *.safetensors weights")
    return files


class VersionRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.counter = VersionCounter(self.root / "counter.json")
        self._file = self.root / "registry.json"
        self._lock_path = self.root / "registry.lock"

    # ------------------------------------------------------------------ storage
    @contextlib.contextmanager
    def locked(self):
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict:
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"model": None, "promoted": None, "versions": {}}
        except ValueError as e:
            raise VersionError(f"version registry {self._file} is corrupted") from e
        return data

    def _write(self, data: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".registry.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # ------------------------------------------------------------------ API
    def ensure_base(self, model_dir: str | Path) -> VersionInfo:
        """Register ``model_dir`` as the base version on first use; refuse a registry of another model."""
        model_dir = str(Path(model_dir).resolve())
        with self.locked():
            data = self._read()
            if data["model"] is not None and data["model"] != model_dir:
                raise VersionError(
                    f"the version registry {self.root} belongs to model {data['model']!r}, not {model_dir!r}; "
                    "use another data directory"
                )
            if data["model"] is None:
                v = self.counter.next()
                info = VersionInfo(v, model_weight_files(model_dir), time.time(), "base")
                data = {"model": model_dir, "base": v, "promoted": v, "versions": {str(v): asdict(info)}}
                self._write(data)
        return self.promoted()

    def version_dir(self, version: int) -> Path:
        return self.root / f"v{version:08d}"

    def allocate(self) -> int:
        """A fresh, never-used version id."""
        return self.counter.next()

    def add(self, version: int, directory: Path, source: str, note: str = "", extra: dict | None = None) -> VersionInfo:
        """Record weights already written under ``directory`` (normally ``version_dir(version)``)."""
        files = sorted(str(p) for p in Path(directory).glob("*.safetensors"))
        if not files:
            raise VersionError(f"no safetensors files in {directory}")
        info = VersionInfo(version, files, time.time(), source, note, dict(extra or {}))
        with self.locked():
            data = self._read()
            if str(version) in data["versions"]:
                raise VersionError(f"version {version} is already registered")
            data["versions"][str(version)] = asdict(info)
            self._write(data)
        return info

    def promote(self, version: int) -> None:
        with self.locked():
            data = self._read()
            if str(version) not in data["versions"]:
                raise VersionError(f"unknown version {version}")
            data["promoted"] = int(version)
            data.setdefault("history", []).append({"version": int(version), "at": time.time()})
            self._write(data)

    def get(self, version: int) -> VersionInfo:
        data = self._read()
        try:
            return VersionInfo(**data["versions"][str(int(version))])
        except KeyError:
            known = ", ".join(sorted(data["versions"], key=int))
            raise VersionError(f"unknown version {version}; known versions: {known}") from None

    def promoted(self) -> VersionInfo:
        data = self._read()
        if data.get("promoted") is None:
            raise VersionError(f"no version has been registered in {self.root}")
        return self.get(data["promoted"])

    def summary(self) -> dict:
        data = self._read()
        return {
            "model": data.get("model"),
            "base": data.get("base"),
            "promoted": data.get("promoted"),
            "versions": [
                {k: v for k, v in info.items() if k != "weights"}
                for _, info in sorted(data["versions"].items(), key=lambda kv: int(kv[0]))
            ],
        }

    def write_version(self, version: int, files: list[Path]) -> Path:
        """Copy bucket files into ``version_dir(version)`` atomically (temp dir, fsync, rename)."""
        final = self.version_dir(version)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=self.root))
        try:
            for f in files:
                shutil.copyfile(f, tmp / Path(f).name)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
