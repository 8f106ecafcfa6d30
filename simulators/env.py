"""The environment interface of dream simulation, and the registry of environments.

An environment plays one task at a time: ``reset(task)`` returns the opening
messages (what the agent sees first), ``step(action)`` takes the agent's reply
(text) and returns the observation, the reward and whether the episode is over.
Every environment has a verifier, ``verify(task, messages)``, that decides from
a finished transcript alone whether the task was solved; the success filter
trusts nothing else.  An environment whose observations and rewards are
predicted by a model sets ``simulated = True``: its verdicts are marked as
simulated and never trusted alone.

Environments are found by name in a registry.  The built-in ones register
themselves; a user's environment is registered by an import path
(``"package.module:Factory"``) or by a Python entry point in the group
``reverie.environments`` (``name = "package.module:Factory"``).  A factory is
any callable ``factory(max_turns: int) -> Environment`` (a class works).
"""
from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "reverie.environments"


@dataclass(frozen=True)
class Task:
    """One task instance: what the user asks (``prompt``), which environment plays
    it (``env``), the environment's private data (``spec``: JSON-able, e.g. the
    hidden tool values), and a ``family`` the curriculum keeps statistics by."""

    env: str
    prompt: str
    spec: dict = field(default_factory=dict, hash=False, compare=False)
    family: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", task_id(self.env, self.prompt, self.spec))

    def to_dict(self) -> dict:
        return {"env": self.env, "prompt": self.prompt, "spec": self.spec, "family": self.family, "id": self.id}

    @staticmethod
    def from_dict(d: dict) -> "Task":
        return Task(d["env"], d["prompt"], dict(d.get("spec") or {}), d.get("family", ""), d.get("id", ""))


def task_id(env: str, prompt: str, spec: dict) -> str:
    """A content id: the same task proposed twice gets the same id (deduplication)."""
    blob = json.dumps([env, " ".join(prompt.split()), spec], sort_keys=True)
    return "task-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Step:
    observation: str | None  # None when the episode is over
    reward: float
    done: bool
    info: dict = field(default_factory=dict, hash=False, compare=False)


@runtime_checkable
class Environment(Protocol):
    name: str
    simulated: bool
    max_turns: int

    def reset(self, task: Task) -> list[dict]:
        """Start ``task``; the opening messages (chat format) the agent sees."""

    def step(self, action: str) -> Step:
        """Take the agent's action; observation, reward, done."""

    @property
    def transcript(self) -> list[dict]:
        """The conversation so far (opening messages, actions, observations)."""

    def verify(self, task: Task, messages: list[dict]) -> bool:
        """Whether ``messages`` (a finished transcript) solves ``task``."""


Factory = Callable[..., Environment]
_REGISTRY: dict[str, Factory] = {}
_BUILTINS = {
    "tinyworld-tools": "simulators.tinyworld.tools_env:ToolsEnvironment",
    "chatworld-calc": "simulators.chatworld.calc:CalcEnvironment",
    "model-simulated": "simulators.model_env:ModelSimulatedEnv",
}


class UnknownEnvironment(LookupError):
    pass


def register(name: str, factory: Factory | str) -> None:
    """Register an environment factory (or an import path ``module:attr``) under ``name``."""
    _REGISTRY[name] = _callable(factory, f"environment factory for {name!r}")


def _callable(obj: Any, what: str) -> Any:
    """``obj``, or what its import path ``module:attr`` names; a TypeError when that cannot be called."""
    if isinstance(obj, str):
        obj = load_import_path(obj)
    if not callable(obj):
        raise TypeError(f"{what} is not callable: {obj!r}")
    return obj


def load_import_path(path: str) -> Any:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise UnknownEnvironment(f"an import path looks like 'package.module:Name', got {path!r}")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise UnknownEnvironment(f"cannot import {module!r} for environment {path!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownEnvironment(f"{module!r} has no {attr!r} (environment {path!r})")
        obj = getattr(obj, part)
    return obj


def factory(name: str) -> Factory:
    """The factory for ``name``: registered, built in, an entry point, or an import path."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTINS:
        register(name, _BUILTINS[name])
        return _REGISTRY[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            register(name, ep.load())
            return _REGISTRY[name]
    if ":" in name:
        register(name, name)
        return _REGISTRY[name]
    raise UnknownEnvironment(f"unknown environment {name!r}; known: {', '.join(available())}")


def available() -> list[str]:
    names = set(_REGISTRY) | set(_BUILTINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


# A task family's own verifier: (finished transcript, max_turns) -> solved?  It judges from the transcript's own
# observations, so a simulated environment's successes are decided by it, never by the simulator's claim.
FamilyVerifier = Callable[[list[dict], int], bool]
_FAMILY_VERIFIERS: dict[str, FamilyVerifier] = {}
_BUILTIN_VERIFIERS = {"tools": "simulators.tinyworld.tools_verifier:verify_tools_family",
                      "calc": "simulators.chatworld.calc:verify_family"}


def register_family_verifier(family: str, verifier: FamilyVerifier | str) -> None:
    """Register the verifier of task family ``family`` (a callable or an import path ``module:attr``)."""
    _FAMILY_VERIFIERS[family] = _callable(verifier, f"verifier for family {family!r}")


def family_verifier(family: str) -> FamilyVerifier | None:
    """The registered verifier of ``family`` (built-in: the tiny world's ``tools``, the chat world's ``calc``), or
    None."""
    if family not in _FAMILY_VERIFIERS and family in _BUILTIN_VERIFIERS:
        register_family_verifier(family, _BUILTIN_VERIFIERS[family])
    return _FAMILY_VERIFIERS.get(family)


def make(name: str, **kwargs: Any) -> Environment:
    env = factory(name)(**kwargs)
    for attr in ("reset", "step", "verify", "transcript", "name", "simulated", "max_turns"):
        if not hasattr(env, attr):
            raise TypeError(f"environment {name!r} has no {attr!r}: it does not implement simulators.env.Environment")
    return env
