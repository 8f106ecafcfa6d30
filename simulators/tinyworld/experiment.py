"""The tiny world's learning experiment, as data: the new skills ``reverie
learn`` teaches (``LEARNABLE``), endless lessons of a new skill and of the
base skills (retention replay), and the measurement every method is judged by
(new-skill accuracy, retention per base skill and its average).

Lessons come from training seeds that evaluation never uses.  This module
learns nothing: the runs that compose the learner with these lessons are in
``bench/experiments.py``.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from learner.distill import Lesson
from learner.replay import mixed_batches
from simulators.tinyworld.evaluate import eval_items, forced_accuracy, reference_conversation
from simulators.tinyworld.skills import BASE_SKILLS, base_item, new_pair

if TYPE_CHECKING:
    from learner.tokenizer import Encoder

LEARNABLE = ("facts", "rule")  # single-turn new skills; `tools` is rehearsed by dreams


def new_lessons(skill: str, seed: int) -> Iterator[Lesson]:
    """Endless (student view, teacher view, reference) lessons of ``skill``,
    drawn from a training seed that evaluation never uses."""
    rng = random.Random(f"tinyworld-learn/{skill}/{seed}")
    while True:
        s, t = new_pair(skill, rng)
        yield Lesson(s.prompt, t.prompt, s.answer)


def retention_lessons(seed: int, weights: dict[str, float] | None = None) -> Iterator[Lesson]:
    """Endless lessons on the base skills, each seen the same way by student
    and teacher (no privileged context), from a seed evaluation never uses;
    ``weights``: each skill's share (``learner.replay.focus_weights``), else even."""
    rng = random.Random(f"tinyworld-learn/retention/{seed}")
    shares = [weights.get(s, 0.0) for s in BASE_SKILLS] if weights else None
    while True:
        item = base_item(rng.choices(BASE_SKILLS, shares)[0] if shares else rng.choice(BASE_SKILLS), rng)
        yield Lesson(item.prompt, item.prompt, item.answer)


def retention_samples(n: int = 32, seed: int = 0) -> dict[str, list[tuple[dict, ...]]]:
    """``n`` prompts of each base skill (what ``focus_weights`` compares new lessons with), from their own seed."""
    rng = random.Random(f"tinyworld-learn/retention-samples/{seed}")
    return {s: [base_item(s, rng).prompt for _ in range(n)] for s in BASE_SKILLS}


def lessons(skill: str, batch_size: int, seed: int, retain: float = 0.0) -> Iterator[list[Lesson]]:
    """Endless batches of ``skill`` lessons, ``retain`` of each one retention."""
    return mixed_batches(new_lessons(skill, seed), retention_lessons(seed), batch_size, retain)


def measure(model, encoder: "Encoder", skill: str, base=None) -> dict:
    """Forced-choice accuracy of a torch ``model`` on ``skill`` (student view) and on every base skill;
    with ``base`` (the model learning started from), also the KL from it on the retention suite."""
    retention = {s: forced_accuracy(model, encoder, eval_items(s, None)) for s in BASE_SKILLS}
    out = {
        "new_skill_acc": forced_accuracy(model, encoder, eval_items(skill, "student")),
        "retention": retention,
        "retention_avg": sum(retention.values()) / len(retention),
    }
    if base is not None:
        out["retention_kl"] = retention_kl(base, model, encoder)
    return out


def retention_kl(base, model, encoder: "Encoder", n: int = 100) -> float:
    """Mean forward KL(base || model) in nats per reply token, teacher-forced on
    the correct replies of ``n`` held-out items of every base skill: how far the
    model's distribution moved where it should not have, continuous where
    accuracy saturates (``evals.drift.kl_per_token`` on the encoder's training mask)."""
    from evals.drift import kl_per_token

    chats = [encoder.encode(reference_conversation(it)) for s in BASE_SKILLS for it in eval_items(s, None, n)]
    return kl_per_token(base, model, chats, batch=n).kl_per_token
