"""Variations of recorded asks: new student prompts of the same kind as a
conversation a user gave feedback on (the proposer room; it knows nothing of
learning or gating).

Contract of a :class:`Variations`:

- ``family(messages)`` names the task family of the conversation's ask (its
  last user message), or ``None`` when the ask is not one this proposer knows.
- ``vary(messages, rng)`` is a new student prompt (one user message, never
  the input's system messages): the same kind of ask about other things,
  never identical to the input's ask; ``None`` when it cannot vary it.
- ``keeps_answer(family)``: whether a variation asks for the same answer, so
  that a correction of the original answer is privileged context for it too.
- optional, ``variants(messages)``: every variation ``vary`` can give of the
  ask, where they are few (a fact's other phrasings), else ``None``.  The
  gate then holds out at most half of an ask's variants, so the learner is
  left the others to learn the ask in other words
  (``actors.gate.heldout_tasks``).

A world gives one (``simulators/world.py``): the tiny world's
(``simulators/tinyworld/variations.py``) knows its single-turn asks;
:class:`PromptVariations` is the one of a world that knows nothing of the
asks (``world: none``): every ask is family ``feedback`` and has no known
variations.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

FALLBACK_FAMILY = "feedback"


class Variations(Protocol):
    def family(self, messages: Sequence[dict]) -> str | None: ...

    def vary(self, messages: Sequence[dict], rng: random.Random) -> tuple[dict, ...] | None: ...

    def keeps_answer(self, family: str) -> bool:
        """Whether a variation of this family asks for the same answer (so a correction of the original's
        answer is still right for it): a fact asked another way, yes; a copy of other letters, no."""
        ...


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces, ends stripped."""
    return " ".join(text.split())


def last_user_text(messages: Sequence[dict]) -> str | None:
    """The content of the last user message, whitespace collapsed, or None."""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return normalize(m["content"])
    return None


class PromptVariations:
    """Any other model: one family, ``feedback``, and no known variations."""

    def family(self, messages: Sequence[dict]) -> str | None:
        return FALLBACK_FAMILY

    def vary(self, messages: Sequence[dict], rng: random.Random) -> tuple[dict, ...] | None:
        return None

    def keeps_answer(self, family: str) -> bool:
        return False
