"""Errors a user can fix.  The command line prints them as one line, no traceback."""
from __future__ import annotations

from pathlib import Path


class ReverieError(Exception):
    """A problem with what the user asked for, stated so they can fix it."""


def check_model_dir(path: str | Path) -> Path:
    """The model a ``--model`` flag names: a pulled catalogue model or a local Hugging Face causal-LM directory,
    or a ReverieError saying why not (``reverie.models.resolve``)."""
    from reverie.models import resolve  # it imports this module

    return resolve(path)


def parse_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise ReverieError(f"seed must be a whole number from 0 to 2**32-1, got {text!r}") from None
    if not 0 <= seed < 2**32:
        raise ReverieError(f"seed must be a whole number from 0 to 2**32-1, got {text!r}")
    return seed
