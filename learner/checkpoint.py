"""Crash-safe learner checkpoints and the finite-update guard (version ids come
from ``reverie.versions``, the one allocator).

A checkpoint is a directory ``root/step-{step:08d}/`` that is at the same time
a Hugging Face model directory (``config.json`` + ``model.safetensors``, plus
tokenizer files when given), so vLLM or transformers can load it directly.
Next to the model it holds ``optimizer.pt`` (optimizer and scheduler state),
``rng.pt`` (python, numpy, torch CPU and CUDA generator states) and
``state.json`` (step, version and a caller-defined ``extra`` dict such as the
data cursor).

Atomicity: everything is written into a hidden temporary directory inside
``root`` (its name starts with '.'), every file and the directory are fsynced,
and only then is the directory renamed to its visible name; the rename is
atomic on POSIX file systems.  A crash at any point therefore leaves either the
old set of checkpoints or the old set plus the new complete one.  Older
checkpoints are removed only after the new one is in place, and removal first
renames a checkpoint to a hidden name so a half-deleted directory is never
visible either.  One writer per ``root`` is assumed.
"""
from __future__ import annotations

import inspect
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from reverie.files import fsync_dir as _fsync_dir
from reverie.files import settle_modes
from reverie.versions import VersionCounter  # noqa: F401  (re-exported: checkpoints carry its ids)

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "VersionCounter",
    "assert_finite_update",
    "export_model",
]

FORMAT = 1
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
TENSORS_FILE = "tensors.pt"  # not *.safetensors: model loaders glob those as weights
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
# Files of a model directory that are not the tokenizer's; never copied from tokenizer_dir.
_NOT_TOKENIZER = re.compile(r"^(config\.json|generation_config\.json|.*\.safetensors|.*\.safetensors\.index\.json|.*\.bin|.*\.pt|.*\.pth)$")


# --------------------------------------------------------------------------- file helpers


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            _fsync_file(Path(dirpath) / name)
        _fsync_dir(Path(dirpath))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _remove_dir(path: Path) -> None:
    """Hide ``path`` under a temporary name first, then delete it."""
    hidden = path.parent / f"{_TRASH_PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(path, hidden)
    _fsync_dir(path.parent)
    shutil.rmtree(hidden, ignore_errors=True)


def _sweep_hidden(root: Path) -> None:
    """Remove temporary and trash directories left by an earlier crash (single writer assumed)."""
    for entry in root.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- RNG


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        pass
    else:
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # different GPU count: restore what lines up
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


# --------------------------------------------------------------------------- checkpoints


def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def _is_complete(path: Path) -> bool:
    step = _step_of(path)
    if step is None or not path.is_dir():
        return False
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("step") != step:
        return False
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return has_weights and all((path / f).is_file() for f in ("config.json", OPTIMIZER_FILE, RNG_FILE))


