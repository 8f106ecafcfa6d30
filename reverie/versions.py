"""The one version space: the counter that allocates policy-version ids, and
the registry of what each id names.

Every record that speaks of weights uses these ids: interactions (the version
stamped at dispatch), feedback (the version of the response it is about), dream
trajectories (the policy that played them), candidates and replicas.  The base
model is registered once, as the first id of a fresh registry, and is that id
everywhere.

A version is a **candidate**: its weight files (safetensors, immutable: written
once under ``v{id:08d}/`` and never rewritten under the same id), its parent
version, the learner step that produced it, the lessons it learnt from, its
gate scores and a status::

    candidate -> rejected                      (the gate, or a person, said no)
    candidate -> pending -> approved -> promoted   (approval required)
    candidate -> approved -> promoted              (auto-approval)
    promoted  -> rolled-back -> promoted           (rollback, and back again)

Layout of the registry's (local) directory::

    root/
      counter.json        the VersionCounter (never reused, survives restarts)
      registry.json       {"model", "base", "promoted", "versions": {id: candidate}, "history": [...]}
      v00000007/          the files of version 7 (an HF model directory for learner outputs)

``registry.json`` is rewritten atomically under an ``fcntl`` lock, so several
processes (the ingress, the controller, a replica that starts) share it.  This
module imports no torch: it is the vocabulary every room speaks.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from reverie.files import atomic_write_json, fsync_dir, locked, read_json, settle_modes

CANDIDATE, REJECTED, PENDING, APPROVED, PROMOTED, ROLLED_BACK = (
    "candidate", "rejected", "pending", "approved", "promoted", "rolled-back")
STATUSES = (CANDIDATE, REJECTED, PENDING, APPROVED, PROMOTED, ROLLED_BACK)
# Under the registry's root: held by the broadcaster for a whole swap, and by a serving replica while it
# starts (so a replica never loads the version a running swap is about to replace).
SWAP_LOCK = "swap.lock"
# Which status may follow which (promotion and rollback go through ``promote`` and ``rolled_back``).
_NEXT = {
    CANDIDATE: {REJECTED, PENDING, APPROVED},
    PENDING: {REJECTED, APPROVED},
    APPROVED: {PROMOTED, REJECTED},
    PROMOTED: {ROLLED_BACK},
    ROLLED_BACK: {PROMOTED},
    REJECTED: set(),
}


class VersionError(Exception):
    """A version that does not exist, a decision its status does not allow, or a registry of another model."""


class VersionCounter:
    """A strictly increasing, never-reused number persisted in a JSON file.

    ``next()`` writes the new number to disk (atomically, fsynced) before it
    returns it, so a number handed out is never handed out again, even after a
    restart.  A missing file starts the count at 1; a corrupted one raises
    ``ValueError`` rather than risk reusing numbers.  Processes are serialised
    with an ``fcntl`` lock on ``path + '.lock'``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def _read(self) -> int:
        data = read_json(self.path, {"last": 0})
        last = data.get("last") if isinstance(data, dict) else None
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise ValueError(f"version counter file {self.path} holds an invalid value {last!r}")
        return last

    @property
    def last(self) -> int:
        """The last number handed out (0 if none)."""
        return self._read()

    def next(self) -> int:
        """Reserve and return the next number."""
        with locked(self._lock_path):
            n = self._read() + 1
            atomic_write_json(self.path, {"last": n})
            return n

    def ensure_above(self, version: int) -> None:
        """Make sure future numbers exceed ``version``."""
        with locked(self._lock_path):
            if self._read() < version:
                atomic_write_json(self.path, {"last": int(version)})


@dataclass
class Candidate:
    """One version id and everything known about it."""
    version: int
    weights: list[str]  # safetensors files, in load order
    created: float
    source: str  # "base", "learner", "checkpoint:<dir>", "state_dict"
    parent: int | None = None
    status: str = CANDIDATE
    step: int | None = None  # the learner's update count when it was saved
    lessons: dict = field(default_factory=dict)  # {"counts": {kind: n}, "ids": [record ids], "contexts": [...]}
    scores: dict | None = None  # the gate's: {"new": {...}, "retention": {...}, "gain", "retention_loss", "passed"}
    reason: str = ""  # why it was rejected (the gate's or a person's words)
    decisions: list[dict] = field(default_factory=list)  # [{"action", "by", "at", "note"}]
    note: str = ""
    cycle: int | None = None

    @property
    def directory(self) -> Path:
        return Path(self.weights[0]).parent

    def public(self) -> dict:
        """What status and review show (no file paths)."""
        d = asdict(self)
        d.pop("weights")
        d["source"] = self.source.split(":", 1)[0]  # "checkpoint:<dir>" names a server path: kept private
        d["lessons"] = ({k: v for k, v in self.lessons.items() if k not in ("ids", "trajectories")}
                        | {"records": len(self.lessons.get("ids", [])),
                           "trajectories": len(self.lessons.get("trajectories", []))})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def redacted(text) -> str | None:
    """What people are shown instead of a feedback text when feedback is redacted (``redact_feedback``)."""
    return None if text is None else f"[redacted: {len(text)} characters]"


