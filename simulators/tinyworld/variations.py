"""Variations of the tiny world's single-turn asks (its :class:`simulators.variations.Variations`):
``copy`` / ``reverse`` / ``sort : a b c`` (fresh letters, same verb), ``add : 1 2 + 3 4`` (fresh numbers), and
fact questions (family ``facts``: the same entity and attribute asked with another question template, since a
correction is about that one fact; so at most two variations per fact)."""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

from simulators.tinyworld import world as W
from simulators.tinyworld.skills import base_item
from simulators.tinyworld.text import normalize
from simulators.variations import last_user_text

FACTS_FAMILY = "facts"
LETTER_VERBS = ("copy", "reverse", "sort")
_MAX_TRIES = 64  # fresh draws before giving up on a variation that differs from the input


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
