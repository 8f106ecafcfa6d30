"""Dream tasks of the tiny world's ``tools`` skill: fresh seed tasks, variations
of a task, and tasks read back from what users asked (recorded experience).

A task's hidden data (the tool and the two items' values) is the world's: the
tool is always the world's held-out tool, values are drawn fresh.  Nothing
here solves a task or shows how: the policy must find out in the environment.
"""
from __future__ import annotations

import random
import re

from simulators.env import Task
from simulators.tinyworld import world as W
from simulators.tinyworld.skills import new_tools_task
from simulators.tinyworld.tools_env import ENV_NAME, ToolsTask, from_task, to_task

FAMILY = "tools"
_ASK = re.compile("^" + re.escape(W.NEW_TOOL_TEMPLATE).replace(r"\{a\}", r"(\w+)").replace(r"\{b\}", r"(\w+)") + "$")


class ToolsTaskSource:
    """Seeds, variations and parsed asks for the ``tools`` skill (``simulators.proposer.TaskSource``)."""

    env = ENV_NAME
    family = FAMILY

    def seed(self, rng: random.Random) -> Task:
        return to_task(new_tools_task(rng), FAMILY)

    def vary(self, task: Task, rng: random.Random) -> Task:
        """The same kind of ask about other things: one item replaced (or the two
        swapped), values drawn fresh."""
        items = [item for item, _ in from_task(task).values]
        pool = W.world().heldout_words
        if rng.random() < 0.25:
            items.reverse()
        else:
            k = rng.randrange(2)
            items[k] = rng.choice([w for w in pool if w not in items])
        return self._task(items[0], items[1], rng)

    def parse(self, text: str, rng: random.Random) -> Task | None:
        """A recorded user ask as a task, when it is one of this skill's asks."""
        m = _ASK.match(" ".join(text.split()))
        if m is None or m.group(1) == m.group(2):
            return None
        return self._task(m.group(1), m.group(2), rng)

    def _task(self, a: str, b: str, rng: random.Random) -> Task:
        values = ((a, rng.randint(10, 49)), (b, rng.randint(10, 49)))
        return to_task(ToolsTask(W.NEW_TOOL_TEMPLATE.format(a=a, b=b), W.world().new_tool, values), FAMILY)
