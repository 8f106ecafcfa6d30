"""The success filter: keep what the verifier says succeeded, write it to the
experience store with its provenance, and hand it to the learner as the
teacher's privileged context.

A kept trajectory is a demonstration that nobody wrote: the policy found it in
a dream and the environment's verifier confirmed it.  It becomes a
:class:`learner.distill.Lesson` for every assistant turn of a state: the
student sees the conversation so far, the teacher sees the same conversation
with a successful trajectory (of another task, so the teacher must transfer
the skill rather than copy an answer) rendered as a system message.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import msgpack

if TYPE_CHECKING:
    from learner.distill import Lesson

TABLE = "trajectories"


def render_trajectory(messages: Sequence[dict]) -> str:
    """A trajectory as one line of text (the ``trajectory`` context template of
    ``learner/templates.json`` puts it in the teacher's system message)."""
    return " | ".join(f"{m['role']} : {m['content']}" for m in messages)


class SuccessFilter:
    """Keeps verified successes and appends them to the store's ``trajectories``
    table (ids are episode ids: a retried episode is never stored twice)."""

    def __init__(self, store, table: str = TABLE):
        self.store = store
        self.table = table

    @staticmethod
    def accept(record: dict) -> bool:
        return bool(record["success"])

    def keep(self, records: Sequence[dict]) -> list[dict]:
        kept = [r for r in records if self.accept(r)]
        if kept and self.store is not None:
            call(self.store.append, self.table, [msgpack.packb(r, use_bin_type=True) for r in kept])
        return kept


def call(method, *args):
    """Call a store method on a Ray actor handle or on a plain object alike."""
    remote = getattr(method, "remote", None)
    if remote is None:
        return method(*args)
    import ray

    return ray.get(remote(*args))


def states(messages: Sequence[dict], opening: int = 0) -> list[tuple[dict, ...]]:
    """Every state of a transcript at which the agent acts: the prefix before each assistant turn after the
    environment's ``opening`` messages (an opening's worked examples are not the agent's turns)."""
    return [tuple(messages[:i]) for i, m in enumerate(messages) if m["role"] == "assistant" and i >= opening]


def episode(record: dict) -> list[dict]:
    """A kept trajectory's own part, what a teacher is shown of it: from its task's ask (the last message of the
    environment's opening) on.  The opening before it (an instruction, worked examples) is in every state of the
    environment already."""
    return list(record["messages"][max((record.get("opening") or 0) - 1, 0):])


CONTEXTS = ("other", "same")  # whose kept success the teacher is shown: another task's, or the state's own task's


def lessons(kept: Sequence[dict], rng: random.Random, trusted_only: bool = True, opening: float | None = None,
            visited: Sequence[dict] | None = None, context: str = "other") -> Iterator["Lesson"]:
    """Endless lessons: a state the policy visited (student view) and the same
    state under a kept successful trajectory of another task as privileged
    context (teacher view).

    States come from ``visited`` (every trajectory the current policy played,
    failed ones included: on-policy states, where the teacher's guidance is
    needed most) or, by default, from the kept trajectories.  States are
    drawn uniformly, or with the opening state (the task alone, where the
    student lacks what the context gives) at probability ``opening``.  Only
    the teacher's context must be a verified success; simulated successes
    count only when ``trusted_only`` is false.  (Measured on the tiny world,
    3 rounds: kept states, uniform: held-out 0.81; visited states with the
    opening at 0.5: 0.735.  The dream uses the former.)

    ``context``: ``other`` (the default) shows the teacher a success of another task, so that it must transfer
    the skill; ``same`` shows it the verified success of the state's own task (SDFT's demonstration of the same
    query), where the skill is the task's own answer and the student, who never sees it, must learn to reach it
    (the chat world's calc: docs/design-notes.md, "Dreams on SmolLM2")."""
    if context not in CONTEXTS:
        raise ValueError(f"unknown teacher context {context!r}; contexts are: {', '.join(CONTEXTS)}")
    from learner.distill import Lesson
    from learner.templates import teacher_prompt

    pool = [r for r in kept if r["success"] and (not trusted_only or not r.get("simulated"))]
    if not pool:
        raise ValueError("no kept trajectory to learn from")
    sources = [r for r in (visited if visited is not None else pool)
               if len(states(r["messages"], r.get("opening") or 0)) > 0] or pool
    while True:
        rec = rng.choice(sources)
        if context == "same":
            mine = [r for r in pool if r["task_id"] == rec["task_id"]]
            ctx = rng.choice(mine or pool)
        else:
            ctx = rng.choice([r for r in pool if r["task_id"] != rec["task_id"]] or pool)
        all_states = states(rec["messages"], rec.get("opening") or 0)
        if opening is None or len(all_states) == 1:
            state = rng.choice(all_states)
        else:
            state = all_states[0] if rng.random() < opening else rng.choice(all_states[1:])
        yield Lesson(state, teacher_prompt(state, "trajectory", render_trajectory(episode(ctx))), None)
