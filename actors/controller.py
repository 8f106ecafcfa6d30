"""The controller: the loop that turns recorded experience into served versions.

One cycle, top to bottom (``Controller._advance`` runs one step at a time and
writes the cycle's state durably after each, so a controller killed mid-cycle
is restarted by Ray and continues where it was):

1. **collect**: flush the experience store and read the feedback that no
   earlier cycle took (through the store's Parquet tables, never through an
   in-memory side channel); a rule or a correction, joined to the
   conversation it was about, becomes a lesson (the teacher state sees the
   conversation with the rule/correction as privileged context); a rating or
   an approval alone teaches nothing and is counted as such.  The cycle
   claims those feedback ids: they are learnt from by this cycle only, or,
   when the gate refuses its candidate, once more by the next cycle (a
   refusal may be about another family than the feedback's).
2. **dream**: when users asked tasks of a family with a registered
   environment (the tiny world's ``tools``), the simulators rehearse
   variations of those asks in the environment with the promoted policy
   (``actors/dreams.py::dream_step``: rollout engine, simulator pool,
   proposer, success filter); the verified successes land in the store's
   ``trajectories`` table, from where the learner reads them.  With
   ``loop.dream_env: simulated`` they rehearse instead in a simulator built
   from the family's recorded episodes (``simulators/world_model.py``); a
   sample of its dreamed successes is replayed for real, and a simulator
   that disagrees with reality is switched off for the cycle (the dream falls
   back to the real environment, or is skipped: ``loop.dream_fallback``).
3. **learn**: a learner actor (torch, placed on a GPU where the cluster has
   one) distils the lessons into the parent version by on-policy
   self-distillation, mixed with retention replay; lessons are the asked
   conversations and proposer variations of them (``simulators/variations``),
   never the held-out variations the gate scores.  Up to ``loop.relearn`` of
   the feedback lessons teach again what the parent's lineage was taught
   (``Controller._earlier``): users stop correcting a fact once the served
   version answers their own words, so without it what one cycle taught was
   never taught again.  The learner checkpoints
   every ``checkpoint_every`` updates into the cycle's work directory and a
   restarted cycle resumes from the newest checkpoint, skipping the batches
   already learnt (batches are drawn from the cycle's seed).  The result is
   registered as a candidate: a new id from the one version registry, its
   files written once.  After a cycle whose candidate the gate refused for
   retention, the next one (taught that feedback once more) halves the new
   lessons' share of each batch, twice at most (``Controller._retain``).
4. **gate**: weights that do not fit the served model (names, shapes,
   non-finite values) are rejected before any evaluation; then
   ``actors/gate.py`` scores held-out variations (against the teacher
   state's answer), what the versions it descends from learnt (their own
   held-out tasks, kept per version with their references, never lessons
   or dreams later) and the retention suite, against the parent.  A
   candidate that fails is ``rejected`` with its scores and the reason.
5. **approve**: with ``approval: required`` a passing candidate waits as
   ``pending`` until a person approves or rejects it (``reverie approve``,
   the admin API); otherwise the gate's pass approves it.
6. **swap**: the broadcaster installs it in every replica and promotes it;
   on failure nothing changes, the cycle is reported failed, and its
   feedback is left for the next cycle.

Triggers: ``loop.min_feedback`` new feedback records with a rule or a
correction, ``loop.min_episodes`` new recorded asks of a dreamable family,
``loop.period_s`` (when anything new has arrived), or
``request_cycle()`` (``POST /admin/cycle``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import shutil
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import islice
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reverie.config import ServeConfig
from reverie.files import atomic_write_json, read_json
from reverie.versions import APPROVED, PENDING, PROMOTED, REJECTED, Candidate, VersionRegistry

logger = logging.getLogger("reverie.controller")

CONTROLLER_NAME = "reverie-controller"
STEPS = ("collect", "dream", "learn", "gate", "approve", "swap")
ENDED = ("done", "rejected", "failed")
FAILED_BACKOFF_S = 60.0  # after a failed cycle, the next starts on request or after this long
MAX_RETAIN_HALVINGS = 2  # the new lessons' share is halved at most this often after refusals for forgetting
REPLAY_SAMPLE = 64  # lessons per stream compared with the replay's prompts (``Controller._replay``)


class Stopping(Exception):
    """The controller is stopping: the running step ends where a restarted controller resumes it."""


@dataclass
class Cycle:
    """One cycle's durable state."""
    cycle: int
    state: str  # a step of STEPS while it runs, one of ENDED after
    parent: int
    feedback_ids: list[str]
    seed: int
    started: float
    updated: float = 0.0
    candidate: int | None = None
    done: int = 0  # learner updates made
    total: int = 0
    lessons: dict = field(default_factory=dict)  # {"counts": {kind: n}, "skipped": {reason: n}}
    seconds: dict = field(default_factory=dict)  # per step
    error: str = ""
    forced: bool = False
    asks: list[str] = field(default_factory=list)  # ids of recorded interactions whose asks are dreamt on
    trajectories: list[str] = field(default_factory=list)  # kept dream trajectories (store ids)
    dream: dict = field(default_factory=dict)  # the dream step's report
    resumed: list[int] = field(default_factory=list)  # learner updates found at each start of the learn step
    rejected_by: str = ""  # "gate" or "person" when the cycle ended rejected
    retain: float | None = None  # share of each batch replaying base skills (``Controller._retain``; None: the loop's)
    forgot: bool = False  # the gate refused the candidate for retention (against its parent or the base)

    def public(self) -> dict:
        d = asdict(self)
        d.pop("feedback_ids")
        d.pop("asks")
        d.pop("trajectories")
        d["asks"], d["kept"] = len(self.asks), len(self.trajectories)
        d["step"] = self.state if self.state in STEPS else None
        d["progress"] = {"done": self.done, "total": self.total}
        d["feedback"] = len(self.feedback_ids)
        return d


