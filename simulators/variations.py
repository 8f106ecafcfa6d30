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

Two implementations:

- :class:`TinyWorldVariations` knows the tiny world's single-turn asks:
  ``copy`` / ``reverse`` / ``sort : a b c`` (fresh letters, same verb),
  ``add : 1 2 + 3 4`` (fresh numbers), and fact questions (family ``facts``:
  the same entity and attribute asked with another question template, since a
  correction is about that one fact; so at most two variations per fact).
- :class:`PromptVariations` is the fallback for any other model: every ask is
  family ``feedback`` and has no known variations.

:func:`variations_for` picks one for a model directory.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from simulators.tinyworld import world as W
from simulators.tinyworld.skills import base_item
from simulators.tinyworld.text import normalize

FALLBACK_FAMILY = "feedback"
FACTS_FAMILY = "facts"
LETTER_VERBS = ("copy", "reverse", "sort")
# Written by the tiny world's build (simulators/tinyworld/build.py) beside the weights, and copied
# into every checkpoint learnt from it (learner/checkpoint.py copies the tokenizer directory's files).
TINYWORLD_MARKER = "reverie_build.json"
_MAX_TRIES = 64  # fresh draws before giving up on a variation that differs from the input


class Variations(Protocol):
    def family(self, messages: Sequence[dict]) -> str | None: ...

    def vary(self, messages: Sequence[dict], rng: random.Random) -> tuple[dict, ...] | None: ...

    def keeps_answer(self, family: str) -> bool:
        """Whether a variation of this family asks for the same answer (so a correction of the original's
        answer is still right for it): a fact asked another way, yes; a copy of other letters, no."""
        ...


def last_user_text(messages: Sequence[dict]) -> str | None:
    """The content of the last user message, whitespace collapsed, or None."""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return normalize(m["content"])
    return None


_LETTERS_ASK = re.compile(r"^(copy|reverse|sort) : [a-z](?: [a-z])*$")
_ADD_ASK = re.compile(r"^add : \d(?: \d)* \+ \d(?: \d)*$")


def _template_pattern(template: str) -> re.Pattern[str]:
    attrs = "|".join(map(re.escape, W.ATTRIBUTES))
    parts = re.split(r"(\{attr\}|\{ent\})", template)
    body = "".join({"{attr}": f"(?P<attr>{attrs})", "{ent}": "(?P<ent>[a-z]+)"}.get(p, re.escape(p)) for p in parts)
    return re.compile(f"^{body}$")


_QUESTIONS = tuple((t, _template_pattern(t)) for t in W.QUESTION_TEMPLATES)


def _fact_question(text: str) -> tuple[str, str, str] | None:
    """(template, attribute, entity) of a tiny-world fact question."""
    for template, pattern in _QUESTIONS:
        m = pattern.match(text)
        if m:
            return template, m["attr"], m["ent"]
    return None


def _user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


class TinyWorldVariations:
    """The tiny world's single-turn asks (see the module docstring)."""

    def family(self, messages: Sequence[dict]) -> str | None:
        text = last_user_text(messages)
        if text is None:
            return None
        if _LETTERS_ASK.match(text) or _ADD_ASK.match(text):
            return text.split(" ", 1)[0]
        if _fact_question(text) is not None:
            return FACTS_FAMILY
        return None

    def vary(self, messages: Sequence[dict], rng: random.Random) -> tuple[dict, ...] | None:
        family = self.family(messages)
        if family is None:
            return None
        text = last_user_text(messages)
        if family == FACTS_FAMILY:
            template, attr, ent = _fact_question(text)
            others = [t for t in W.QUESTION_TEMPLATES if t != template]
            return _user(rng.choice(others).format(attr=attr, ent=ent))
        for _ in range(_MAX_TRIES):
            prompt = base_item(family, rng).prompt  # fresh letters or numbers, the tiny world's own formatting
            if normalize(prompt[-1]["content"]) != text:
                return prompt
        return None

    def keeps_answer(self, family: str) -> bool:
        return family == FACTS_FAMILY


class PromptVariations:
    """Any other model: one family, ``feedback``, and no known variations."""

    def family(self, messages: Sequence[dict]) -> str | None:
        return FALLBACK_FAMILY

    def vary(self, messages: Sequence[dict], rng: random.Random) -> tuple[dict, ...] | None:
        return None

    def keeps_answer(self, family: str) -> bool:
        return False


def is_tinyworld_model(model_dir: str | Path) -> bool:
    """The shipped tiny-world model, a rebuild of it, or a checkpoint learnt from either."""
    from simulators.tinyworld.build import SHIPPED_MODEL  # imports torch: only when asked

    path = Path(model_dir)
    return path.resolve() == SHIPPED_MODEL.resolve() or (path / TINYWORLD_MARKER).is_file()


def variations_for(model_dir: str | Path) -> Variations:
    return TinyWorldVariations() if is_tinyworld_model(model_dir) else PromptVariations()
