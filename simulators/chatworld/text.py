"""The chat world's one text normaliser (the gate's ``contains`` comparison, reimplemented here so the world
imports nothing from ``actors/``): lower case, Unicode punctuation turned into spaces, whitespace collapsed."""
from __future__ import annotations

import unicodedata


def collapse(text: str) -> str:
    return " ".join(text.split())


def normalised(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (as ``actors.gate.normalised``)."""
    return collapse("".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower()))


def contains(reply: str, text: str) -> bool:
    """Whether ``text`` occurs in ``reply`` as whole words, both normalised (``actors.gate.matches(reply, text,
    "contains")``); an empty ``text`` is never contained."""
    want = normalised(text)
    return bool(want) and f" {want} " in f" {normalised(reply)} "
