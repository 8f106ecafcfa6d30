"""Retention replay: every learner batch mixes lessons of the new experience
with lessons on tasks the model could already do.

A retention lesson shows the teacher the very prompt the student sees, with no
privileged context.  Under OPSD its teacher is the frozen base state, so the
loss on it is the divergence of the student from what the model did before, on
the student's own samples: it holds old behaviour in place while new behaviour
is distilled.  Under SFT the same lessons are trained on their reference
replies (replayed data), so both methods get the same data budget.

Which old tasks are replayed follows what is being learnt
(:func:`focus_weights`): new knowledge interferes most with old knowledge of
its own kind (new facts with the facts the model recalls, a new tool with the
tools it used), so a share of the replay goes to the old groups whose prompts
look most like the new lessons' prompts.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from learner.distill import Lesson


def retention_count(batch_size: int, fraction: float) -> int:
    """How many of ``batch_size`` lessons are retention lessons."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the retention fraction must be in [0, 1), got {fraction}")
    return round(batch_size * fraction)


def mixed_batches(new: Iterator[Lesson], old: Iterator[Lesson], batch_size: int,
                  fraction: float) -> Iterator[list[Lesson]]:
    """Endless batches of ``batch_size`` lessons, ``fraction`` of them retention."""
    n_old = retention_count(batch_size, fraction)
    while True:
        yield [next(new) for _ in range(batch_size - n_old)] + [next(old) for _ in range(n_old)]


Prompt = Sequence[dict]


def prompt_words(prompt: Prompt) -> frozenset[str]:
    """The words and punctuation marks of a conversation's contents, lower-cased."""
    return frozenset(re.findall(r"\w+|[^\w\s]", " ".join(str(m.get("content") or "") for m in prompt).lower()))


def likeness(new: list[frozenset[str]], group: list[frozenset[str]]) -> float:
    """How much the new prompts look like a group's: for each new prompt the largest word overlap (Jaccard) with
    one of the group's prompts, averaged."""
    if not new or not group:
        return 0.0
    return sum(max(len(a & b) / max(len(a | b), 1) for b in group) for a in new) / len(new)


def focus_weights(new: list[list[Prompt]], groups: dict[str, list[Prompt]], focus: float) -> dict[str, float]:
    """Each replay group's share of the replay: ``1 - focus`` of it spread evenly, ``focus`` in proportion to how
    much the new lessons look like the group's prompts.  ``new`` holds the new lessons' prompts per stream, each
    stream counting equally whatever its share of a batch's slots (``loop.mix``); the shares sum to 1."""
    if not 0.0 <= focus <= 1.0:
        raise ValueError(f"the replay focus must be in [0, 1], got {focus}")
    words = {g: [prompt_words(p) for p in ps] for g, ps in groups.items()}
    streams = [[prompt_words(p) for p in stream] for stream in new if stream]
    like = {g: sum(likeness(stream, ws) for stream in streams) / max(len(streams), 1) for g, ws in words.items()}
    total = sum(like.values())
    even = 1.0 / len(groups)
    if total <= 0:
        return {g: even for g in groups}
    return {g: (1.0 - focus) * even + focus * like[g] / total for g in groups}
