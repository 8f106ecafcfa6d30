"""The pretraining mixture of the tiny world: base skills, copying, continuing
a list from a word in it, and tool episodes with unseen tools.  None of the new skills' content occurs here."""
from __future__ import annotations

import random
from collections.abc import Iterator

from simulators.tinyworld.skills import base_item, pretrain_tools_conversation

MIXTURE = {
    "add": 0.16,
    "reverse": 0.09,
    "sort": 0.10,
    "copy": 0.03,
    "continue": 0.06,
    "lookup": 0.14,
    "recall": 0.08,
    "format": 0.14,
    "tools": 0.20,
}


def conversation(rng: random.Random) -> list[dict]:
    family = rng.choices(list(MIXTURE), weights=list(MIXTURE.values()))[0]
    if family == "tools":
        return pretrain_tools_conversation(rng)
    return base_item(family, rng).conversation()


def conversations(seed: int) -> Iterator[list[dict]]:
    """An endless, reproducible stream of pretraining conversations."""
    rng = random.Random(seed)
    while True:
        yield conversation(rng)


def tokenizer_texts(seed: int, n: int) -> Iterator[str]:
    stream = conversations(seed)
    for _ in range(n):
        yield " ".join(m["content"] for m in next(stream))
