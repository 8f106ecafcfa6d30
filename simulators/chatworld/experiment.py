"""The chat world's learning experiment, as data, beside the tiny world's (``simulators/tinyworld/experiment.py``):
the families ``reverie learn --model M`` teaches a real instruct model (``LEARNABLE``), endless lessons of one
(as the loop makes them from feedback), and the measurement every method is judged by.

- ``facts``: ``FACTS`` of the world's invented facts (``teaching.fact_teachings(SEED, FACTS)``), each asked in
  one phrasing and corrected, the lesson's teacher shown the correction as the loop shows it
  (``measure.fact_lessons``); lessons ask the taught phrasing and the fact's other phrasings (what the loop varies
  an ask into), each keeping the correction as its reference.  Judged on the facts' *unseen* phrasings
  (``Fact.unseen``), which no lesson asks.
- ``rule``: ``RULE`` stated on ``DEMONSTRATED`` taught prompts, each reply of the model corrected to keep it
  (``rules.rule_correction``); the teacher state is the context the loop gives such a lesson
  (``measure._demonstrated_context``) in front of ``RULE_PROMPTS`` other taught prompts.  The reference is the model's own reply
  to the prompt rewritten to keep the rule, made when the experiment is built (SFT's target).  Judged on
  ``HELDOUT`` prompts of the held-out pool, which no lesson asks.
- retention replay (``retain`` of each batch, the loop's kind): taught prompts, the teacher the student itself
  (or shown the rule, for the ``rule`` family, as the loop's replay keeps the rules in force).
- retention: acc_norm on ``BENCHMARK_ITEMS`` items of each of the world's benchmarks (``evals/score.py``, the
  gate's scorer) and their average; with a base, KL(base || model) per token on the base's greedy replies to
  ``KL_PROMPTS`` unseen general prompts (``evals/drift.py``, the gate's drift).  An accuracy on 100 items moves
  by whole items (0.01 each on one benchmark), so the measure also keeps every choice's log-likelihood and
  ``ChatExperiment.compare`` pairs two measures item by item: the gold choice's log-probability shift and the KL
  between the choice distributions, continuous figures in which a method's forgetting shows below one item.

Held-out replies are greedy, ``MAX_TOKENS`` long, judged by the world's own checks (``plugin.check``/``passes``).
This module learns nothing: ``bench/experiments.py`` composes it with the learner.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from learner.distill import Lesson, greedy_replies
from learner.replay import mixed_batches

LEARNABLE = ("facts", "rule")
SEED = 0
FACTS = 8
RULE = "starts_with"
DEMONSTRATED = 3
RULE_PROMPTS = 64  # taught prompts a rule's lessons ask (each has the model's reply corrected as its reference)
HELDOUT = 40
BENCHMARK_ITEMS = 100
KL_PROMPTS = 16
MAX_TOKENS = 32  # the loop's sample length; a starts_with rule and a fact's answer are judged on a reply's opening


BENCHMARK_LLS = "benchmark_loglikelihoods"  # a measure's key: every choice's log-likelihood, per benchmark


def _choice_logprobs(items, lls: Sequence[float]) -> list[list[float]]:
    """Each item's choices as log-probabilities: the log-softmax of their log-likelihoods."""
    out, at = [], 0
    for item in items:
        ll = lls[at: at + len(item.choices)]
        at += len(item.choices)
        top = max(ll)
        norm = top + math.log(sum(math.exp(x - top) for x in ll))
        out.append([x - norm for x in ll])
    if at != len(lls):
        raise ValueError(f"{len(lls)} log-likelihoods for {at} choices")
    return out


def _norm_margins(items, lls: Sequence[float]) -> list[float]:
    """Each item's gold choice's log-likelihood per character less the best other choice's: acc_norm counts the
    item where this is above 0 (``evals.score.predictions``)."""
    out, at = [], 0
    for item in items:
        per_char = [x / len(c) for x, c in zip(lls[at: at + len(item.choices)], item.choices)]
        at += len(item.choices)
        out.append(per_char[item.gold] - max(x for j, x in enumerate(per_char) if j != item.gold))
    return out


def _user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


@dataclass(frozen=True)
class Family:
    """One family's lessons (without their endless order) and the held-out asks it is judged on."""
    lessons: tuple[Lesson, ...]
    heldout: tuple[tuple[tuple[dict, ...], dict], ...]  # (student prompt, the world's check)
    replay_context: tuple[dict, ...] = ()  # what retention replay's teacher is shown in front of a prompt


