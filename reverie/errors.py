"""Errors a user can fix.  The command line prints them as one line, no traceback."""
from __future__ import annotations

from pathlib import Path


class ReverieError(Exception):
    """A problem with what the user asked for, stated so they can fix it."""


def check_model_dir(path: str | Path) -> Path:
    """A local Hugging Face causal-LM directory, or a ReverieError saying why not."""
    p = Path(path)
    if not p.exists():
        raise ReverieError(f"model directory {str(p)!r} does not exist")
    if not p.is_dir():
        raise ReverieError(f"model path {str(p)!r} is not a directory")
    if not (p / "config.json").is_file():
        raise ReverieError(f"{str(p)!r} is not a model directory: it has no config.json")
    if not any(p.glob("*.safetensors")):
        raise ReverieError(f"{str(p)!r} is not a model directory: it has no *.safetensors weights")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ReverieError(f"{str(p)!r} has no tokenizer (tokenizer.json)")
    return p


def parse_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise ReverieError(f"seed must be a whole number from 0 to 2**32-1, got {text!r}") from None
    if not 0 <= seed < 2**32:
        raise ReverieError(f"seed must be a whole number from 0 to 2**32-1, got {text!r}")
    return seed
