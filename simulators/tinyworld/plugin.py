"""The tiny world as a plug-in of the loop (``world: tiny``; the contract is ``simulators/world.py``).

- Variations: its single-turn asks (``simulators/tinyworld/variations.py``).
- Retention suite: its base skills and ``copy`` (which the base model masters and which the tiny world's new rule
  changes), from the fixed evaluation seeds (``evaluate.eval_items``) that training never draws from.
- Replay: endless lessons on its base skills (``experiment.retention_lessons``), each skill's share leaning
  towards those whose prompts look most like the cycle's (``learner.replay.focus_weights``).
- Dream families: ``tools``, the multi-step environment ``tools_env`` with its verifier.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from simulators.tinyworld.variations import TinyWorldVariations
from simulators.world import RetentionCheck


class ToolsFamily:
    """The ``tools`` skill: asks that need a tool, played in ``tools_env`` and judged by its verifier."""

    skill = "tools"

    def __init__(self):
        from simulators.tinyworld.tasks import ToolsTaskSource
        from simulators.tinyworld.tools_env import EVAL_MAX_TURNS

        self.source = ToolsTaskSource()
        self.eval_max_turns = EVAL_MAX_TURNS

    def heldout_tasks(self, n: int) -> list:
        from simulators.tinyworld.evaluate import eval_items
        from simulators.tinyworld.tools_env import to_task

        return [to_task(it.task, self.source.family) for it in eval_items(self.skill, "student", n)]

    def heldout_prompts(self, n: int) -> list[str]:
        from simulators.tinyworld.evaluate import eval_items

        return [it.task.question for view in ("student", "teacher") for it in eval_items(self.skill, view, n)]

    def success(self, n: int, generate: Callable[[list], list[str]]) -> float:
        from simulators.tinyworld.evaluate import eval_items, score

        return score(eval_items(self.skill, "student", n), generate, self.eval_max_turns)

    def measure(self, model, encoder, base=None) -> dict:
        from simulators.tinyworld.experiment import measure

        return measure(model, encoder, self.skill, base)


class TinyWorld:
    name = "tiny"
    teacher_temperature = 0.5  # chosen by the tiny world's sweep (docs/design-notes.md, "Why OPSD forgets as much as SFT here")

    def __init__(self):
        self.variations = TinyWorldVariations()
        self.dream_families = {"tools": ToolsFamily()}

    def retention_suite(self, n_per_family: int) -> list[RetentionCheck]:
        from simulators.tinyworld.evaluate import eval_items
        from simulators.tinyworld.skills import BASE_SKILLS

        return [RetentionCheck(skill, it.prompt, it.answer) for skill in (*BASE_SKILLS, "copy")
                for it in eval_items(skill, None, n_per_family)]

    def replay(self, seed: int, new: Sequence[Sequence[tuple]] = (), focus: float = 0.0):
        from learner.replay import focus_weights
        from simulators.tinyworld.experiment import retention_lessons, retention_samples

        weights = focus_weights([list(x) for x in new], retention_samples(), focus) if new else None
        return retention_lessons(seed, weights), dict(weights or {})