class ChatExperiment:
    """The chat world's experiment for one model (a rule's demonstrations are that model's own corrected
    replies, so the experiment is built from the model: :meth:`build`)."""

    def __init__(self, families: dict[str, Family], replay_prompts: Sequence[tuple[dict, ...]],
                 general: Sequence[tuple[dict, ...]], benchmarks: Sequence[tuple[str, list, list]]):
        self.families, self.replay_prompts = families, list(replay_prompts)
        self.general, self.benchmarks = list(general), list(benchmarks)  # (name, items, scoring requests)

    @classmethod
    def build(cls, model, encoder, skills: Sequence[str] = LEARNABLE, benchmark_items: int = BENCHMARK_ITEMS,
              pools=None, benchmarks: Sequence[tuple[str, list]] | None = None,
              progress=lambda line: None, benchmark_names: Sequence[str] | None = None) -> "ChatExperiment":
        """The experiment of ``skills`` for ``model`` (a torch chat model and its encoder: the rule's
        demonstrations and references are its greedy replies); ``pools`` (``prompts.load_pools()``) and
        ``benchmarks`` (``(name, items)`` pairs: ``benchmark_items`` of each of ``benchmark_names``, by default
        the world's, the gate's) when not given."""
        from evals.data import load
        from evals.score import requests
        from simulators.chatworld.measure import _demonstrated_context, fact_lessons
        from simulators.chatworld.plugin import BENCHMARKS, check
        from simulators.chatworld.prompts import load_pools
        from simulators.chatworld.rules import RULES, rule_correction
        from simulators.chatworld.teaching import fact_teachings

        unknown = [s for s in skills if s not in LEARNABLE]
        if unknown:
            raise ValueError(f"unknown chat-world skill {unknown[0]!r}; skills are: {', '.join(LEARNABLE)}")
        pools = pools or load_pools(progress=progress)
        rng = random.Random(f"chatworld-experiment/{SEED}")
        taught = rng.sample(pools.taught, len(pools.taught))
        demo_asks, taught = taught[:DEMONSTRATED], taught[DEMONSTRATED:]
        families: dict[str, Family] = {}
        if "facts" in skills:
            teachings = fact_teachings(SEED, FACTS)
            lessons = []
            for lesson, t in zip(fact_lessons(teachings), teachings):
                lessons += [lesson, *(lesson.asking(_user(q), keeps_answer=True) for q in t.heldout)]
            heldout = [(_user(q), check("facts", _user(q), "")) for t in teachings for q in t.unseen]
            families["facts"] = Family(tuple(lessons), tuple(heldout))
        if "rule" in skills:
            rule = RULES[RULE].phrasings[0]
            prompts = [_user(p) for p in taught[:RULE_PROMPTS]]
            replies = greedy_replies(model, encoder, [*map(_user, demo_asks), *prompts], MAX_TOKENS)
            context = _demonstrated_context(rule, demo_asks, replies[:DEMONSTRATED])
            lessons = [Lesson(p, (*context, *p), rule_correction(rule, r))
                       for p, r in zip(prompts, replies[DEMONSTRATED:])]
            spec = check("chat", _user("?"), context[0]["content"])
            heldout = [(_user(p), spec) for p in random.Random(f"chatworld-experiment/heldout/{SEED}").sample(
                pools.heldout, HELDOUT)]
            families["rule"] = Family(tuple(lessons), tuple(heldout), replay_context=context)
        general = [_user(p) for p in pools.unseen[-KL_PROMPTS:]]
        if benchmarks is None:
            benchmarks = [(name, load(name, benchmark_items, progress=progress))
                          for name in (benchmark_names or BENCHMARKS)]
        scored = [(name, list(items), requests(encoder.tok, items)) for name, items in benchmarks]
        return cls(families, [_user(p) for p in taught], general, scored)

    # ------------------------------------------------------------------ lessons
    def new_lessons(self, skill: str, seed: int) -> Iterator[Lesson]:
        """Endless lessons of ``skill``, each one of the family's in an order drawn from ``seed``."""
        lessons = list(self.families[skill].lessons)
        rng = random.Random(f"chatworld-learn/{skill}/{seed}")
        while True:
            rng.shuffle(lessons)
            yield from lessons

    def retention_lessons(self, skill: str, seed: int) -> Iterator[Lesson]:
        """Endless replay: taught prompts, the teacher shown what the family keeps in force (a rule), else
        the student itself."""
        context = self.families[skill].replay_context
        rng = random.Random(f"chatworld-learn/retention/{seed}")
        while True:
            p = rng.choice(self.replay_prompts)
            yield Lesson(p, (*context, *p), None)

    def lessons(self, skill: str, batch_size: int, seed: int, retain: float = 0.0) -> Iterator[list[Lesson]]:
        return mixed_batches(self.new_lessons(skill, seed), self.retention_lessons(skill, seed), batch_size,
                             retain)

    # ------------------------------------------------------------------ measuring
    def accuracy(self, model, encoder, skill: str) -> float:
        """The share of ``skill``'s held-out asks whose greedy reply passes the world's check."""
        from simulators.chatworld.plugin import passes

        heldout = self.families[skill].heldout
        replies = greedy_replies(model, encoder, [p for p, _ in heldout], MAX_TOKENS)
        return sum(passes(spec, r) for (_, spec), r in zip(heldout, replies)) / len(heldout)

    def loglikelihoods(self, model) -> dict[str, list[float]]:
        """Every choice's log-likelihood on each benchmark's fixed subset (the gate's scorer), item after item."""
        from evals.score import torch_loglikelihoods

        return {name: torch_loglikelihoods(model, reqs) for name, _, reqs in self.benchmarks}

    def retention(self, model, lls: dict[str, list[float]] | None = None) -> dict[str, float]:
        """acc_norm on each benchmark's fixed subset (from ``lls`` where given)."""
        from evals.score import accuracy

        lls = lls if lls is not None else self.loglikelihoods(model)
        return {name: accuracy(items, lls[name])[1] for name, items, _ in self.benchmarks}

    def compare(self, before: dict, after: dict) -> dict:
        """What a benchmark's accuracy hides, paired item by item: each item's choices as a distribution (the
        softmax of their log-likelihoods), then per benchmark the mean change of the gold choice's log-probability
        (below 0: the model believes the right answers less) and the mean KL(before || after) of the
        distributions (how far the answers moved either way); and, as acc_norm decides, the mean change of the
        gold choice's margin per character over the best other choice (below 0: nearer to a wrong answer); with
        their averages over the benchmarks.  Empty when either measure lacks the log-likelihoods."""
        if BENCHMARK_LLS not in before or BENCHMARK_LLS not in after or not self.benchmarks:
            return {}
        shift, kl, margin = {}, {}, {}
        for name, items, _ in self.benchmarks:
            p = _choice_logprobs(items, before[BENCHMARK_LLS][name])
            q = _choice_logprobs(items, after[BENCHMARK_LLS][name])
            shift[name] = sum(b[i.gold] - a[i.gold] for a, b, i in zip(p, q, items)) / len(items)
            kl[name] = sum(sum(math.exp(x) * (x - y) for x, y in zip(a, b)) for a, b in zip(p, q)) / len(items)
            m0 = _norm_margins(items, before[BENCHMARK_LLS][name])
            m1 = _norm_margins(items, after[BENCHMARK_LLS][name])
            margin[name] = sum(b - a for a, b in zip(m0, m1)) / len(items)
        figures = {"retention_gold_logprob_shift": shift, "retention_choice_kl": kl,
                   "retention_norm_margin_shift": margin}
        return {**figures, **{f"{k}_avg": sum(v.values()) / len(v) for k, v in figures.items()}}

    def base_chats(self, base, encoder, prompts: Sequence[tuple[dict, ...]] | None = None) -> list:
        """The base's greedy replies to the general prompts (or ``prompts``), as the chats drift is scored on."""
        from evals.drift import scored_chats

        prompts = self.general if prompts is None else list(prompts)
        return scored_chats(encoder, prompts, greedy_replies(base, encoder, prompts, MAX_TOKENS))

    def drift(self, base, model, encoder, chats: list | None = None) -> float:
        """KL(base || model) per token on the base's greedy replies to the general prompts (the gate's drift);
        ``chats``: those replies made before (:meth:`base_chats`)."""
        from evals.drift import kl_per_token

        return kl_per_token(base, model, chats if chats is not None else self.base_chats(base, encoder)).kl_per_token

    def measure(self, model, encoder, skill: str, base=None) -> dict:
        """Held-out accuracy, the benchmarks' acc_norm and their average, every choice's log-likelihood (for
        :meth:`compare`), and with ``base`` the drift from it."""
        lls = self.loglikelihoods(model)
        retention = self.retention(model, lls)
        out = {"new_skill_acc": self.accuracy(model, encoder, skill), "retention": retention,
               "retention_avg": sum(retention.values()) / len(retention) if retention else None,
               BENCHMARK_LLS: lls}
        if base is not None:
            out["retention_kl"] = self.drift(base, model, encoder)
        return out


__all__ = ["BENCHMARK_ITEMS", "BENCHMARK_LLS", "ChatExperiment", "FACTS", "LEARNABLE", "RULE"]
