"""What scripted users of the chat world ask and say, deterministically for a seed (the loop's tests and
``reverie bench cycle``): each :class:`Teaching` is one ask and the feedback given on it.

- A fact: the user asks one phrasing of the question (drawn per fact) and corrects the answer with the fact's
  correction (feedback kind ``correction``); the fact's other phrasings are ``heldout`` (what the loop may vary
  the ask into and the gate may hold out), and its ``unseen`` phrasings are asked by neither (a benchmark's).
- A rule: the user asks general prompts from the *taught* pool and states the rule (kind ``rule``) on each, in
  one phrasing (drawn per rule: a user states their rule the same way), and corrects each reply to keep it
  (``rules.rule_correction`` of the reply the model gave, made where the reply is known: the feedback's
  ``correction``), so the loop's teacher state is shown the rule, not only told it
  (``learner.experience.feedback_lessons``); what the rule is judged on is the *held-out* pool
  (``prompts.Pools.heldout``), which never holds a taught prompt, so ``heldout`` is left empty.

The default rule kinds (:data:`TAUGHT_RULES`) are checked on a reply's opening, so a reply cut off at the loop's
32 tokens is judged fairly; which kinds SmolLM2-135M-Instruct's teacher state follows, told or shown, is measured
by ``simulators/chatworld/measure.py`` (``bench/results/chatworld/``); any of ``rules.RULES`` can be asked for.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from simulators.chatworld.facts import FACTS
from simulators.chatworld.prompts import Pools, load_pools
from simulators.chatworld.rules import RULES

TAUGHT_RULES = ("starts_with", "address")


@dataclass(frozen=True)
class Teaching:
    family: str  # "facts" or "rule"
    ask: str  # the user's message the feedback is about
    kind: str  # the feedback's kind, as learner/templates.json names it: "correction" or "rule"
    text: str  # the feedback's text
    heldout: tuple[str, ...] = ()  # asks of the same lesson that are never taught (a fact's other phrasings)
    unseen: tuple[str, ...] = ()  # asks of the same lesson that neither users nor the loop make (``Fact.unseen``)
    rule: str | None = None  # the rule's kind (rules.RULES), for a rule


def fact_teachings(seed: int = 0, n: int = 24) -> list[Teaching]:
    """``n`` facts (of ``facts.FACTS``, drawn by ``seed``), each asked in one phrasing and corrected."""
    rng = random.Random(f"chatworld-facts-{seed}")
    out = []
    for fact in rng.sample(FACTS, min(n, len(FACTS))):
        asked = rng.randrange(len(fact.questions))
        out.append(Teaching("facts", fact.questions[asked], "correction", fact.correction,
                            tuple(q for i, q in enumerate(fact.questions) if i != asked), unseen=fact.unseen))
    return out


def rule_teachings(seed: int = 0, rules: Sequence[str] = TAUGHT_RULES, asks_per_rule: int = 3,
                   pools: Pools | None = None) -> list[Teaching]:
    """For each rule kind, ``asks_per_rule`` taught prompts, each with the rule stated in one phrasing."""
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule kind {unknown[0]!r}; kinds are: {', '.join(RULES)}")
    taught = (pools or load_pools()).taught
    rng = random.Random(f"chatworld-rules-{seed}")
    out = []
    for name in rules:
        phrasing = rng.choice(RULES[name].phrasings)
        for ask in rng.sample(taught, min(asks_per_rule, len(taught))):
            out.append(Teaching("rule", ask, "rule", phrasing, rule=name))
    return out


def script(seed: int = 0, facts: int = 24, rules: Sequence[str] = TAUGHT_RULES, asks_per_rule: int = 3,
           pools: Pools | None = None) -> list[Teaching]:
    """The facts' teachings, then the rules' (see the module docstring)."""
    return [*fact_teachings(seed, facts),
            *(rule_teachings(seed, rules, asks_per_rule, pools) if rules else [])]