def list_checkpoints(root: Path) -> list[Path]:
    """All complete checkpoints under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _is_complete(p)]
    return sorted(found, key=lambda p: _step_of(p))  # type: ignore[arg-type, return-value]


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None.  Hidden temporary
    directories and malformed ``step-*`` directories are ignored."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def _save_model(model, directory: Path) -> None:
    params = inspect.signature(model.save_pretrained).parameters
    kwargs = {"safe_serialization": True} if "safe_serialization" in params else {}  # transformers 4.x
    model.save_pretrained(directory, **kwargs)
    if not ((directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()):
        raise RuntimeError(f"save_pretrained wrote no safetensors weights in {directory}")


def _copy_tokenizer(tokenizer_dir: Path, directory: Path) -> None:
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir} is not a directory")
    for src in tokenizer_dir.iterdir():
        if src.is_file() and not _NOT_TOKENIZER.match(src.name) and not (directory / src.name).exists():
            shutil.copy2(src, directory / src.name)


def save_checkpoint(
    root: Path,
    *,
    model,
    optimizer,
    step: int,
    version: int,
    extra: dict | None = None,
    scheduler=None,
    tokenizer_dir: Path | None = None,
    keep: int = 3,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``root/step-{step:08d}/`` atomically and return its path.

    ``tensors`` (for example a lagged or EMA teacher's weights) are stored in
    ``tensors.pt`` and come back from :func:`load_checkpoint`.
    Keeps only the ``keep`` newest complete checkpoints (older ones are deleted
    after the new one is in place).  Raises ``FileExistsError`` if a checkpoint
    for ``step`` already exists: delete it first when deliberately rewinding.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    extra = dict(extra or {})
    state = {"format": FORMAT, "step": int(step), "version": int(version), "extra": extra, "saved_at": time.time()}
    state_text = json.dumps(state, indent=1, sort_keys=True)  # fail early, before touching the disk, if extra is not JSON-serialisable

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists")
    _sweep_hidden(root)

    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
    try:
        _save_model(model, tmp)
        if tokenizer_dir is not None:
            _copy_tokenizer(tokenizer_dir, tmp)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler is not None else None},
            tmp / OPTIMIZER_FILE,
        )
        torch.save(_rng_state(), tmp / RNG_FILE)
        if tensors:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp / TENSORS_FILE)
        _write_text(tmp / STATE_FILE, state_text + "\n")
        settle_modes(tmp)
        _fsync_tree(tmp)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    prune_checkpoints(root, keep)
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints under ``root`` (``keep=0``: all of them), each
    hidden under a temporary name first, so a crash never leaves a half-deleted one that looks complete."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    found = list_checkpoints(root)
    for old in found[:len(found) - keep]:
        _remove_dir(old)


def _load_weights(path: Path, model) -> None:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        loaded: dict[str, torch.Tensor] = {}
        for shard in shards:
            loaded.update(load_file(path / shard))
    else:
        loaded = load_file(path / "model.safetensors")

    own = model.state_dict()
    unexpected = sorted(set(loaded) - set(own))
    missing = set(own) - set(loaded)
    # save_pretrained drops tied weights; they are fine if they share storage with a loaded tensor.
    present = {own[k].data_ptr() for k in loaded if k in own}
    missing = sorted(k for k in missing if own[k].data_ptr() not in present)
    if unexpected or missing:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {missing[:10]} unexpected {unexpected[:10]}"
        )
    model.load_state_dict(loaded, strict=False)  # keys checked above (tied aliases allowed); shapes checked here


def load_checkpoint(path: Path, *, model, optimizer, scheduler=None) -> dict:
    """Restore model weights (in place, strictly), optimizer/scheduler state and
    RNG states from the checkpoint at ``path``; return ``{"step", "version", "extra", "tensors"}``."""
    path = Path(path)
    if not _is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint")
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    opt = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    if scheduler is not None and opt.get("scheduler") is None:
        raise RuntimeError(f"checkpoint {path} has no scheduler state")
    rng = torch.load(path / RNG_FILE, map_location="cpu", weights_only=True)

    _load_weights(path, model)
    optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(opt["scheduler"])
    _set_rng_state(rng)
    tensors_path = path / TENSORS_FILE
    tensors = torch.load(tensors_path, map_location="cpu", weights_only=True) if tensors_path.is_file() else {}
    return {"step": state["step"], "version": state["version"], "extra": state.get("extra", {}), "tensors": tensors}


# --------------------------------------------------------------------------- finite guard


def assert_finite_update(loss, model) -> None:
    """Raise ``FloatingPointError`` if ``loss`` or any parameter gradient of
    ``model`` is not finite.  Call after ``backward()`` and before
    ``optimizer.step()``, so no version is produced from a broken step."""
    loss_t = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
    if not bool(torch.isfinite(loss_t).all()):
        value = loss_t.item() if loss_t.numel() == 1 else loss_t.flatten()[:4].tolist()
        raise FloatingPointError(f"non-finite loss ({value}); refusing to update the model")

    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return
    # One host sync per device for all gradients; names only looked up when something is wrong.
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, g) in enumerate(named):
        by_device.setdefault(g.device, []).append(i)
    ok = [True] * len(named)
    for idx in by_device.values():
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in idx]).tolist()
        for i, f in zip(idx, flags):
            ok[i] = f
    if all(ok):
        return
    bad = [n for (n, _), good in zip(named, ok) if not good]
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise FloatingPointError(f"non-finite gradients in {len(bad)} parameter(s): {shown}; refusing to update the model")


# --------------------------------------------------------------------------- export


def export_model(model, directory: Path, tokenizer_dir: Path | None = None) -> Path:
    """Write the model alone (an HF directory vLLM and transformers load: config, safetensors, tokenizer) to
    ``directory``, atomically (hidden temporary directory, fsync, rename); the directory must not exist."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{directory.name}-", dir=directory.parent))
    try:
        _save_model(model, tmp)
        if tokenizer_dir is not None:
            _copy_tokenizer(tokenizer_dir, tmp)
        settle_modes(tmp)
        _fsync_tree(tmp)
        os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
