"""Retention replay: every learner batch mixes lessons of the new experience
with lessons on tasks the model could already do.

A retention lesson shows the teacher the very prompt the student sees, with no
privileged context.  Under OPSD its teacher is the frozen base state, so the
loss on it is the divergence of the student from what the model did before, on
the student's own samples: it holds old behaviour in place while new behaviour
is distilled.  Under SFT the same lessons are trained on their reference
replies (replayed data), so both methods get the same data budget.
"""
from __future__ import annotations

from collections.abc import Iterator

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