def redact_feedback(public: dict) -> dict:
    """A candidate's public record (``Candidate.public()``) with the feedback texts it learnt from (its rules,
    and each example's rule and correction) replaced by ``redacted``; the rest (counts, scores, asks) as it was."""
    lessons = dict(public.get("lessons") or {})
    if "rules" in lessons:
        lessons["rules"] = [redacted(r) for r in lessons["rules"]]
    if "examples" in lessons:
        lessons["examples"] = [{**e, **{k: redacted(e.get(k)) for k in ("rule", "correction") if k in e}}
                               for e in lessons["examples"]]
    return {**public, "lessons": lessons}


def model_weight_files(model_dir: str | Path) -> list[str]:
    files = sorted(str(p.resolve()) for p in Path(model_dir).glob("*.safetensors"))
    if not files:
        raise VersionError(f"{model_dir} has no *.safetensors weights")
    return files


class VersionRegistry:
    """The only allocator of version ids, and the durable record of every version."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.counter = VersionCounter(self.root / "counter.json")
        self._file = self.root / "registry.json"
        self._lock_path = self.root / "registry.lock"

    # ------------------------------------------------------------------ storage
    def locked(self):
        return locked(self._lock_path)

    def _read(self) -> dict:
        try:
            data = read_json(self._file, None)
        except ValueError as e:
            raise VersionError(str(e)) from None
        return data or {"model": None, "base": None, "promoted": None, "versions": {}, "history": []}

    def _write(self, data: dict) -> None:
        atomic_write_json(self._file, data)

    def _update(self, version: int, change) -> Candidate:
        """Apply ``change(candidate, data)`` to one version under the lock and store it."""
        with self.locked():
            data = self._read()
            c = self._get(data, version)
            change(c, data)
            data["versions"][str(c.version)] = asdict(c)
            self._write(data)
        return c

    @staticmethod
    def _get(data: dict, version: int) -> Candidate:
        try:
            return Candidate.from_dict(data["versions"][str(int(version))])
        except (KeyError, ValueError, TypeError):
            known = ", ".join(sorted(data["versions"], key=int)) or "none"
            raise VersionError(f"unknown version {version!r}; known versions: {known}") from None

    # ------------------------------------------------------------------ registering
    def ensure_base(self, model_dir: str | Path) -> Candidate:
        """Register ``model_dir`` as the base version on first use; refuse a registry of another model."""
        model_dir = str(Path(model_dir).resolve())
        with self.locked():
            data = self._read()
            if data["model"] is not None and data["model"] != model_dir:
                raise VersionError(
                    f"the version registry {self.root} belongs to model {data['model']!r}, not {model_dir!r}; "
                    "use another data directory")
            if data["model"] is None:
                v = self.counter.next()
                base = Candidate(v, model_weight_files(model_dir), time.time(), "base", status=PROMOTED)
                data = {"model": model_dir, "base": v, "promoted": v, "versions": {str(v): asdict(base)},
                        "history": [{"version": v, "at": base.created, "action": "base"}]}
                self._write(data)
        return self.promoted()

    def version_dir(self, version: int) -> Path:
        return self.root / f"v{int(version):08d}"

    def allocate(self) -> int:
        """A fresh, never-used version id."""
        return self.counter.next()

    def register(self, directory: str | Path, *, source: str, version: int | None = None, parent: int | None = None,
                 step: int | None = None, lessons: dict | None = None, note: str = "", cycle: int | None = None,
                 move: bool = False) -> Candidate:
        """Make the safetensors model directory ``directory`` version ``version`` (allocated when None).

        Its files end up, once, in ``version_dir(version)``: renamed there when ``move`` (the learner's own
        output), otherwise copied (a directory the caller keeps).  The copy is made in a hidden temporary
        directory, fsynced, then renamed, so a crash leaves no half-written version."""
        directory = Path(directory)
        if not sorted(directory.glob("*.safetensors")):
            raise VersionError(f"{str(directory)!r} has no *.safetensors weights")
        version = self.allocate() if version is None else int(version)
        if self.counter.last < version:
            raise VersionError(f"version {version} was not allocated by this registry")
        final = self.version_dir(version)
        if final.exists():
            raise VersionError(f"version {version} is already registered")
        if move and directory.resolve().parent.stat().st_dev == self.root.stat().st_dev:
            settle_modes(directory)
            os.rename(directory, final)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=self.root))
            try:
                for f in directory.iterdir():
                    if f.is_file():
                        shutil.copyfile(f, tmp / f.name)
                settle_modes(tmp)
                for f in tmp.iterdir():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if move:
                shutil.rmtree(directory, ignore_errors=True)
        fsync_dir(self.root)
        c = Candidate(version, sorted(str(p) for p in final.glob("*.safetensors")), time.time(), source,
                      parent=parent, step=step, lessons=dict(lessons or {}), note=note, cycle=cycle)
        with self.locked():
            data = self._read()
            if str(version) in data["versions"]:
                raise VersionError(f"version {version} is already registered")
            data["versions"][str(version)] = asdict(c)
            self._write(data)
        return c

    # ------------------------------------------------------------------ status
    def set_status(self, version: int, status: str, *, reason: str | None = None, scores: dict | None = None,
                   decision: dict | None = None) -> Candidate:
        if status not in STATUSES:
            raise VersionError(f"unknown status {status!r}")

        def change(c: Candidate, _data):
            if status != c.status and status not in _NEXT[c.status]:
                raise VersionError(f"version {c.version} is {c.status}; it cannot become {status}")
            c.status = status
            if reason is not None:
                c.reason = reason
            if scores is not None:
                c.scores = scores
            if decision is not None:
                c.decisions.append({"at": time.time(), **decision})

        return self._update(version, change)

    def promote(self, version: int, *, rollback: bool = False) -> Candidate:
        """``version`` becomes the one every replica serves (after the broadcaster installed it).  A promotion
        needs an approved candidate; a rollback a version that was promoted before.  The version it replaces
        becomes ``rolled-back`` when this is a rollback."""
        def change(c: Candidate, data):
            if rollback:
                if c.status not in (PROMOTED, ROLLED_BACK):
                    raise VersionError(f"version {c.version} was never promoted ({c.status}); "
                                       "only a version that served before can be rolled back to")
            elif c.status not in (APPROVED, PROMOTED):
                raise VersionError(f"version {c.version} is {c.status}; only an approved candidate is promoted")
            current = data.get("promoted")
            if rollback and current is not None and current != c.version:
                old = self._get(data, current)
                old.status = ROLLED_BACK
                data["versions"][str(old.version)] = asdict(old)
            c.status = PROMOTED
            data["promoted"] = c.version
            data.setdefault("history", []).append(
                {"version": c.version, "at": time.time(), "action": "rollback" if rollback else "promote"})

        return self._update(version, change)

    def decide(self, version: int, approve: bool, by: str, note: str = "") -> Candidate:
        """A person's decision on a pending candidate (``VersionError`` when it is not pending)."""
        def change(c: Candidate, _data):
            if c.status != PENDING:
                raise VersionError(f"version {c.version} is {c.status}, not pending: there is nothing to "
                                   f"{'approve' if approve else 'reject'}")
            c.status = APPROVED if approve else REJECTED
            if not approve:
                c.reason = f"rejected by {by}: {note}" if note else f"rejected by {by}"
            c.decisions.append({"action": "approve" if approve else "reject", "by": by, "at": time.time(),
                                "note": note})

        return self._update(version, change)

    def save_review(self, version: int, review: dict) -> None:
        """The gate's full work evaluation of ``version`` (samples included), beside the registry."""
        atomic_write_json(self.root / "reviews" / f"v{int(version):08d}.json", review)

    def review(self, version: int) -> dict:
        self.get(version)  # VersionError when unknown
        return read_json(self.root / "reviews" / f"v{int(version):08d}.json", {}) or {}

    def save_learnt(self, version: int, tasks: list[dict]) -> None:
        """The held-out tasks ``version`` was judged on, with their references (``actors.gate.Gate.learnt``):
        what the versions descending from it are held to."""
        atomic_write_json(self.root / "learnt" / f"v{int(version):08d}.json", {"version": int(version), "tasks": tasks})

    def learnt(self, version: int) -> list[dict]:
        """What :meth:`save_learnt` kept for ``version`` (none for the base or a submitted version)."""
        return list((read_json(self.root / "learnt" / f"v{int(version):08d}.json", {}) or {}).get("tasks", []))

    # ------------------------------------------------------------------ reading
    def get(self, version: int) -> Candidate:
        return self._get(self._read(), version)

    def promoted(self) -> Candidate:
        data = self._read()
        if data.get("promoted") is None:
            raise VersionError(f"no version has been registered in {self.root}")
        return self._get(data, data["promoted"])

    def base(self) -> Candidate:
        data = self._read()
        if data.get("base") is None:
            raise VersionError(f"no base version has been registered in {self.root}")
        return self._get(data, data["base"])

    def all(self) -> list[Candidate]:
        data = self._read()
        return [Candidate.from_dict(v) for _, v in sorted(data["versions"].items(), key=lambda kv: int(kv[0]))]

    def history(self) -> list[dict]:
        return list(self._read().get("history", []))

    def summary(self) -> dict:
        data = self._read()
        return {"model": data.get("model"), "base": data.get("base"), "promoted": data.get("promoted"),
                "versions": [c.public() for c in self.all()]}
