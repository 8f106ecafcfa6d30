"""The door between the loop and a world: what a world gives the controller, the gate and the dreams.

A *world* is what reverie knows about the tasks a deployed model is taught: which family an ask belongs to and
how to ask the same kind of thing in other words, what a candidate must keep doing, what retention replays, and,
for the families that have one, an environment to dream in with its verifier.  The loop names no world: the
``world:`` setting (``ServeConfig.world``) picks one from :data:`WORLDS`, or a plug-in of the user's given as
``package.module:Class``; left unset, the model's own (``reverie.models.default_world``: the tiny world for the
model it ships with, ``none`` for any other).

Contract of a :class:`World` (every method is deterministic in its arguments):

- ``name``: how the setting names it.
- ``variations``: a :class:`simulators.variations.Variations`, the families of asks and new asks of the same
  kind (the gate's held-out new tasks, the learner's variations of what a user asked).
- ``retention_suite(n)``: what a candidate must keep doing, ``n`` items per family, as
  :class:`RetentionCheck` (family, prompt, answer checked by the gate's exact-match verifier); ``None`` when the
  world has none of its own (the gate then wants ``gate.retention_suite``, a JSONL file).
- ``replay(seed, new, focus)``: endless retention lessons (``learner.distill.Lesson``, student and teacher the
  same prompt), each family's share leaning by ``focus`` towards those whose prompts look like ``new`` (lists of
  the cycle's student prompts), and the shares; ``None`` when the world has none (the loop then replays what
  users asked before, with the frozen parent as the teacher shown the rules in force, never an ask the cycle
  teaches or holds out: ``actors.controller.Controller._replay``).
- ``dream_families``: ``{skill: DreamFamily}`` for the families that can be rehearsed in an environment.

Optional, for a world whose replies are not judged word for word (a chat model's never are):

- ``check(family, prompt, context)``: a program's check of a reply to the held-out ask ``prompt`` (messages) of
  ``family``, given the privileged context of the feedback it varies (the teacher state's system message), as
  JSON; or ``None``, and the gate then holds the reply to the teacher state's answer.
- ``passes(check, reply)``: whether ``reply`` passes a check ``check`` made (code, no model).
- ``benchmarks``: names of published benchmarks (``evals.data.BENCHMARKS``) that are the world's retention,
  scored by log-likelihood for parent, candidate and base (``actors.gate.retention_benchmarks``); with them,
  ``retention_suite`` may be ``None``.
- ``teacher_temperature``: the teacher's temperature the world's lessons were measured with (the tiny world's
  0.5, the chat world's 0.6); without it the loop's teacher is at 1.0, as it is (``loop.teacher_temperature`` overrides both).
- ``along_reference``: the share of corrected lessons OPSD scores along the correction rather than a student
  sample (``learner.distill.opsd_loss``), for a model whose samples never reach what a correction teaches (a
  name); without it every lesson is sampled (``loop.along_reference`` overrides both).
- ``show_corrections``: ``True`` where the world's model takes a correction better shown than told: a lesson
  of a correction alone (no rule) then shows the teacher state its own exchange after the system message, the
  ask answered with the correction (``learner.experience.feedback_lessons``), in front of the ask and of every
  variation of it; without it the correction is only told.
- ``general_prompts(n)``: ``n`` fixed general prompts (messages), on which the gate measures a candidate's drift
  from the base, KL(base || candidate) per token on the base's own replies (``evals/drift.py``).

Contract of a :class:`DreamFamily`:

- ``skill``; ``source``: its ``simulators.proposer.TaskSource`` (seeds, variations, asks parsed into tasks; its
  ``env`` names the registered environment, ``simulators/env.py``); ``eval_max_turns``: the turn budget of a
  held-out task.
- ``heldout_tasks(n)``: the first ``n`` held-out tasks as environment tasks (``simulators.env.Task``), never
  rehearsed; ``heldout_prompts(n)``: every prompt among them (both views), which a proposer excludes.
- ``success(n, generate)``: greedy success of ``generate`` (prompts to replies) on the first ``n`` held-out
  tasks, played in the real environment and judged by its verifier.
- ``measure(model, encoder, base=None)``: a torch model's forced-choice accuracy on the family and on the
  world's retention skills (the dream experiment's before and after).
- Optional: ``max_model_len``, the context (tokens) its longest episode needs, where it is longer than the
  engine's default; ``dream_settings``, ``reverie dream``'s defaults for it (``actors.dreams.DreamConfig`` fields),
  where the world's model needs others than the tiny world's.
"""
from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from reverie.errors import ReverieError
from simulators.variations import PromptVariations, Variations


