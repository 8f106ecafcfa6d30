"""The tiny world's multi-step environment: answer a question by calling a tool
twice in a text protocol and adding the two results.

Protocol (one action per assistant turn):
  ``call help``            -> ``tools : <name>``
  ``call <name> <item>``   -> the item's value, e.g. ``2 3``
  ``answer <digits>``      -> ends the episode
Anything else gets an error observation that says what went wrong.

Success (the verifier): the final answer equals the sum of the two items'
values, reached within ``max_turns`` assistant turns.  Evaluation uses
``max_turns=3``: only a policy that knows the tool calls it directly; one that
must first ask for help needs four turns.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from simulators.tinyworld.text import digits, undigits

EVAL_MAX_TURNS = 3


@dataclass(frozen=True)
class ToolsTask:
    question: str
    tool: str
    values: tuple[tuple[str, int], ...]  # (item, value) pairs, in question order

    @property
    def answer(self) -> int:
        return sum(v for _, v in self.values)


def make_task(rng: random.Random, template: str, tool: str, items: tuple[str, ...]) -> ToolsTask:
    a, b = rng.sample(items, 2)
    values = ((a, rng.randint(10, 49)), (b, rng.randint(10, 49)))
    return ToolsTask(template.format(a=a, b=b), tool, values)


@dataclass
class StepResult:
    observation: str | None
    reward: float
    done: bool


@dataclass
class ToolsEnv:
    task: ToolsTask
    max_turns: int = EVAL_MAX_TURNS
    turns: int = 0
    transcript: list[dict] = field(default_factory=list)

    def reset(self) -> str:
        self.turns = 0
        self.transcript = [{"role": "user", "content": self.task.question}]
        return self.task.question

    def step(self, action: str) -> StepResult:
        self.turns += 1
        action = " ".join(action.split())
        self.transcript.append({"role": "assistant", "content": action})
        words = action.split(" ")
        if words[0] == "answer":
            ok = undigits(words[1:]) == self.task.answer
            return self._end(1.0 if ok else 0.0)
        obs = self._tool(words)
        self.transcript.append({"role": "tool", "content": obs})
        if self.turns >= self.max_turns:
            return self._end(0.0)
        return StepResult(obs, 0.0, False)

    def _end(self, reward: float) -> StepResult:
        return StepResult(None, reward, True)

    def _tool(self, words: list[str]) -> str:
        if len(words) == 2 and words == ["call", "help"]:
            return f"tools : {self.task.tool}"
        if len(words) != 3 or words[0] != "call":
            return "error : bad action . try call help"
        if words[1] != self.task.tool:
            return "error : unknown tool . try call help"
        values = dict(self.task.values)
        if words[2] not in values:
            return "error : unknown item"
        return digits(values[words[2]])


def solve(task: ToolsTask, ask_help: bool) -> list[dict]:
    """A successful transcript for ``task`` (the expert policy of the world)."""
    env = ToolsEnv(task, max_turns=5)
    env.reset()
    if ask_help:
        env.step("call help")
    for item, _ in task.values:
        env.step(f"call {task.tool} {item}")
    env.step(f"answer {digits(task.answer)}")
    return env.transcript


def render_demo(transcript: list[dict]) -> str:
    """A transcript as one line of text, for a teacher's privileged context."""
    parts = [f"{m['role']} : {m['content']}" for m in transcript]
    return "example : " + " | ".join(parts)


# --------------------------------------------------------------------------- dream interface
# The same environment behind simulators.env.Environment (registered as
# "tinyworld-tools"), for dream simulation.  The protocol, the reward and the
# evaluation above are unchanged; dreams may allow more turns than evaluation.

ENV_NAME = "tinyworld-tools"


def to_task(task: ToolsTask, family: str = "tools"):
    """A ToolsTask as a dream Task (the tool and values are the env's private spec)."""
    from simulators.env import Task

    spec = {"tool": task.tool, "values": [[item, value] for item, value in task.values]}
    return Task(ENV_NAME, task.question, spec, family)


def from_task(task) -> ToolsTask:
    spec = task.spec
    return ToolsTask(task.prompt, spec["tool"], tuple((str(i), int(v)) for i, v in spec["values"]))


def verify(task: ToolsTask, messages: list[dict], max_turns: int) -> bool:
    """The verifier: replay the transcript's actions in a fresh environment; the
    episode succeeds when the real environment rewards it within ``max_turns``."""
    users = [m for m in messages if m["role"] == "user"]
    if not users or " ".join(users[0]["content"].split()) != " ".join(task.question.split()):
        return False
    actions = [m["content"] for m in messages if m["role"] == "assistant"]
    env = ToolsEnv(task, max_turns=max_turns)
    env.reset()
    for n, action in enumerate(actions, 1):
        result = env.step(action)
        if result.done:  # nothing may follow the end of the episode
            return result.reward == 1.0 and n == len(actions)
    return False


class ToolsEnvironment:
    """The tool task as a dream environment (``simulators.env.Environment``)."""

    name = ENV_NAME
    simulated = False

    def __init__(self, max_turns: int = EVAL_MAX_TURNS):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.max_turns = max_turns
        self._env: ToolsEnv | None = None

    def reset(self, task) -> list[dict]:
        self._env = ToolsEnv(from_task(task), max_turns=self.max_turns)
        self._env.reset()
        return list(self._env.transcript)

    def step(self, action: str):
        from simulators.env import Step

        if self._env is None:
            raise RuntimeError("step() before reset()")
        r = self._env.step(action)
        return Step(r.observation, r.reward, r.done)

    @property
    def transcript(self) -> list[dict]:
        return list(self._env.transcript) if self._env is not None else []

    def verify(self, task, messages: list[dict]) -> bool:
        return verify(from_task(task), messages, self.max_turns)
