"""How the tiny world writes numbers and letter strings: one token per symbol."""
from __future__ import annotations


def digits(n: int) -> str:
    return " ".join(str(n))


def undigits(words: list[str]) -> int | None:
    if not words or not all(len(w) == 1 and w.isdigit() for w in words):
        return None
    return int("".join(words))


def spaced(letters: str) -> str:
    return " ".join(letters)


def normalize(text: str) -> str:
    return " ".join(text.split())