def _teaches(fb: dict) -> bool:
    return any(isinstance(fb.get(k), str) and fb[k].strip() for k in ("rule", "correction"))


def _retained(c: Cycle, loop) -> float:
    """The cycle's replay share (one from before ``Cycle.retain`` existed: the loop's)."""
    return loop.retain if c.retain is None else c.retain


def _prompt_key(messages) -> str:
    return " | ".join(f"{m['role']}:{m['content']}" for m in messages)


def _varies(variations, lesson) -> bool:
    """Whether the proposer knows variations of the lesson's ask."""
    return (variations.family(lesson.student) is not None
            and variations.vary(lesson.student, random.Random(0)) is not None)


def _may_vary(variations, lesson, source: dict) -> bool:
    """Whether a lesson may be taught as a variation of its ask: it carries a rule, or a correction whose
    answer a variation keeps (the same fact asked another way)."""
    return _varies(variations, lesson) and bool(source["rule"]
                                               or variations.keeps_answer(variations.family(lesson.student)))


class Controller:
    """The loop's logic (no Ray in here but the calls it makes); ``ControllerActor`` runs it in a thread."""

    def __init__(self, cfg: ServeConfig, app_name: str = "reverie"):
        self.cfg = cfg
        self.app_name = app_name
        self.registry = VersionRegistry(cfg.resolved_versions_dir())
        self.registry.ensure_base(cfg.model_dir)
        self.dir = cfg.state_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.json"
        self._lock = threading.RLock()
        data = read_json(self.path, None) or {}
        self.processed: set[str] = set(data.get("processed", []))
        self.dreamt: set[str] = set(data.get("dreamt", []))  # interactions whose asks were dreamt on
        self.retried: set[str] = set(data.get("retried", []))  # feedback left over once by a cycle the gate refused
        self.next_cycle: int = int(data.get("next_cycle", 1))
        self.current: Cycle | None = Cycle(**data["cycle"]) if data.get("cycle") else None
        self.history: list[dict] = list(data.get("history", []))
        self.requested = bool(data.get("requested", False))
        self._last_cycle_at = time.time()
        self._judge = None  # the Gate, built on first use
        self.warmed: dict = {}  # the version the gate last scored while idle (``_warm``), and its seconds
        self._world = None  # the world the loop is taught in, loaded on first use (``world``)
        self._failed_at = 0.0
        self._suite = None
        # What the idle look has read of the store (kept in memory: after a restart it reads from the start and
        # drops what ``processed`` and ``dreamt`` say is done): per table the newest part read (the watermark),
        # the feedback not yet processed, and the recorded asks not yet dreamt on.
        self._marks: dict[str, str] = {}
        self._feedback: dict[str, dict] = {}
        self._candidates: dict[tuple[str, str], dict] = {}  # (interaction id, skill) -> the ask
        self.stopping = threading.Event()  # set by the actor's stop: a learn step ends at its next update
        self._engine = None  # the rollout engine dreams play through, kept across cycles (``_dream_engine``)

    # ------------------------------------------------------------ durable state
    def _save(self) -> None:
        with self._lock:
            if self.current is not None:
                self.current.updated = time.time()
            atomic_write_json(self.path, {
                "processed": sorted(self.processed), "dreamt": sorted(self.dreamt), "retried": sorted(self.retried),
                "next_cycle": self.next_cycle,
                "cycle": asdict(self.current) if self.current is not None else None,
                "history": self.history[-50:], "requested": self.requested})

    # ------------------------------------------------------------ what callers see
    def status(self) -> dict:
        with self._lock:
            cycle = self.current.public() if self.current is not None else (
                self.history[-1] if self.history else {"state": "idle", "step": None, "cycle": 0,
                                                        "progress": {"done": 0, "total": 0}})
            if self.current is None:
                cycle = {**cycle, "state": "idle", "step": None, "last": cycle.get("state")}
            return {"promoted": self.registry.promoted().version, "cycle": cycle,
                    "candidates": [c.public() for c in self.registry.all()],
                    "cycles": list(self.history[-10:]), "approval": self.cfg.loop.approval,
                    "learning": self.cfg.loop.learn,
                    "gate_warm": dict(self.warmed),  # the version the gate has scored as a parent while idle
                    "requested": self.requested}  # a cycle asked for (`reverie cycle`) that has not started yet

    def request_cycle(self) -> dict:
        """A cycle starts at the next look even below the feedback threshold (if anything new teaches)."""
        with self._lock:
            self.requested = True
            self._save()
            if self.current is not None:
                return {"requested": True, "cycle": self.current.cycle, "state": self.current.state}
            return {"requested": True, "cycle": self.next_cycle, "state": "requested"}

    # ------------------------------------------------------------ the store
    def _store(self):
        import ray

        return ray.get_actor(self.cfg.store_name, namespace="reverie")

    def _flush(self) -> None:
        import ray

        try:
            ray.get(self._store().flush.remote(), timeout=60)
        except Exception as e:  # noqa: BLE001 - the flushed part is still read; the rest waits for the next look
            logger.warning("could not flush the experience store: %s", e)

    def _read_new(self, table: str, columns=None) -> list[dict]:
        """The rows flushed to ``table`` since the last look, read with Ray Data; the watermark moves on."""
        from actors.store import read_new

        rows, self._marks[table] = read_new(self.cfg.data_dir, table, self._marks.get(table, ""), columns)
        return rows

    def _new_feedback(self) -> list[dict]:
        for r in self._read_new("feedback"):
            if r["id"] not in self.processed:
                self._feedback[r["id"]] = r
        with self._lock:
            claimed = set(self.current.feedback_ids) if self.current else set()
            return [r for r in self._feedback.values() if r["id"] not in claimed]  # processed ones were dropped

    def _new_asks(self) -> list[dict]:
        """Recorded conversations, not dreamt on yet, whose ask belongs to a family with a registered
        environment: ``{"id", "ask", "skill", "new"}`` (``new``: the first of its ask)."""
        from simulators.world import ask_of

        if not self.cfg.loop.dream:
            return []
        sources = {skill: f.source for skill, f in self.world.dream_families.items()}
        if not sources:
            return []  # the world has no family with an environment
        rng = random.Random(0)
        for r in self._read_new("interactions", columns=["id", "messages"]):
            if r["id"] in self.dreamt or not r["messages"]:
                continue
            ask = ask_of(r["messages"], self.world.dream_families.values())
            for skill, src in sources.items():
                if ask is not None and src.parse(ask, rng) is not None:
                    self._candidates[(r["id"], skill)] = {"id": r["id"], "ask": ask, "skill": skill}
        with self._lock:
            claimed = set(self.current.asks) if self.current else set()
        out, seen = [], set()
        for a in self._candidates.values():  # the dreamt ones were dropped when their cycle ended
            if a["id"] in claimed:
                continue
            out.append({**a, "new": a["ask"] not in seen})
            seen.add(a["ask"])
        return out

    # ------------------------------------------------------------ the loop
    def tick(self) -> None:
        """Start a cycle when a trigger fires, or advance the running one by one step."""
        if not self.cfg.loop.learn or self.stopping.is_set():
            return
        if self.current is None:
            self._maybe_start()
        if self.current is not None:
            self._advance()
        else:
            self._warm()

    def _warm(self) -> None:
        """While idle, the gate scores the promoted version as a parent (``Gate.warm``: its retention
        benchmarks, its retention suite answers, the drift replies of a lineage's base), once per version: the
        next cycle's gate then scores the candidate only.  A version a cycle promoted was scored as its
        candidate, which costs nothing here."""
        promoted = self.registry.promoted()
        if self.warmed.get("version") == promoted.version:
            return
        try:
            seconds = self._gate_for().warm(promoted.directory, drift=self._base(promoted).version == promoted.version)
        except Exception:  # noqa: BLE001 - the gate scores the parent when a candidate waits, as without this
            logger.warning("could not score version %s for the gate: %s", promoted.version, traceback.format_exc())
            seconds = None
        with self._lock:
            self.warmed = {"version": promoted.version, "seconds": seconds}

    def _maybe_start(self) -> None:
        new = self._new_feedback()
        teaching = [r for r in new if _teaches(r)]
        asks = self._new_asks()
        distinct = sum(a["new"] for a in asks)
        due = self.cfg.loop.period_s > 0 and time.time() - self._last_cycle_at >= self.cfg.loop.period_s
        if not self.requested and time.time() - self._failed_at < FAILED_BACKOFF_S:
            return  # a failed cycle's feedback is retried, but not in a tight loop
        enough = len(teaching) >= self.cfg.loop.min_feedback or distinct >= self.cfg.loop.min_episodes
        if not (self.requested or enough or (due and (teaching or asks))):
            self._flush()  # so the next look sees what arrived meanwhile
            return
        with self._lock:
            if self.current is not None:  # a candidate was submitted while this look read the store
                return  # what it found waits for the next look
            forced, self.requested = self.requested, False
            if not teaching and not asks:
                self._save()
                return
            self.current = Cycle(cycle=self.next_cycle, state="collect", parent=self.registry.promoted().version,
                                 feedback_ids=sorted(r["id"] for r in new), seed=self.cfg.loop.seed + self.next_cycle,
                                 started=time.time(), forced=forced, asks=sorted(a["id"] for a in asks),
                                 retain=self._retain())
            self.next_cycle += 1
            self._last_cycle_at = time.time()
            self._save()
        logger.info("cycle %s: %s feedback records (%s teach), %s recorded asks to dream on", self.current.cycle,
                    len(new), len(teaching), distinct)

    def _retain(self) -> float:
        """The replay share of a new cycle's batches: the loop's ``retain``, with the new lessons' share halved
        for each cycle in a row, just before, whose candidate the gate refused for retention (at most
        ``MAX_RETAIN_HALVINGS`` times): the refused cycle's feedback is taught once more, and not by the recipe
        that made the candidate forget.  Cycles that learnt nothing (a submitted candidate, a failed step) are
        passed over; any other ends the run of refusals."""
        refusals = 0
        for h in reversed(self.history):
            if not h.get("progress", {}).get("done") or h.get("state") == "failed":
                continue
            if not (h.get("state") == "rejected" and h.get("forgot")):
                break
            refusals += 1
        return 1.0 - (1.0 - self.cfg.loop.retain) / 2 ** min(refusals, MAX_RETAIN_HALVINGS)

    def _advance(self) -> None:
        c = self.current
        step = c.state
        t0 = time.perf_counter()
        try:
            getattr(self, f"_{step}")(c)
        except Stopping as e:  # the step resumes when a controller runs again (from the learner's checkpoint)
            logger.info("cycle %s: %s in %s", c.cycle, e, step)
        except Exception as e:  # noqa: BLE001 - a failed cycle is reported, never a dead controller
            logger.error("cycle %s failed in %s: %s", c.cycle, step, traceback.format_exc())
            c.error = f"{step}: {type(e).__name__}: {e}"
            c.state = "failed"
        c.seconds[step] = c.seconds.get(step, 0.0) + time.perf_counter() - t0
        if c.state in ENDED:
            self._end(c)
        else:
            self._save()

    def _end(self, c: Cycle) -> None:
        """A failed cycle's feedback is left for the next one; a cycle the gate refused leaves its feedback
        once more (the refusal may be about another family than the feedback's: measured, 63 corrections were
        dropped with a candidate refused for tools); otherwise the feedback is done with."""
        with self._lock:
            again = ([i for i in c.feedback_ids if i not in self.retried]
                     if c.state == "rejected" and c.rejected_by == "gate" else [])
            if again:
                self.retried.update(again)
                logger.info("cycle %s: its %s feedback records are left for the next cycle, once", c.cycle,
                            len(again))
            if c.state != "failed":
                done = [i for i in c.feedback_ids if i not in again]
                self.processed.update(done)
                self.dreamt.update(c.asks)
                for i in done:
                    self._feedback.pop(i, None)
                for key in [k for k in self._candidates if k[0] in self.dreamt]:
                    del self._candidates[key]
            else:
                self._failed_at = time.time()
            self.history.append(c.public())
            self.current = None
            self._save()
        shutil.rmtree(self.dir / "cycles" / f"c{c.cycle:06d}", ignore_errors=True)
        logger.info("cycle %s ended: %s %s", c.cycle, c.state, c.error)

    # ------------------------------------------------------------ 1. collect
    def _lessons(self, c: Cycle):
        """The cycle's lessons, rebuilt from the store (records never change, so a restart gets the same)."""
        return self._lessons_of(c.feedback_ids)

    def _lessons_of(self, feedback_ids: list[str]):
        from actors.store import read_table
        from learner.experience import feedback_lessons

        feedback = read_table(self.cfg.data_dir, "feedback", ids=feedback_ids).to_pylist()
        about = {f["response_id"] for f in feedback}
        interactions = read_table(self.cfg.data_dir, "interactions", ids=sorted(about),
                                  columns=["id", "messages", "version"]).to_pylist()
        shown = bool(getattr(self.world, "show_corrections", False))  # a world whose model takes them better shown
        return feedback_lessons(interactions, feedback, show_corrections=shown), feedback

    def _collect(self, c: Cycle) -> None:
        self._flush()
        found, feedback = self._lessons(c)
        kinds = Counter(k for s in found.sources for k in s["kinds"])
        skipped = dict(found.skipped)
        c.lessons = {"counts": dict(kinds), "skipped": skipped, "feedback": len(feedback),
                     "lessons": len(found.lessons)}
        if not found.lessons and not c.asks:
            c.state, c.error = "done", "nothing to learn: " + ", ".join(f"{n} {r}" for r, n in skipped.items())
            return
        c.total = self.cfg.loop.steps
        c.state = "dream" if c.asks else "learn"

    # ------------------------------------------------------------ 2. dream
    def _asks(self, c: Cycle) -> list[str]:
        from actors.store import read_table

        from simulators.world import ask_of

        rows = read_table(self.cfg.data_dir, "interactions", ids=c.asks, columns=["id", "messages"]).to_pylist()
        asks = [ask_of(r["messages"], self.world.dream_families.values()) or "" for r in rows]
        return sorted(set(a for a in asks if a))

    def _env_heldout(self, c: Cycle) -> list:
        """Held-out tasks of the dreamt families: variations of the recorded asks, played in the real
        environment by the gate; the dream never rehearses them."""
        from actors.gate import EnvTask

        if not c.asks:
            return []
        rng = random.Random(f"env-heldout/{c.cycle}/{c.seed}")
        asks, out = self._asks(c), []
        for skill, family in self.world.dream_families.items():
            src = family.source
            tasks = [t for t in (src.parse(a, rng) for a in asks) if t is not None]
            seen = {t.prompt for t in tasks}
            for i in range(self.cfg.gate.heldout_items * 4):
                if len(out) >= self.cfg.gate.heldout_items or not tasks:
                    break
                t = src.vary(tasks[i % len(tasks)], rng)
                if t.prompt not in seen:
                    seen.add(t.prompt)
                    out.append(EnvTask(skill, src.env, t, family.eval_max_turns))
        return out

    def _dream(self, c: Cycle) -> None:
        from actors.dreams import dream_step, simulated_dream
        from actors.gate import EnvTask

        parent = self.registry.get(c.parent)
        asks = self._asks(c)
        family = self._dream_family(asks)
        own = getattr(family, "dream_settings", {})  # the family's own, as ``reverie dream`` uses them
        report = dream_step(self.cfg.model_dir, parent.directory, parent.version, self.cfg.store_name,
                            self.cfg.data_dir, asks, self.cfg.loop.dream_episodes, c.seed, family=family,
                            simulators=self.cfg.loop.simulators, run_id=f"c{c.cycle:06d}",
                            temperature=own.get("temperature", 1.0),
                            exclude=[t.task.prompt for t in (*self._env_heldout(c), *self.learnt(c.parent))
                                     if isinstance(t, EnvTask)],
                            simulated=simulated_dream(self.cfg.loop), engine=self._dream_engine())
        c.trajectories = list(report.pop("trajectory_ids"))
        c.dream = {**report, "skill": family.skill}
        kinds = c.lessons.setdefault("counts", {})
        if c.trajectories:
            kinds["trajectory"] = len(c.trajectories)
        if not c.trajectories and not c.lessons.get("lessons"):
            c.state, c.error = "done", f"nothing to learn: no dream of {report['episodes']} episodes succeeded"
            return
        c.state = "learn"

    def _dream_family(self, asks: list[str]):
        """The world's dream family that most of the cycle's recorded asks belong to (a cycle dreams one)."""
        rng = random.Random(0)
        families = list(self.world.dream_families.values())
        return max(families, key=lambda f: sum(f.source.parse(a, rng) is not None for a in asks))

    def _dream_engine(self):
        """The rollout engine the dream steps borrow: started once and reloaded on each cycle's parent, since a
        start costs more than the rehearsal itself (40 to 60 s a cycle beside serving, against 2.4 s for 128
        episodes; a reload 0.04 s).  One that no longer answers is replaced."""
        import ray

        from simulators.dream import READY_TIMEOUT_S, context_of, stop_engine
        from simulators.rollout import engine_actor

        if self._engine is not None:
            try:
                ray.get(self._engine.version.remote(), timeout=60)
                return self._engine
            except Exception as e:  # noqa: BLE001 - a dead or hung engine is replaced
                logger.warning("the dream engine does not answer (%s); starting another", type(e).__name__)
                stop_engine(self._engine)
                self._engine = None
        base = self.registry.base()
        engine = engine_actor(base.directory, version=base.version, seed=self.cfg.loop.seed,
                              max_model_len=context_of(self.world.dream_families.values()))
        try:
            ray.get(engine.version.remote(), timeout=READY_TIMEOUT_S)
        except BaseException:
            stop_engine(engine)
            raise
        self._engine = engine
        return engine

    def close(self) -> None:
        """Stop what the controller started and keeps between cycles (the dream engine)."""
        if self._engine is not None:
            from simulators.dream import stop_engine

            engine, self._engine = self._engine, None
            stop_engine(engine)

    # ------------------------------------------------------------ 2. learn
    @property
    def world(self):
        """The world the loop is taught in (``simulators/world.py``; the ``world:`` setting, else the model's)."""
        if self._world is None:
            from simulators.world import load_world

            self._world = load_world(self.cfg.world_name())
        return self._world

    def _variations(self):
        return self.world.variations

    def _split(self, c: Cycle, found) -> tuple[list, list, set]:
        """(lessons, held-out tasks, indices of lessons that may be varied).

        Held-out tasks are variations of the asked tasks that no lesson uses (the gate's new-task set).  A
        lesson may be varied when its feedback carries a rule, or a correction whose answer a variation keeps
        (the same fact asked another way).  Asks of a family with no known variations (any model but the tiny
        world) are held out themselves, one in four, and never learnt from."""
        from actors.gate import HeldOutTask, heldout_tasks

        variations = self._variations()
        check = getattr(self.world, "check", None)  # a world's program check of a held-out reply, where it has one
        lessons, held, varied = [], [], set()
        fallback = [i for i, l in enumerate(found.lessons) if not _varies(variations, l)]
        held_out = {i for n, i in enumerate(fallback) if n % 4 == 3}
        for i in sorted(held_out):
            l = found.lessons[i]
            family = variations.family(l.student) or "feedback"
            context = l.teacher[0]["content"] if l.teacher and l.teacher[0]["role"] == "system" else ""
            held.append(HeldOutTask(family, l.student, l.teacher,
                                    check=check(family, tuple(l.student), context) if check and context else None))
        for i, (l, src) in enumerate(zip(found.lessons, found.sources)):
            if i in held_out:
                continue
            if _may_vary(variations, l, src):
                varied.add(len(lessons))
            lessons.append(l)
        sources = [(lessons[i].student, lessons[i].context) for i in sorted(varied)]
        held += heldout_tasks(sources, variations, self.cfg.gate.heldout_items,
                              random.Random(f"heldout/{c.cycle}/{c.seed}"), [l.student for l in found.lessons],
                              check=check)
        return lessons, held, varied

    def _earlier(self, c: Cycle, lessons: list, heldout: list) -> tuple[list, set]:
        """What the parent and the versions it descends from were taught by feedback, to be taught again
        (``loop.relearn``): their cycles' lessons, the newest one per ask, less the asks this cycle teaches
        and every prompt a gate held out (this cycle's, and the tasks its lineage was judged on): (lessons,
        indices of the ones that may be varied).  Nothing when the cycle has no feedback lessons of its own.

        Measured in demo run v: users correct a fact only while the served version gets it wrong in their own
        words, so a fact learnt in those words was never taught again; the last cycle had 11 corrections, and
        facts asked in other words stayed at 0.83."""
        from actors.gate import HeldOutTask, task_from_record

        if not lessons or self.cfg.loop.relearn <= 0:
            return [], set()
        banned = {_prompt_key(l.student) for l in lessons} | {_prompt_key(t.student) for t in heldout}
        ids: list[str] = []
        for v in self._lineage(self.registry.get(c.parent)):
            ids += v.lessons.get("ids", [])
            for record in self.registry.learnt(v.version):
                task = task_from_record(record)
                if isinstance(task, HeldOutTask):
                    banned.add(_prompt_key(task.student))
        ids = sorted(set(ids) - set(c.feedback_ids))
        if not ids:
            return [], set()
        found, _ = self._lessons_of(ids)
        variations = self._variations()
        out, varied = [], set()
        for l, src in reversed(list(zip(found.lessons, found.sources))):  # the newest feedback on an ask wins
            key = _prompt_key(l.student)
            if key in banned:
                continue
            banned.add(key)
            if _may_vary(variations, l, src):
                varied.add(len(out))
            out.append(l)
        return out, varied

    def _batches(self, c: Cycle, lessons: list, heldout: list, varied: set,
                 earlier: tuple[list, set] = ([], set()), ruled: Sequence[tuple] = ()) -> Iterator[list]:
        """Endless batches: asked conversations and their variations (never a held-out one), mixed with
        retention replay; the same sequence for the same cycle.  ``earlier`` (``_earlier``) takes its share of
        the feedback lessons: as many as it has of the lessons in all, at most ``loop.relearn``.  ``ruled``
        (``_ruled``): the teacher contexts that keep the rules in force, for a replay of what users asked."""
        from actors.gate import HeldOutTask
        from learner.distill import Lesson
        from learner.replay import mixed_batches

        rng = random.Random(f"lessons/{c.cycle}/{c.seed}")
        banned = {_prompt_key(t.student) for t in heldout}
        banned |= {_prompt_key(t.student) for t in self.learnt(c.parent) if isinstance(t, HeldOutTask)}
        variations = self._variations()
        old, old_varied = earlier
        share = min(self.cfg.loop.relearn, len(old) / (len(old) + len(lessons))) if old else 0.0

        def new() -> Iterator[Lesson]:
            while True:
                pool, may_vary = (old, old_varied) if share and rng.random() < share else (lessons, varied)
                i = rng.randrange(len(pool))
                lesson = pool[i]
                if i in may_vary and rng.random() < self.cfg.loop.variations:
                    family = variations.family(lesson.student)
                    same = family is not None and variations.keeps_answer(family)  # the correction holds for it
                    for _ in range(8):
                        v = variations.vary(lesson.student, rng)
                        if v is not None and _prompt_key(v) not in banned:
                            yield lesson.asking(v, keeps_answer=same)
                            break
                    else:
                        yield lesson
                else:
                    yield lesson

        streams = ([new()] if lessons else []) + ([self._dreamt(c)] if c.trajectories else [])
        records = len(lessons) + len(old), len(c.trajectories)
        by_records = self.cfg.loop.mix == "records" and len(streams) == 2
        feedback_share = round(records[0] / sum(records), 3) if by_records else 0.5
        if len(streams) == 2:
            c.lessons["feedback_share"] = feedback_share
        pick = random.Random(f"mix/{c.cycle}/{c.seed}")

        def experience() -> Iterator[Lesson]:  # feedback and dream lessons: in proportion to records, or in turn
            while by_records:
                yield next(streams[0] if pick.random() < feedback_share else streams[1])
            while True:
                for stream in streams:
                    yield next(stream)

        taught = banned | {_prompt_key(l.student) for l in (*lessons, *old)}
        replay = self._replay(c, lessons, taught, ruled)
        if replay is None:  # nothing asked before that the cycle does not teach: every slot is new experience
            c.lessons["replay"] = {}
        return mixed_batches(experience(), replay or iter(()), self.cfg.loop.batch_size,
                             0.0 if replay is None else _retained(c, self.cfg.loop))

    def _dreamt(self, c: Cycle) -> Iterator:
        """Lessons from the cycle's kept dream trajectories, read back from the store: each state the policy
        acted in, the teacher seeing a verified success as privileged context: another task's, or the state's own
        task's where the dreamt family's own settings say so (``teacher_context``: calc's)."""
        import msgpack

        from actors.store import read_table
        from simulators.success import lessons

        kept = [{**r, **(msgpack.unpackb(r.pop("extra"), raw=False) if r.get("extra") else {})}  # its opening
                for r in read_table(self.cfg.data_dir, "trajectories", ids=c.trajectories,
                                    columns=["id", "task_id", "messages", "success", "simulated", "extra"]).to_pylist()]
        # The dream step returns only trajectories that may be learnt from: real ones, or simulated ones whose
        # simulator's dreamed successes replayed for real (its agreement check); the gate then wants a real gain.
        family = self.world.dream_families.get(c.dream.get("skill"))
        context = getattr(family, "dream_settings", {}).get("teacher_context", "other")
        return lessons(kept, random.Random(f"dream-lessons/{c.cycle}/{c.seed}"), trusted_only=False, context=context)

    def _replay(self, c: Cycle, lessons: list, taught: set = frozenset(),
                ruled: Sequence[tuple] = ()) -> Iterator | None:
        """Retention replay: the world's own (``World.replay``: for the tiny world, its base skills, each skill's
        share focused on the ones whose prompts look most like the cycle's lessons, ``loop.replay_focus``; the
        shares are kept in ``c.lessons["replay"]``); for a world with none, what users asked before, evenly, under
        the frozen parent: the loss holds old behaviour, as the rules in force change it (each lesson's teacher is
        shown one of ``ruled``).  Never an ask in ``taught`` (the prompt keys the cycle teaches or holds out), nor
        a question of a family whose corrections hold when it is asked in other words (a fact) that the cycle
        corrects: the parent's answer to it is what the feedback corrects (measured: docs/design-notes.md,
        "Replay that unteaches"); None when nothing is left to replay."""
        from learner.distill import Lesson

        new = [[l.student for l in lessons[:: max(1, len(lessons) // REPLAY_SAMPLE)]]]
        if c.trajectories:
            new.append([l.student for l in islice(self._dreamt(c), REPLAY_SAMPLE)])
        own = self.world.replay(c.seed, new, self.cfg.loop.replay_focus)
        if own is not None:
            replay, weights = own
            c.lessons["replay"] = {k: round(v, 3) for k, v in weights.items()}
            return replay
        from actors.store import read_table

        variations = self._variations()
        corrected = {f for l in lessons if l.reference is not None
                     for f in [variations.family(l.student)] if f is not None and variations.keeps_answer(f)}
        asked = [p for p in (tuple({"role": m["role"], "content": m["content"]} for m in messages)
                             for messages in read_table(self.cfg.data_dir, "interactions", columns=["messages"])
                             .column("messages").to_pylist() if messages)
                 if _prompt_key(p) not in taught and variations.family(p) not in corrected]
        rng = random.Random(f"replay/{c.cycle}/{c.seed}")

        def endless():
            while True:
                p = rng.choice(asked)
                yield Lesson(p, (*rng.choice(ruled), *p) if ruled else p, None)

        return endless() if asked else None

    def _ruled(self, c: Cycle, found) -> list[tuple[dict, ...]]:
        """The teacher contexts that keep the rules in force: one per rule lesson of the cycle (``found``, its
        feedback lessons), the rules of the cycle and of the parent's lineage rendered as one system message, then
        the exchanges that lesson's context shows (``learner.experience.feedback_lessons``); the system message
        alone when only the lineage has rules; none when no rule is in force."""
        from learner.templates import render

        own = [(s["rule"], l) for l, s in zip(found.lessons, found.sources) if s["rule"]]
        rules = sorted({r for r, _ in own} | set(self._accepted_rules(self.registry.get(c.parent))))
        if not rules:
            return []
        system = {"role": "system", "content": "\n".join(render("rule", r) for r in rules)}
        return [(system, *l.context[1:]) for _, l in own] or [(system,)]

    def _learn_config(self, c: Cycle):
        """The learner's settings for the cycle: the loop's, with the teacher's temperature the loop's or else
        the world's (``World.teacher_temperature``; 1.0 for a world that states none), and the share of corrected
        lessons scored along the correction likewise (``World.along_reference``; 0 for a world that states none)."""
        from learner.config import LearnConfig

        loop = self.cfg.loop
        temperature = loop.teacher_temperature or getattr(self.world, "teacher_temperature", 1.0)
        along = loop.along_reference if loop.along_reference is not None else getattr(self.world, "along_reference",
                                                                                       0.0)
        return LearnConfig(method=loop.method, steps=loop.steps, batch_size=loop.batch_size, lr=loop.lr,
                           teacher_temperature=temperature, along_reference=along, retain=_retained(c, loop),
                           checkpoint_every=loop.checkpoint_every, seed=c.seed)

    def _learn(self, c: Cycle) -> None:
        import ray

        from actors.learner import LearnerActor, learner_options

        if c.candidate is not None and self._registered(c.candidate):
            c.state = "gate"  # registered just before a restart
            return
        found, _ = self._lessons(c)
        lessons, heldout, varied = self._split(c, found)
        if not lessons and not c.trajectories:
            raise ValueError("every lesson is held out for the gate: give more feedback")
        earlier = self._earlier(c, lessons, heldout)
        if earlier[0]:
            c.lessons.setdefault("counts", {})["relearnt"] = len(earlier[0])
        batches = self._batches(c, lessons, heldout, varied, earlier, self._ruled(c, found))
        learn_cfg = self._learn_config(c)
        work = self.dir / "cycles" / f"c{c.cycle:06d}"
        parent = self.registry.get(c.parent)
        learner = LearnerActor.options(**learner_options()).remote(
            str(self.cfg.model_dir), learn_cfg, str(work / "checkpoints"), None, 0, None, str(work / "tmp"),
            "torch", None if parent.source == "base" else parent.weights, self.cfg.loop.learner_threads)
        try:
            c.done = ray.get(learner.updates.remote(), timeout=600)
            c.resumed.append(c.done)
            for _ in range(c.done):
                next(batches)  # learnt before a restart: never repeated, never skipped
            self._save()
            while c.done < c.total:
                if self.stopping.is_set():
                    raise Stopping(f"stopped after {c.done} of {c.total} updates")
                ray.get(learner.step.remote(next(batches)), timeout=600)
                c.done += 1
                if c.done % 10 == 0:
                    self._save()
            if c.candidate is None:
                c.candidate = self.registry.allocate()
                self._save()
            out = work / "export"
            shutil.rmtree(out, ignore_errors=True)
            ray.get(learner.export.remote(str(out)), timeout=600)
        finally:
            ray.kill(learner)
        rules = sorted({s["rule"] for s in found.sources if s["rule"]})
        examples = [{"kinds": s["kinds"], "ask": l.student[-1]["content"], "rule": s["rule"],
                     "correction": s["correction"]} for s, l in list(zip(found.sources, found.lessons))[:8]]
        self.registry.register(out, version=c.candidate, source="learner", parent=c.parent, step=c.total,
                               cycle=c.cycle, move=True,
                               lessons={**c.lessons, "ids": list(c.feedback_ids), "rules": rules,
                                        "examples": examples, "trajectories": list(c.trajectories),
                                        "dream": c.dream})
        c.state = "gate"

    def _registered(self, version: int) -> bool:
        try:
            self.registry.get(version)
            return True
        except Exception:  # noqa: BLE001
            return False

    # ------------------------------------------------------------ 3. gate
    def _gate_for(self):
        from actors.gate import Gate, retention_benchmarks, retention_suite

        if self._judge is None:
            cfg, world = self.cfg.gate, self.world
            self._judge = Gate(cfg, retention_suite(cfg, world), self.cfg.model_dir, world=world,
                               benchmarks=retention_benchmarks(cfg, world, progress=logger.info))
        return self._judge

    def _lineage(self, candidate: Candidate) -> Iterator[Candidate]:
        """The candidate, then its parent, and so on to the version its chain started from (each once)."""
        seen: set[int] = set()
        v: Candidate | None = candidate
        while v is not None and v.version not in seen:
            seen.add(v.version)
            yield v
            v = self.registry.get(v.parent) if v.parent is not None else None

    def _accepted_rules(self, candidate: Candidate) -> list[str]:
        """The rules this candidate learnt and the ones its promoted ancestors did."""
        return sorted({r for v in self._lineage(candidate) for r in v.lessons.get("rules", [])})

    def _base(self, candidate: Candidate) -> Candidate:
        """The version the candidate's lineage started from (the base model, unless the chain is cut)."""
        *_, first = self._lineage(candidate)
        return first

    def learnt(self, version: int) -> list:
        """What ``version`` and the versions it descends from learnt: their judged held-out tasks
        (``Gate.learnt``), newest version first, at most ``gate.learnt_items`` per family, each prompt once."""
        from actors.gate import HeldOutTask, task_from_record

        out, seen, per_family = [], set(), Counter()
        for v in self._lineage(self.registry.get(version)):
            for record in self.registry.learnt(v.version):
                task = task_from_record(record)
                key = _prompt_key(task.student) if isinstance(task, HeldOutTask) else task.task.prompt
                if key not in seen and per_family[task.family] < self.cfg.gate.learnt_items:
                    seen.add(key)
                    per_family[task.family] += 1
                    out.append(task)
        return out

    def judge(self, version: int, heldout: list, env_tasks: list = ()) -> dict:
        """Gate ``version`` against its parent (and what its lineage learnt): rejected (with scores and reason)
        or passed.  Its held-out tasks, with their references, are kept for the versions that descend from it."""
        from actors.gate import WeightsRejected

        cand = self.registry.get(version)
        parent = self.registry.get(cand.parent)
        gate = self._gate_for()
        try:
            report = gate.judge(parent.directory, cand.directory, heldout, self._accepted_rules(cand), env_tasks,
                                base_dir=self._base(cand).directory, learnt=self.learnt(parent.version))
        except WeightsRejected as e:
            reason = f"weights rejected before evaluation: {e}"
            self.registry.set_status(version, REJECTED, reason=reason)
            return {"passed": False, "reason": reason}
        self.registry.save_learnt(version, gate.learnt(parent.directory, heldout, env_tasks))
        self.registry.save_review(version, report)
        scores = {k: report[k] for k in ("new", "learnt", "retention", "gain", "retention_loss", "base_retention_loss",
                                         "drift", "passed") if k in report}  # drift: a world with general prompts
        if not report["passed"]:
            self.registry.set_status(version, REJECTED, reason=report["reason"], scores=scores)
        else:
            self.registry.set_status(version, cand.status, scores=scores)
        return report

    def _gate(self, c: Cycle) -> None:
        from actors.gate import exceeds

        heldout = self._split(c, self._lessons(c)[0])[1] if c.feedback_ids else []
        report = self.judge(c.candidate, heldout, self._env_heldout(c))
        if not report["passed"]:
            c.state, c.error, c.rejected_by = "rejected", report["reason"], "gate"
            bound = self.cfg.gate.max_retention_loss
            c.forgot = any(exceeds(report.get(k, 0.0), bound) for k in ("retention_loss", "base_retention_loss"))
            return
        if self.cfg.loop.approval == "required":
            self.registry.set_status(c.candidate, PENDING)
            c.state = "approve"
        else:
            self.registry.set_status(c.candidate, APPROVED, decision={
                "action": "approve", "by": "gate (auto-approval)", "note": "passed the gate"})
            c.state = "swap"

    # ------------------------------------------------------------ 4. approve
    def _approve(self, c: Cycle) -> None:
        status = self.registry.get(c.candidate).status
        if status == APPROVED:
            c.state = "swap"
        elif status == REJECTED:
            c.state, c.error, c.rejected_by = "rejected", self.registry.get(c.candidate).reason, "person"
        # pending: wait for a person

    # ------------------------------------------------------------ 5. swap
    def _broadcaster(self):
        from ray import serve

        from serve.broadcaster import WeightBroadcaster
        from serve.door import LLM_DEPLOYMENT

        return WeightBroadcaster(serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=self.app_name), self.registry,
                                 mode=self.cfg.swap_mode, timeout_s=self.cfg.swap_timeout_s,
                                 transport=self.cfg.weight_transport)

    def _swap(self, c: Cycle) -> None:
        if self.registry.get(c.candidate).status == PROMOTED:
            c.state = "done"  # promoted just before a restart
            return
        asyncio.run(self._broadcaster().promote(c.candidate))
        c.state = "done"

    # ------------------------------------------------------------ a candidate from elsewhere
    def submit(self, directory: str, note: str = "") -> dict:
        """Register a model directory as a candidate of the promoted version and put it through the gate,
        approval and swap like a learnt one (an operator's own fine-tune; the demo's deliberately bad one)."""
        with self._lock:
            if self.current is not None:
                raise RuntimeError(f"cycle {self.current.cycle} is running; submit when it has ended")
            parent = self.registry.promoted().version
            cand = self.registry.register(directory, source=f"submitted:{Path(directory).resolve()}", parent=parent,
                                          note=note, cycle=self.next_cycle)
            self.current = Cycle(cycle=self.next_cycle, state="gate", parent=parent, feedback_ids=[],
                                 seed=self.cfg.loop.seed + self.next_cycle, started=time.time(),
                                 candidate=cand.version, lessons={"counts": {}, "submitted": note})
            self.next_cycle += 1
            self._save()
        return {"version": cand.version, "cycle": self.current.cycle}


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=8)
    class ControllerActor:
        """The controller as a named Ray actor: a thread runs ``Controller.tick`` every ``loop.poll_s``."""

        def __init__(self, cfg: ServeConfig, app_name: str = "reverie"):
            logging.basicConfig(level=logging.INFO)
            self.core = Controller(cfg, app_name)
            self._thread = threading.Thread(target=self._run, name="reverie-controller", daemon=True)
            self._thread.start()

        def _run(self):
            while not self.core.stopping.is_set():
                try:
                    self.core.tick()
                except Exception:  # noqa: BLE001 - logged; the loop goes on
                    logger.error("controller tick failed: %s", traceback.format_exc())
                if self.core.current is None or self.core.current.state == "approve":
                    self.core.stopping.wait(self.core.cfg.loop.poll_s)

        def status(self) -> dict:
            return self.core.status()

        def request_cycle(self) -> dict:
            return self.core.request_cycle()

        def submit(self, directory: str, note: str = "") -> dict:
            return self.core.submit(directory, note)

        def stop(self) -> None:
            self.core.stopping.set()
            self._thread.join(timeout=60)
            self.core.close()

    return ControllerActor


ControllerActor = _actor_class()


def start_controller(cfg: ServeConfig, app_name: str = "reverie", detached: bool = False):
    """The named controller actor (created if it does not exist yet; ray must be initialised), on the head."""
    from reverie.ray_start import placed

    return ControllerActor.options(name=CONTROLLER_NAME, namespace="reverie", get_if_exists=True,
                                   lifetime="detached" if detached else None,
                                   **placed("head")).remote(cfg, app_name)
