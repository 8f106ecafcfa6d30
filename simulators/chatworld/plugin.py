"""The chat world as a plug-in of the loop (``world: chat``; the contract is ``simulators/world.py``): what a
person teaches a deployed instruct model (SmolLM2-135M-Instruct, or any chat model), each checked by code.

- Families (``ChatVariations``): ``facts``, questions about an invented organisation the model cannot know
  (``facts.py``: 51 facts, three or four phrasings each), varied into another phrasing of the same fact, so a
  correction stays right for the variation (``keeps_answer``); ``chat``, every other ask, varied into a general
  prompt drawn by the rng from the held-out pool of AlpacaEval's instructions (``prompts.py``, pinned by package
  and sha256; never one a scripted user is taught on).  A stated rule (``rules.py``) is feedback on a ``chat``
  ask: its held-out tasks are new general prompts, judged by the rule's checker.
- Retention suite: none of the world's own (``retention_suite`` is None): a chat model's retention is published
  benchmarks, ``benchmarks`` (the names ``evals/data.py`` loads), which the gate runs.
- Drift: ``general_prompts(n)``, the last ``n`` prompts of the unseen pool, which the loop never draws (fixed by
  the source's order), on which the gate measures KL(base || candidate) per token.
- Replay: none of the world's own (the loop replays what users asked before, its teacher shown the rules in
  force).
- Dream families: ``calc`` (``calc.CalcFamily``): word problems played with a calculator in ``chatworld-calc``,
  judged by its verifier.
- Scripted teaching: ``teaching.script`` (what scripted users ask and say, taught and held out apart).

Beyond the :class:`simulators.world.World` contract, the chat world judges a reply by code rather than against
the teacher state's answer.  A note for that contract (``simulators/world.py`` states it for every world):

- ``check(family, student_messages, context)``: how to judge a reply to the held-out ask ``student_messages``
  (of ``family``) made from feedback whose privileged context is ``context`` (the rendered system-message text:
  ``learner.templates.render`` lines joined by newlines), as a JSON-serialisable spec; ``None`` when nothing in
  the ask or the context can be checked by code (the gate then keeps its teacher-state reference).  Specs:
  ``{"kind": "contains", "text": answer}`` (the reply holds the answer as whole words, normalised: a facts
  question, its answer found in the world's own fact table, never in the context); one rule's spec
  (``{"kind": "ends_with", "text": ...}``, ``{"kind": "no_commas"}``, ``{"kind": "max_words", "n": ...}``, ...;
  ``rules.RULES``) for each rule the context states; ``{"kind": "all", "checks": [spec, ...]}`` when there are
  several.  Rules apply to a facts question too (a stated rule holds for every answer).
- ``passes(spec, reply)``: whether ``reply`` meets ``spec``; pure code, deterministic; a ValueError for a spec
  of an unknown kind.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from simulators.chatworld.facts import FACTS, fact_question
from simulators.chatworld.prompts import SOURCE, Pools, load_pools
from simulators.chatworld.rules import RULES, parse_rules, rule_passes
from simulators.chatworld.text import collapse, contains
from simulators.variations import last_user_text

FACTS_FAMILY = "facts"
CHAT_FAMILY = "chat"
BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa")  # evals/data.py's BENCHMARKS
_MAX_TRIES = 64  # draws before giving up on a held-out prompt that differs from the ask


def _user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


class ChatVariations:
    """The chat world's families and variations (see the module docstring); the prompt pools are read on the
    first ``chat`` variation, never before."""

    def __init__(self, pools: Pools | None = None):
        self._pools = pools

    @property
    def pools(self) -> Pools:
        if self._pools is None:
            self._pools = load_pools()
        return self._pools

    def family(self, messages: Sequence[dict]) -> str | None:
        text = last_user_text(messages)
        if text is None:
            return None
        return FACTS_FAMILY if fact_question(text) is not None else CHAT_FAMILY

    def vary(self, messages: Sequence[dict], rng: random.Random) -> tuple[dict, ...] | None:
        text = last_user_text(messages)
        if text is None:
            return None
        others = self.variants(messages)
        if others is not None:
            return rng.choice(others)
        heldout = self.pools.heldout
        for _ in range(_MAX_TRIES):
            prompt = rng.choice(heldout)
            if collapse(prompt) != text:
                return _user(prompt)
        return None

    def keeps_answer(self, family: str) -> bool:
        return family == FACTS_FAMILY

    def variants(self, messages: Sequence[dict]) -> tuple[tuple[dict, ...], ...] | None:
        """A facts question's other phrasings (never an unseen one); ``None`` for a ``chat`` ask, whose
        variations are the held-out pool's prompts."""
        found = fact_question(last_user_text(messages) or "")
        if found is None:
            return None
        fact, asked = found
        return tuple(_user(q) for i, q in enumerate(fact.questions) if i != asked)