@dataclass(frozen=True)
class RetentionCheck:
    """One thing a candidate must keep doing: the reply to ``prompt`` (messages) must be ``answer``."""
    family: str
    prompt: tuple
    answer: str


class DreamFamily(Protocol):
    skill: str
    source: object  # simulators.proposer.TaskSource
    eval_max_turns: int

    def heldout_tasks(self, n: int) -> list: ...

    def heldout_prompts(self, n: int) -> list[str]: ...

    def success(self, n: int, generate: Callable[[list], list[str]]) -> float: ...

    def measure(self, model, encoder, base=None) -> dict: ...


class World(Protocol):
    name: str
    variations: Variations
    dream_families: dict[str, DreamFamily]

    def retention_suite(self, n_per_family: int) -> list[RetentionCheck] | None: ...

    def replay(self, seed: int, new: Sequence[Sequence[tuple]] = (),
               focus: float = 0.0) -> tuple[Iterator, dict[str, float]] | None: ...


class NoWorld:
    """A model reverie knows nothing about: every ask is one family (``feedback``) with no variations, no
    retention suite of its own, no replay of its own, nothing to dream."""

    name = "none"
    variations = PromptVariations()
    dream_families: dict = {}

    def retention_suite(self, n_per_family: int) -> None:
        return None

    def replay(self, seed: int, new=(), focus: float = 0.0) -> None:
        return None


WORLDS = {
    "none": "simulators.world:NoWorld",
    "tiny": "simulators.tinyworld.plugin:TinyWorld",
    "chat": "simulators.chatworld.plugin:ChatWorld",
}


class UnknownWorld(ReverieError):
    """A ``world:`` setting that names no world reverie can load (one line, exit 2 at the command line)."""


def load_world(name: str) -> World:
    """The world ``name`` names: one of :data:`WORLDS`, or ``package.module:Class`` (a plug-in)."""
    where = WORLDS.get(name, name)
    if ":" not in where:
        raise UnknownWorld(f"unknown world {name!r}: worlds are {', '.join(sorted(WORLDS))}, "
                           "or package.module:Class")
    module, cls = where.split(":", 1)
    try:
        world = getattr(importlib.import_module(module), cls)()
    except (ImportError, AttributeError) as e:
        raise UnknownWorld(f"world {name!r}: cannot load {where} ({e})") from None
    return world


def ask_of(messages: Sequence[dict] | None, families: Iterable[DreamFamily] = ()) -> str | None:
    """What a recorded conversation asks: its first user message that one of ``families``' sources reads as a task
    (an agent's conversation may open with worked examples: the chat world's calc), else its first user message."""
    users = [str(m.get("content") or "") for m in messages or () if m.get("role") == "user"]
    rng = random.Random(0)
    sources = [f.source for f in families]
    return next((u for u in users if any(s.parse(u, rng) is not None for s in sources)), users[0] if users else None)


def dream_family(world: World, skill: str) -> DreamFamily:
    families = world.dream_families
    if skill not in families:
        raise ValueError(f"the {world.name} world has no dream family {skill!r}; it has: "
                         f"{', '.join(families) or 'none'}")
    return families[skill]
