"""The task proposer: new task instances for dreams, from seed tasks and from
recorded experience (variations of what users asked), chosen by a curriculum
that favours what the current policy solves sometimes but not always, and
deduplicated (never a task proposed before, never a held-out task).

A *level* is a task family played under a turn budget: the same ask is harder
with fewer turns.  The curriculum keeps a Beta(1, 1) posterior of the success
rate per level and draws levels in proportion to ``p (1 - p)`` (largest at
p = 1/2, zero for levels always or never solved) plus a small floor, so no
level is starved of the attempts that would reveal a change.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from simulators.env import Task


class TaskSource(Protocol):
    env: str
    family: str

    def seed(self, rng: random.Random) -> Task: ...

    def vary(self, task: Task, rng: random.Random) -> Task: ...

    def parse(self, text: str, rng: random.Random) -> Task | None: ...


@dataclass(frozen=True)
class Proposal:
    task: Task
    max_turns: int  # the level's turn budget
    origin: str  # "seed", "variation" or "experience"

    @property
    def level(self) -> str:
        return level_key(self.task.family, self.max_turns)


def level_key(family: str, max_turns: int) -> str:
    return f"{family}@{max_turns}"


class Curriculum:
    """Success statistics per level, and the sampling weights they imply."""

    def __init__(self, levels: Sequence[str], floor: float = 0.02):
        if not levels:
            raise ValueError("a curriculum needs at least one level")
        self.levels = list(levels)
        self.floor = floor
        self.successes = {lv: 0.0 for lv in self.levels}
        self.attempts = {lv: 0.0 for lv in self.levels}

    def update(self, level: str, success: bool) -> None:
        if level in self.attempts:
            self.attempts[level] += 1
            self.successes[level] += float(success)

    def forget(self, keep: float = 0.0) -> None:
        """Discount old statistics (the policy changed): keep ``keep`` of them."""
        for lv in self.levels:
            self.successes[lv] *= keep
            self.attempts[lv] *= keep

    def rate(self, level: str) -> float:
        return (self.successes[level] + 1.0) / (self.attempts[level] + 2.0)  # Beta(1, 1) posterior mean

    def weights(self) -> dict[str, float]:
        raw = {lv: self.rate(lv) * (1.0 - self.rate(lv)) + self.floor for lv in self.levels}
        total = sum(raw.values())
        return {lv: w / total for lv, w in raw.items()}

    def draw(self, rng: random.Random) -> str:
        w = self.weights()
        return rng.choices(self.levels, weights=[w[lv] for lv in self.levels])[0]


def _norm(text: str) -> str:
    return " ".join(text.split())


class TaskProposer:
    def __init__(self, source: TaskSource, budgets: Sequence[int], seed: int = 0,
                 exclude: Iterable[str] = (), experience_share: float = 0.5, floor: float = 0.02):
        if not budgets or min(budgets) < 1:
            raise ValueError(f"turn budgets must be positive, got {list(budgets)}")
        self.source = source
        self.budgets = sorted(set(int(b) for b in budgets))
        self.curriculum = Curriculum([level_key(source.family, b) for b in self.budgets], floor)
        self.rng = random.Random(f"proposer/{source.family}/{seed}")
        self.excluded = {_norm(p) for p in exclude}  # held-out tasks: never proposed
        self.seen: set[str] = set()
        self.experience: list[Task] = []
        self.experience_share = experience_share

    def add_experience(self, asks: Iterable[str]) -> int:
        """Recorded user asks (text); those that parse as tasks become bases for variations."""
        added = 0
        known = {_norm(t.prompt) for t in self.experience}
        for text in asks:
            task = self.source.parse(text, self.rng)
            if task is not None and _norm(task.prompt) not in known:
                self.experience.append(task)
                known.add(_norm(task.prompt))
                added += 1
        return added

    def _candidate(self) -> tuple[Task, str]:
        if self.experience and self.rng.random() < self.experience_share:
            base = self.rng.choice(self.experience)
            if _norm(base.prompt) not in self.seen:
                return base, "experience"
            return self.source.vary(base, self.rng), "variation"
        return self.source.seed(self.rng), "seed"

    def propose(self, n: int, max_tries: int = 50) -> list[Proposal]:
        """``n`` new, distinct tasks, each at a level drawn by the curriculum."""
        out = []
        for _ in range(n):
            for _ in range(max_tries):
                task, origin = self._candidate()
                key = _norm(task.prompt)
                if key not in self.seen and key not in self.excluded:
                    break
            else:
                raise RuntimeError(f"no new task after {max_tries} tries: the task space is exhausted")
            self.seen.add(key)
            budget = int(self.curriculum.draw(self.rng).rsplit("@", 1)[1])
            out.append(Proposal(task, budget, origin))
        return out

    def update(self, results: Iterable[tuple[Proposal, bool]]) -> None:
        for proposal, success in results:
            self.curriculum.update(proposal.level, success)