def check(family: str, student_messages: Sequence[dict], context: str | None) -> dict | None:
    """The spec a reply to ``student_messages`` is judged by (the module docstring), or None."""
    specs: list[dict] = []
    if family == FACTS_FAMILY:
        found = fact_question(last_user_text(student_messages) or "")
        if found is not None:
            specs.append({"kind": "contains", "text": found[0].answer})
    specs += [s for s in parse_rules(context or "") if s not in specs]
    if not specs:
        return None
    return specs[0] if len(specs) == 1 else {"kind": "all", "checks": specs}


def passes(spec: dict, reply: str) -> bool:
    """Whether ``reply`` meets ``spec`` (a spec ``check`` gave, or read back from JSON)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "contains":
        return contains(reply, spec["text"])
    if kind == "all":
        return all(passes(s, reply) for s in spec["checks"])
    if kind in RULES:
        return rule_passes(spec, reply)
    raise ValueError(f"unknown check kind {kind!r}; kinds are: contains, all, {', '.join(RULES)}")


class ChatWorld:
    name = "chat"
    benchmarks = BENCHMARKS
    source = SOURCE  # where the general prompts come from
    facts = FACTS
    rules = RULES
    # SmolLM2-135M-Instruct's teacher state, greedy on the 120 other phrasings of the 51 facts, gets 0.675 of
    # them right with the correction told in the system message, 0.81 shown as the corrected exchange as well
    # (bench/results/chatworld/2026-12-07-teacher-state.json: ``facts.teacher`` against ``facts.teacher_shown``).
    show_corrections = True
    # OPSD on SmolLM2-135M-Instruct's own samples learns a taught name's first token and not the rest ("Suvi
    # Kassav" for Suvi Karjalainen): 30 updates on four corrected facts answered 0.25 of their unseen phrasings
    # with every lesson sampled (the year only), 0.25 with half of the corrected ones scored along the correction,
    # 1.0 with all of them (bench/results/chatworld/2026-12-07-facts-along-reference.json).
    along_reference = 1.0
    # The teacher's target sharpened: in the SmolLM2 cycle (30 updates, a rule on 3 asks and 4 facts) the rule
    # held on 0.85 of 40 prompts nothing asked before at 1.0, 0.875 at 0.7, 0.90 at 0.6 and 0.925 at 0.5, where
    # HellaSwag lost 2, 2, 2 and 4 of its 100 items and drift from the base was 0.120, 0.244, 0.339 and 0.448
    # nats per token (bench/results/chat-cycle/2026-12-07-*-100-benchmark-items.json, *-warm-gate-t07/t06/t05):
    # 0.6 is the one that met every target of the cycle, the rule by one prompt.
    teacher_temperature = 0.6

    def __init__(self, pools: Pools | None = None):
        from simulators.chatworld.calc import CalcFamily

        self.variations = ChatVariations(pools)
        self.dream_families = {"calc": CalcFamily()}

    def retention_suite(self, n_per_family: int) -> None:
        return None

    def replay(self, seed: int, new=(), focus: float = 0.0) -> None:
        return None

    def general_prompts(self, n: int) -> list[tuple[dict, ...]]:
        unseen = self.variations.pools.unseen
        return [_user(p) for p in unseen[len(unseen) - min(n, len(unseen)):]]

    def check(self, family: str, student_messages: Sequence[dict], context: str | None) -> dict | None:
        return check(family, student_messages, context)

    def passes(self, spec: dict, reply: str) -> bool:
        return passes(spec, reply)
