"""The tiny world's learning experiment, as data: the new skills ``reverie
learn`` teaches (``LEARNABLE``), endless lessons of a new skill and of the
base skills (retention replay), and the measurement every method is judged by
(new-skill accuracy, retention per base skill and its average).

Lessons come from training seeds that evaluation never uses.  This module
learns nothing: the runs that compose the learner with these lessons are in
``actors/experiments.py``.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from learner.distill import Lesson
from learner.replay import mixed_batches
from simulators.tinyworld.evaluate import eval_items, forced_accuracy
from simulators.tinyworld.skills import BASE_SKILLS, base_item, new_pair

if TYPE_CHECKING:
    from learner.tokenizer import ChatEncoder

LEARNABLE = ("facts", "rule")  # single-turn new skills; `tools` is rehearsed by dreams


def new_lessons(skill: str, seed: int) -> Iterator[Lesson]:
    """Endless (student view, teacher view, reference) lessons of ``skill``,
    drawn from a training seed that evaluation never uses."""
    rng = random.Random(f"tinyworld-learn/{skill}/{seed}")
    while True:
        s, t = new_pair(skill, rng)
        yield Lesson(s.prompt, t.prompt, s.answer)


def retention_lessons(seed: int) -> Iterator[Lesson]:
    """Endless lessons on the base skills, each seen the same way by student
    and teacher (no privileged context), from a seed evaluation never uses."""
    rng = random.Random(f"tinyworld-learn/retention/{seed}")
    while True:
        item = base_item(rng.choice(BASE_SKILLS), rng)
        yield Lesson(item.prompt, item.prompt, item.answer)


def lessons(skill: str, batch_size: int, seed: int, retain: float = 0.0) -> Iterator[list[Lesson]]:
    """Endless batches of ``skill`` lessons, ``retain`` of each one retention."""
    return mixed_batches(new_lessons(skill, seed), retention_lessons(seed), batch_size, retain)


def measure(model, encoder: "ChatEncoder", skill: str) -> dict:
    """Forced-choice accuracy of a torch ``model`` on ``skill`` (student view) and on every base skill."""
    retention = {s: forced_accuracy(model, encoder, eval_items(s, None)) for s in BASE_SKILLS}
    return {
        "new_skill_acc": forced_accuracy(model, encoder, eval_items(skill, "student")),
        "retention": retention,
        "retention_avg": sum(retention.values()) / len(retention),
    }
