"""The chat world's own families for any model or version (``reverie eval --suite facts,rules``): what reverie
teaches a deployed instruct model, each reply judged by the world's code (``simulators/chatworld/plugin.py``),
greedy through the evaluation's one vLLM engine, with no system message (as the loop's student is asked).

- ``facts``: every question about the world's invented organisation (``facts.FACTS``, each fact in each of its
  phrasings; a fixed seeded subset of ``limit``), passed when the reply holds the fact's answer as whole words.
  A model that was never told knows none; a version taught facts by corrections knows the ones it learnt, in the
  phrasings it was never taught in too.
- ``rules``: every rule a user can state (one per kind of ``rules.RULES``: its first phrasing's check) on
  ``limit`` of the *unseen* general prompts (``prompts.Pools.unseen``: never drawn by the loop), one greedy reply
  per prompt judged by each rule's check: how often the model keeps each rule without being told it, which is
  what a learnt rule changes.

- ``calc``: ``limit`` held-out word problems of the ``calc`` family (``simulators/chatworld/calc.py``), each
  played as an episode with the calculator described in the system message: the engine's greedy reply is the
  action, the calculator's result the next user turn, at most ``calc.MAX_TURNS`` actions; solved when the family's
  verifier accepts the episode (the tool called, the answer right).  ``calc_plain``: the same problems asked
  alone, with no tool; solved when the reply's last number is the answer.

All answer with at most :data:`MAX_TOKENS` new tokens (the chat world's teacher-state measurement's, enough for
a closing line after a short answer); the replies cut there are counted.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evals.data import SUBSET_SEED, subset

FAMILIES = ("facts", "rules", "calc", "calc_plain")
MAX_TOKENS = 96


@dataclass(frozen=True)
class FamilyScore:
    name: str
    n: int  # questions or prompts asked
    score: float  # facts: share answered; rules: mean share kept over the rules
    detail: dict  # facts: {"fact": share of its phrasings answered} for facts answered at all; rules: {rule: share}
    cut: int  # replies cut at max_tokens
    max_tokens: int
    seconds: float

    def report(self) -> dict:
        return {"n": self.n, "score": self.score, "detail": self.detail, "cut": self.cut,
                "max_tokens": self.max_tokens, "seconds": round(self.seconds, 2), "source": _source(self.name)}


def _source(name: str) -> dict:
    from simulators.chatworld.facts import COMPANY, FACTS
    from simulators.chatworld.prompts import SOURCE

    if name == "facts":
        return {"what": f"the chat world's invented organisation ({COMPANY}): {len(FACTS)} facts",
                "module": "simulators/chatworld/facts.py"}
    if name in ("calc", "calc_plain"):
        return {"what": "held-out word problems of the chat world's calc family" +
                (", the calculator described" if name == "calc" else ", asked with no tool"),
                "module": "simulators/chatworld/calc.py"}
    return {"what": "the unseen side of the chat world's general prompts", "prompts": SOURCE,
            "module": "simulators/chatworld/prompts.py"}


def fact_asks(limit: int | None) -> list[tuple[str, dict, str]]:
    """(question, check, fact's name) for the fixed subset of ``limit`` of every fact's every phrasing (the
    loop's and the unseen ones)."""
    from simulators.chatworld.facts import FACTS
    from simulators.chatworld.plugin import FACTS_FAMILY, check

    every = [(q, check(FACTS_FAMILY, ({"role": "user", "content": q},), ""), f"{f.entity}: {f.attribute}")
             for f in FACTS for q in (*f.questions, *f.unseen)]
    return subset(every, limit, SUBSET_SEED)


def rule_checks() -> dict[str, dict]:
    """{rule as a user states it: its check}, one rule per kind (its first phrasing)."""
    from learner.templates import render
    from simulators.chatworld.plugin import CHAT_FAMILY, check
    from simulators.chatworld.rules import RULES

    return {kind.phrasings[0]: check(CHAT_FAMILY, ({"role": "user", "content": "?"},),
                                     render("rule", kind.phrasings[0])) for kind in RULES.values()}


def rule_prompts(limit: int | None, progress: Callable[[str], None] = print) -> list[str]:
    """The fixed subset of ``limit`` of the unseen general prompts."""
    from simulators.chatworld.prompts import load_pools

    return subset(list(load_pools(progress=progress).unseen), limit, SUBSET_SEED)


def _greedy(llm, encoder, questions: Sequence[str], max_tokens: int) -> tuple[list[str], int]:
    """Greedy replies to each question asked alone, and how many were cut at ``max_tokens``."""
    from reverie.engine import greedy

    out = greedy(llm, [encoder.prompt_ids([{"role": "user", "content": q}]) for q in questions], max_tokens)
    return [text for text, _ in out], sum(cut for _, cut in out)


def score_facts(asks: Sequence[tuple[str, dict, str]], replies: Sequence[str]) -> tuple[float, dict]:
    """(share of the questions answered, {fact: share of its phrasings answered} for the facts answered at all)."""
    from simulators.chatworld.plugin import passes

    by_fact: dict[str, list[bool]] = {}
    for (_, spec, fact), reply in zip(asks, replies, strict=True):
        by_fact.setdefault(fact, []).append(passes(spec, reply))
    answered = [ok for oks in by_fact.values() for ok in oks]
    return sum(answered) / len(answered), {f: sum(oks) / len(oks) for f, oks in by_fact.items() if any(oks)}


def score_rules(checks: dict[str, dict], replies: Sequence[str]) -> tuple[float, dict]:
    """(mean over the rules of the share of replies that keep each, {rule: that share})."""
    from simulators.chatworld.plugin import passes

    kept = {rule: sum(passes(spec, r) for r in replies) / len(replies) for rule, spec in checks.items()}
    return sum(kept.values()) / len(kept), kept


CALC_ITEMS = 100  # held-out problems when no limit is given


def score_plain(problems, replies: Sequence[str]) -> float:
    """The share of plain replies whose last number is the problem's answer."""
    from simulators.chatworld.calc import _NUMBER, answered

    def last(reply: str):
        found = _NUMBER.findall(reply)
        return answered(found[-1]) if found else None

    return sum(last(r) == p.answer for p, r in zip(problems, replies, strict=True)) / len(problems)


def calc_problems(limit: int | None):
    from simulators.chatworld.calc import problems

    return problems("heldout", 0, limit or CALC_ITEMS)


def evaluate_family(name: str, llm, encoder, limit: int | None,
                    progress: Callable[[str], None] = print, max_tokens: int = MAX_TOKENS) -> FamilyScore:
    """The family ``name`` (:data:`FAMILIES`) of the chat world, asked of the running engine ``llm``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown chat-world family {name!r}; families are: {', '.join(FAMILIES)}")
    start = time.perf_counter()
    if name == "facts":
        asks = fact_asks(limit)
        progress(f"facts: {len(asks)} questions about the chat world's organisation")
        replies, cut = _greedy(llm, encoder, [q for q, _, _ in asks], max_tokens)
        score, detail = score_facts(asks, replies)
    elif name == "calc":
        from reverie.engine import greedy
        from simulators.chatworld.calc import play

        problems = calc_problems(limit)
        progress(f"calc: {len(problems)} held-out word problems played with the calculator")
        cut = 0

        def generate(chats):
            nonlocal cut
            out = greedy(llm, [encoder.prompt_ids(c) for c in chats], max_tokens)
            cut += sum(c for _, c in out)
            return [text for text, _ in out]

        played = play(problems, generate)
        score, replies = played["solved"], played["episodes"]
        detail = {"called_tool": played["called_tool"], "acted": played["acted"]}
    elif name == "calc_plain":
        problems = calc_problems(limit)
        progress(f"calc_plain: {len(problems)} held-out word problems asked with no tool")
        replies, cut = _greedy(llm, encoder, [p.question for p in problems], max_tokens)
        score, detail = score_plain(problems, replies), {}
    else:
        prompts, checks = rule_prompts(limit, progress), rule_checks()
        progress(f"rules: {len(prompts)} unseen general prompts, {len(checks)} rules")
        replies, cut = _greedy(llm, encoder, prompts, max_tokens)
        score, detail = score_rules(checks, replies)
    return FamilyScore(name, len(replies), score, detail, cut, max_tokens, time.perf_counter() - start)


def longest_prompt(encoder, names: Sequence[str], limit: int | None) -> int:
    """Tokens of the longest prompt the families ``names`` ask (the engine's context must hold it and an answer)."""
    asked = [q for q, _, _ in fact_asks(limit)] if "facts" in names else []
    asked += rule_prompts(limit, progress=lambda line: None) if "rules" in names else []
    longest = max((len(encoder.prompt_ids([{"role": "user", "content": q}])) for q in asked), default=0)
    if "calc" in names:  # a whole episode: the protocol, the question, every action and result before the last
        from simulators.chatworld.calc import MAX_TURNS, opening

        longest = max(longest, max(len(encoder.prompt_ids(opening(p.question))) for p in calc_problems(limit))
                      + (MAX_TURNS - 1) * (MAX_TOKENS + 24))
    elif "calc_plain" in names:
        longest = max(longest, max(len(encoder.prompt_ids([{"role": "user", "content": p.question}]))
                                   for p in calc_problems(limit)))
    return longest


__all__ = ["FAMILIES", "MAX_TOKENS", "FamilyScore", "calc_problems", "evaluate_family", "fact_asks",
           "longest_prompt", "rule_checks", "rule_prompts", "score_facts", "score_plain", "score_rules"]
