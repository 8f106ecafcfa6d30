"""The chat world's lessons in a row: a deployed model taught again and again, as data (``bench/sequence.py``
composes it with the learner).

``plan(n)`` gives ``n`` stages (at most ``MAX_STAGES``) that alternate new facts and new rules:

- a ``facts`` stage teaches ``FACT_BLOCK`` facts no earlier stage taught (the blocks are disjoint draws of the
  world's facts), each asked in one phrasing and corrected, the teacher shown the correction, its lessons also
  asking the fact's other phrasings (``experiment.ChatExperiment``'s facts family); judged on the facts' unseen
  phrasings;
- a ``rule`` stage states one more rule of ``STAGE_RULES`` (rules that hold together: the world's checks of an
  opening and a name ignore case and punctuation, so ``lowercase`` and ``no_commas`` do not break them).  Its user
  states the rule on ``DEMONSTRATED`` asks and corrects the model's replies (the model as it is when the stage is
  taught: :func:`stage_family`) to keep *every* rule they have stated so far; its lessons ask ``RULE_ASKS`` other
  taught prompts.  Judged on the same ``HELDOUT`` prompts of the held-out pool as every rule, each by its own
  check, so one set of replies judges them all.

While a stage is taught the loop's replay keeps the rules already in force: its teacher is shown them in one
system message (``actors.controller.Controller._ruled``), with the stage's demonstrations for a rule stage.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from learner.distill import Lesson, greedy_replies
from simulators.chatworld.experiment import MAX_TOKENS, SEED, Family, _user

FACT_BLOCK = 8
STAGE_RULES = ("starts_with", "address", "no_commas", "lowercase", "max_words")
# What the user of each rule stage types: the kind's first phrasing, except a word limit that the 32 tokens a
# reply is judged on could keep without learning anything.
RULE_TEXTS = {"max_words": "Keep your answers under 16 words."}
DEMONSTRATED = 3
RULE_ASKS = 18  # taught prompts a rule stage's lessons ask: 5 stages of 3 + 18 fit the 108 taught prompts apart
HELDOUT = 40
MAX_STAGES = 2 * len(STAGE_RULES)


@dataclass(frozen=True)
class Stage:
    index: int  # 1, 2, ...
    family: str  # "facts" or "rule"
    facts: tuple = ()  # a facts stage's teachings (``teaching.Teaching``)
    rule: str | None = None  # a rule stage's text, as its user states it
    asks: tuple[str, ...] = ()  # a rule stage's demonstrated asks (the user states the rule and corrects on each)
    prompts: tuple[str, ...] = ()  # a rule stage's other taught prompts, its lessons' asks

    @property
    def name(self) -> str:
        from simulators.chatworld.rules import parse_rules

        return f"{self.index:02d}-facts" if self.family == "facts" else \
            f"{self.index:02d}-rule-{parse_rules(self.rule)[0]['kind']}"


def rule_text(kind: str) -> str:
    from simulators.chatworld.rules import RULES

    return RULE_TEXTS.get(kind, RULES[kind].phrasings[0])


def plan(n: int, pools=None) -> list[Stage]:
    """The first ``n`` stages (module docstring): facts first, then a rule, alternating."""
    from simulators.chatworld.prompts import load_pools
    from simulators.chatworld.teaching import fact_teachings

    if not 1 <= n <= MAX_STAGES:
        raise ValueError(f"a sequence has 1 to {MAX_STAGES} stages, not {n}")
    pools = pools or load_pools()
    facts = fact_teachings(SEED, FACT_BLOCK * len(STAGE_RULES))
    taught = random.Random(f"chatworld-sequence/{SEED}").sample(pools.taught, len(pools.taught))
    per_rule = DEMONSTRATED + RULE_ASKS
    if per_rule * len(STAGE_RULES) > len(taught):
        raise ValueError(f"{len(taught)} taught prompts cannot give {len(STAGE_RULES)} rules {per_rule} each")
    out = []
    for i in range(n):
        block = i // 2
        if i % 2 == 0:
            out.append(Stage(i + 1, "facts", facts=tuple(facts[block * FACT_BLOCK: (block + 1) * FACT_BLOCK])))
        else:
            mine = taught[block * per_rule: (block + 1) * per_rule]
            out.append(Stage(i + 1, "rule", rule=rule_text(STAGE_RULES[block]), asks=tuple(mine[:DEMONSTRATED]),
                             prompts=tuple(mine[DEMONSTRATED:])))
    return out


def heldout(stage: Stage, pools=None) -> tuple[tuple[tuple[dict, ...], dict], ...]:
    """(student prompt, the world's check) of what ``stage`` is judged on; it does not depend on the model."""
    from simulators.chatworld.plugin import check
    from simulators.chatworld.prompts import load_pools
    from simulators.chatworld.rules import parse_rules

    if stage.family == "facts":
        return tuple((_user(q), check("facts", _user(q), "")) for t in stage.facts for q in t.unseen)
    pools = pools or load_pools()
    prompts = random.Random(f"chatworld-sequence/heldout/{SEED}").sample(pools.heldout, HELDOUT)
    spec = parse_rules(stage.rule)[0]
    return tuple((_user(p), spec) for p in prompts)


def in_force(stages: Sequence[Stage]) -> list[str]:
    """The rules stated by ``stages``, in order."""
    return [s.rule for s in stages if s.family == "rule"]


def ruled_system(rules: Sequence[str]) -> tuple[dict, ...]:
    """The system message that keeps ``rules`` in force (as the loop's replay shows them), or nothing."""
    from learner.templates import render

    return ({"role": "system", "content": "\n".join(render("rule", r) for r in rules)},) if rules else ()


def stage_family(stage: Stage, model, encoder, earlier: Sequence[Stage], pools=None) -> Family:
    """What ``stage`` teaches the model as it is now (``model``, after ``earlier``): its lessons, held-out asks,
    and the replay's teacher context, which keeps every rule in force, this stage's included."""
    from simulators.chatworld.measure import _demonstrated_context, fact_lessons
    from simulators.chatworld.rules import rule_correction

    rules = in_force([*earlier, stage])
    if stage.family == "facts":
        lessons = []
        for lesson, t in zip(fact_lessons(stage.facts), stage.facts):
            lessons += [lesson, *(lesson.asking(_user(q), keeps_answer=True) for q in t.heldout)]
        return Family(tuple(lessons), heldout(stage, pools), replay_context=ruled_system(rules))
    every = "\n".join(rules)
    prompts = [_user(p) for p in stage.prompts]
    replies = greedy_replies(model, encoder, [*map(_user, stage.asks), *prompts], MAX_TOKENS)
    # The user corrects each demonstrated reply to keep every rule they have stated, this one with the rest.
    demonstrated = [rule_correction(every, r) for r in replies[:DEMONSTRATED]]
    context = _demonstrated_context(stage.rule, stage.asks, demonstrated, corrected=True)
    lessons = [Lesson(p, (*context, *p), rule_correction(every, r)) for p, r in zip(prompts, replies[DEMONSTRATED:])]
    replay = (*ruled_system(rules), *context[1:])
    return Family(tuple(lessons), heldout(stage, pools), replay_context=replay)


__all__ = ["FACT_BLOCK", "HELDOUT", "MAX_STAGES", "STAGE_RULES", "Stage", "heldout", "in_force", "plan",
           "ruled_system", "stage_family"]
