"""Dreams, the producer: rehearse a skill with the current policy and keep what
the environment's verifier accepts.

Contract (the door ``actors/`` composes through):

- A :class:`Dreamer` dreams one family of its world
  (``simulators.world.DreamFamily``: its task source, held-out tasks and
  verifier).  It holds a rollout engine (``simulators/rollout.py``) on
  one version of the weights, an experience store handle, the task proposer
  (``simulators/proposer.py``: a task source, its curriculum, the held-out
  exclusions) and a :class:`simulators.workers.SimulatorPool`.
- ``rehearse(episodes, round)`` proposes ``episodes`` new tasks (never a
  held-out task, never one proposed before) at the turn budgets the
  curriculum favours, plays them with the policy (at temperature 1 unless told), and
  returns a :class:`RehearsalReport`.  The success filter has then written
  every verified success to the store's ``trajectories`` table, exactly once
  per episode id, tagged with the version id the Dreamer was given (at
  start or by ``reload``); the Dreamer never counts versions itself.
- ``heldout_success(n)`` measures the policy greedily on held-out tasks in the
  real environment at the evaluation turn budget, judged by its verifier.
- ``reload(model_dir, version)`` puts the rollout engine on other weights.
- ``record(episodes)`` plays new tasks in the real environment and writes
  each turn to the store's ``interactions`` table as the request a user's
  agent would have sent: recorded experience, where a simulator is built from.
- ``simulate(simulator)`` makes later rehearsals play in a
  :class:`Simulator` (a model-simulated environment over recorded
  transitions) instead of the real environment; ``use_real()`` goes back.
  ``agreement(records, n)`` replays a sample of dreamed successes in the real
  environment: every action but the last as dreamed, then the policy's (a
  few tries), judged by the real verifier; the share whose path is open for
  real.
- ``verifier_check(n)`` plays held-out tasks in the real environment and
  compares the family's verifier (from the episode's observations) with the
  real one: the share of right episodes it accepts, of wrong ones it refuses.

It learns nothing and drives no other room: no import of ``learner.loop``, no
call to ``learn``.  The loop that rehearses, learns, reloads and measures is
``actors/dreams.py``.  No demonstration is given: the world's expert
(``solve``) is never called here; the only judge is the verifier.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUDGETS = (3, 4, 6)  # dream turn budgets (the levels of the curriculum)
WORKER_BATCH = 16  # episodes a worker plays in lock step
EVAL_ITEMS = 200  # held-out tasks measured (and never rehearsed)
READY_TIMEOUT_S = 300.0  # an engine start or a worker placement that takes longer fails loudly
RELOAD_TIMEOUT_S = 600.0
AGREEMENT_TRIES = 4  # the policy's tries at the last step of a dreamed success replayed for real


def context_of(families) -> int | None:
    """The context (tokens) the longest episode of ``families`` needs (a family's optional ``max_model_len``);
    None where every family fits the engine's default."""
    return max((getattr(f, "max_model_len", None) or 0 for f in families), default=0) or None


def recorded_asks(data_dir: str | Path, families: Iterable = ()) -> list[str]:
    """What users asked: each recorded interaction's ask (``simulators.world.ask_of``: the first user message
    one of ``families`` reads as a task, else the first)."""
    from actors.store import read_table
    from simulators.world import ask_of

    families = list(families)
    asks = (ask_of(messages, families) for messages in
            read_table(str(data_dir), "interactions").column("messages").to_pylist())
    return [a for a in asks if a is not None]


@dataclass
class RehearsalReport:
    """One rehearsal: every trajectory played and the verified successes kept (already in the store)."""
    round: int
    version: int  # the policy version every trajectory is tagged with
    records: list[dict]  # one per episode, in proposal order
    kept: list[dict]  # the verified successes, written to the store's ``trajectories`` table
    seconds: float
    levels: dict[str, float]  # the curriculum's success estimate per level after this rehearsal
    scaling: dict[str, float] = field(default_factory=dict)  # episodes/s by simulator count, when measured

    @property
    def episodes(self) -> int:
        return len(self.records)

    @property
    def success_rate(self) -> float:
        return len(self.kept) / len(self.records) if self.records else 0.0


class Dreamer:
    """Rehearses with the policy served by ``engine`` (tagged ``version``) and keeps verified successes.

    Built from its parts (``Dreamer.start`` builds them from a model directory).  It owns the pool and,
    unless the engine was lent to it (``owns_engine=False``), the engine: ``shutdown`` stops what it owns.
    Not thread-safe: one rehearsal at a time."""

    def __init__(self, engine, store, proposer, pool, *, version: int, family,
                 name: str | None = None, heldout_items: int = EVAL_ITEMS, owns_engine: bool = True):
        self.engine, self.store, self.proposer, self.pool = engine, store, proposer, pool
        self.owns_engine = owns_engine
        self.family = family  # a simulators.world.DreamFamily
        self.skill = family.skill
        self.name = name or f"dream-{uuid.uuid4().hex[:8]}"
        self.heldout_items = heldout_items  # held-out tasks the proposer excludes
        self.simulators = pool.size  # the pool's size outside a scaling measurement
        self._version = int(version)
        self._rounds: set[int] = set()
        self._closed = False
        self.simulator: Simulator | None = None

    @classmethod
    def start(cls, model_dir: str | Path, version: int, store, *, family,
              budgets: Sequence[int] = BUDGETS, simulators: int = 1, worker_batch: int = WORKER_BATCH,
              eval_items: int = EVAL_ITEMS, seed: int = 0, name: str | None = None, exclude: Iterable[str] = (),
              ready_timeout: float = READY_TIMEOUT_S, engine=None) -> "Dreamer":
        """A rollout engine on the HF model directory ``model_dir`` tagged ``version``, a proposer of
        ``family``'s tasks (a ``simulators.world.DreamFamily``; never the first ``eval_items`` held-out tasks, nor a prompt of ``exclude``: what a
        gate will score) and a pool of ``simulators`` workers writing to ``store``.  Needs Ray initialised,
        with ``simulator`` resources for the workers.

        ``engine``: a running rollout engine actor to borrow instead of starting one (a start took 14 s on
        this machine alone, 40 to 60 s beside serving; a reload 0.04 s).  It is reloaded on ``model_dir`` as
        ``version``, and ``shutdown`` leaves it running."""
        import ray

        from simulators.proposer import TaskProposer
        from simulators.rollout import engine_actor, wait_ready
        from simulators.workers import SimulatorPool

        proposer = TaskProposer(family.source, budgets, seed=seed,
                                exclude=[*family.heldout_prompts(eval_items), *exclude])
        name = name or f"dream-{uuid.uuid4().hex[:8]}"
        owns = engine is None
        engine = (engine_actor(model_dir, version=version, seed=seed, max_model_len=context_of([family]))
                  if owns else engine)
        pool = None
        try:
            wait_ready(engine, timeout=ready_timeout)
            pool = SimulatorPool(engine, store, size=simulators, batch=worker_batch, name=name)
            try:  # workers need the ``simulator`` resource: a cluster without it must not hang the caller
                ray.get([w.progress.remote() for w in pool.workers.values()], timeout=ready_timeout)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(f"no simulator worker started within {ready_timeout:.0f} s: does the Ray "
                                   "cluster offer the 'simulator' resource (cluster.yaml's simulator nodes, or "
                                   "reverie.ray_start.start_ray)?") from None
        except BaseException:
            if pool is not None:
                pool.shutdown()
            if owns:
                stop_engine(engine)
            raise
        dreamer = cls(engine, store, proposer, pool, version=version, family=family, name=name,
                      heldout_items=eval_items, owns_engine=owns)
        if not owns:  # a borrowed engine gets these weights, whatever it served before
            try:
                dreamer.reload(model_dir, version)
            except BaseException:
                dreamer.shutdown()
                raise
        return dreamer

    @property
    def version(self) -> int:
        return self._version

    @property
    def simulated(self) -> bool:
        return self.simulator is not None

    def simulate(self, simulator: "Simulator") -> None:
        """Later rehearsals play in ``simulator``; its successes are recorded as simulated, naming it."""
        self.pool.configure(simulator.env_options())
        self.simulator = simulator

    def use_real(self) -> None:
        """Later rehearsals play in the real environment."""
        self.simulator = None

    def add_experience(self, asks: Iterable[str]) -> int:
        """Recorded user asks seed the proposer (those that parse as tasks of the skill); how many were new."""
        return self.proposer.add_experience(asks)

    def rehearse(self, episodes: int, round: int, *, scaling: bool = False, temperature: float = 1.0,
                 on_done: Callable[[list[dict]], None] | None = None) -> RehearsalReport:
        """Play ``episodes`` newly proposed tasks once, sampling the policy at ``temperature``; kept trajectories
        are in the store when it returns.

        ``round`` names the episodes (``{name}-r{round}-{i}``, fixed before dispatch, so a retried
        episode is stored once); a round is rehearsed once.  ``scaling``: the episodes are played in
        equal parts by 1, 2 (4, 8, ... up to the pool's size) simulators and again in that order, and each
        count's rate is its episodes over its time (a drift in machine load hits all alike); the pool then
        returns to its size."""
        import ray

        from simulators.workers import Episode

        if self._closed:
            raise RuntimeError("this Dreamer has been shut down")
        if episodes < 1:
            raise ValueError(f"a rehearsal needs at least one episode, got {episodes}")
        if not 0 <= temperature <= 2:
            raise ValueError(f"a rehearsal's temperature must be between 0 and 2, got {temperature}")
        if round in self._rounds:
            raise ValueError(f"round {round} was already rehearsed by {self.name}")
        served = ray.get(self.engine.version.remote(), timeout=READY_TIMEOUT_S)
        if served != self._version:
            raise RuntimeError(f"the rollout engine serves version {served}, not {self._version}: reload it "
                               "through Dreamer.reload")
        self._rounds.add(round)
        proposals = self.proposer.propose(episodes)
        sim = self.simulator
        eps = [Episode(f"{self.name}-r{round}-{i}", p.task if sim is None else sim.task(p.task), p.max_turns,
                       temperature, p.origin) for i, p in enumerate(proposals)]
        by_id = {e.id: p for e, p in zip(eps, proposals)}
        measured: dict[str, float] = {}
        t0 = time.perf_counter()
        counts = [n for n in (1, 2, 4, 8, 16) if n <= max(2, self.simulators)]
        if scaling and len(eps) >= 2 * len(counts):
            q = len(eps) // (2 * len(counts))
            order = counts + counts
            parts = [(n, eps[i * q:(i + 1) * q if i < len(order) - 1 else None]) for i, n in enumerate(order)]
            records, timed = [], {str(n): [0, 0.0] for n in counts}
            try:
                for n, part in parts:
                    self.pool.resize(n)
                    ray.get([w.progress.remote() for w in self.pool.workers.values()],
                            timeout=READY_TIMEOUT_S)  # started before the clock
                    t = time.perf_counter()
                    records += self.pool.run(part, on_done)
                    timed[str(n)][0] += len(part)
                    timed[str(n)][1] += time.perf_counter() - t
            finally:
                self.pool.resize(self.simulators)
            measured = {n: count / secs for n, (count, secs) in timed.items()}
        else:
            records = self.pool.run(eps, on_done)
        seconds = time.perf_counter() - t0
        curriculum = self.proposer.curriculum
        curriculum.forget(0.25)  # older rounds say less about the current policy
        self.proposer.update((by_id[r["id"]], r["success"]) for r in records)
        levels = {lv: _three_places(curriculum.rate(lv)) for lv in curriculum.levels}
        kept = [r for r in records if r["success"]]
        return RehearsalReport(round, self._version, records, kept, seconds, levels, measured)

    def record(self, episodes: int, max_turns: int = max(BUDGETS)) -> list[dict]:
        """The policy plays ``episodes`` newly proposed tasks in the real environment at temperature 1, as a
        user's agent would; each turn is written to the store's ``interactions`` table as the request that
        agent sent (the conversation so far and the reply; the last one carries the episode's reward, as
        feedback would).  Nothing is kept as a trajectory.  The episodes' records."""
        import msgpack

        from simulators.success import call
        from simulators.workers import Episode

        eps = [Episode(f"{self.name}-rec-{i}", p.task, max_turns, 1.0, p.origin)
               for i, p in enumerate(self.proposer.propose(episodes))]
        records = self.pool.run(eps, keep=False)
        rows = []
        for r in records:
            turns = [i for i, m in enumerate(r["messages"]) if m["role"] == "assistant"]
            for n, i in enumerate(turns):
                row = {"id": f"{r['id']}-t{n}", "created": r["started"], "kind": "chat", "model": "reverie",
                       "version": r["policy_version"], "messages": r["messages"][:i],
                       "completion": r["messages"][i]["content"], "finish_reason": "stop"}
                if n == len(turns) - 1:
                    row["reward"] = r["reward"]
                rows.append(msgpack.packb(row, use_bin_type=True))
        if rows:
            call(self.store.append, "interactions", rows)
            call(self.store.flush)
        return records

    def agreement(self, records: Sequence[dict], n: int, seed: int = 0, tries: int = AGREEMENT_TRIES) -> dict:
        """Replay up to ``n`` dreamed successes of ``records`` in the real environment: every action but the
        last as dreamed, then the policy's own last action (temperature 1, the episode ending there), ``tries``
        times.  A dreamed success agrees with reality when one try succeeds: the dreamed path is open for
        real, whatever the policy's own reliability at the last step (its observations differ from the
        simulator's: no simulator knows a task's hidden values).  ``{"agreement": share that agree (None when
        there was nothing to replay), "replayed": how many dreamed successes}``."""
        import random as _random

        from simulators.env import Task
        from simulators.workers import Episode

        dreamed = [r for r in records if r["success"] and r.get("simulated")]
        sample = _random.Random(f"agreement/{seed}").sample(dreamed, min(n, len(dreamed)))
        if not sample:
            return {"agreement": None, "replayed": 0}
        real_env = self.family.source.env
        eps = []
        for r in sample:
            t = Task.from_dict(r["task"])
            actions = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
            eps += [Episode(f"{r['id']}-real-{k}", Task(real_env, t.prompt, t.spec, t.family), len(actions), 1.0,
                            "agreement", tuple(actions[:-1])) for k in range(tries)]
        replayed = self.pool.run(eps, keep=False)
        agree = sum(any(r["success"] for r in replayed[i * tries:(i + 1) * tries]) for i in range(len(sample)))
        return {"agreement": agree / len(sample), "replayed": len(sample)}

    def check(self, rehearsal: RehearsalReport, samples: int, min_agreement: float,
              seed: int = 0) -> tuple[dict, dict | None]:
        """The agreement check after a rehearsal in the simulator: its dreamed successes replayed for real
        (:meth:`agreement`); below ``min_agreement`` the simulator is switched off (later rehearsals are
        real) and the returned switch-off says so.  ``(agreement, switch-off or None)``."""
        agreement = self.agreement(rehearsal.records, samples, seed=seed)
        if agreement["agreement"] is None or agreement["agreement"] >= min_agreement:
            return agreement, None
        self.use_real()
        return agreement, {"family": self.family.source.family, "agreement": agreement["agreement"],
                           "min_agreement": min_agreement}

    def verifier_check(self, n: int = EVAL_ITEMS, max_turns: int = max(BUDGETS)) -> dict:
        """The family's verifier against the real one on ``n`` held-out tasks the policy plays in the real
        environment at temperature 1 (nothing kept): ``{"accepts_right", "rejects_wrong", "right", "wrong"}``
        (a share is None when there was no such episode)."""
        from simulators.workers import Episode

        eps = [Episode(f"{self.name}-check-{i}", task, max_turns, 1.0, "held-out")
               for i, task in enumerate(self.family.heldout_tasks(n))]
        records = [r for r in self.pool.run(eps, keep=False) if r["family_verdict"] is not None]
        right = [r["family_verdict"] for r in records if r["success"]]
        wrong = [not r["family_verdict"] for r in records if not r["success"]]
        return {"accepts_right": sum(right) / len(right) if right else None,
                "rejects_wrong": sum(wrong) / len(wrong) if wrong else None,
                "right": len(right), "wrong": len(wrong)}

    def heldout_success(self, n: int = EVAL_ITEMS) -> float:
        """Greedy success on the first ``n`` held-out tasks, played in the real environment at the
        evaluation turn budget and judged by its verifier (the world's own scorer)."""
        import ray

        from simulators.rollout import Sampling

        if n > self.heldout_items:
            raise ValueError(f"only the first {self.heldout_items} held-out tasks are kept out of rehearsal, "
                             f"not {n}")

        def generate(prompts):
            return ray.get(self.engine.generate.remote([list(p) for p in prompts], Sampling(temperature=0.0)))

        return self.family.success(n, generate)

    def reload(self, model_dir: str | Path, version: int) -> None:
        """The rollout engine installs the weights of the HF model directory ``model_dir`` in place; later
        trajectories are tagged ``version``."""
        import ray

        served = ray.get(self.engine.reload.remote(str(model_dir), int(version)), timeout=RELOAD_TIMEOUT_S)
        self._version = int(served)

    def shutdown(self) -> None:
        """Stop the pool's workers and the rollout engine, unless it was lent (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.pool.shutdown()
        finally:
            if self.owns_engine:
                stop_engine(self.engine)


@dataclass(frozen=True)
class Simulator:
    """A model-simulated environment to dream in (``simulators/world_model.py`` builds one): the rollout
    engine that writes its observations, the recorded transitions it is grounded in, and its label."""
    engine: object  # a rollout engine actor on the simulator's weights
    transitions: tuple  # of simulators.model_env.Transition
    kind: str  # retrieval | trained | both
    label: str  # kind, weights hash and number of transitions: named by every trajectory played in it
    k: int = 3
    judge: str = "family"  # what decides a dreamed success (simulators.model_env.JUDGES)

    def task(self, task):
        """``task`` played in this simulator (same prompt, family and hidden data, which it never reads)."""
        from simulators.env import Task
        from simulators.model_env import ENV_NAME

        return Task(ENV_NAME, task.prompt, task.spec, task.family)

    def env_options(self) -> dict[str, dict]:
        from simulators.model_env import ENV_NAME, engine_predictor

        return {ENV_NAME: {"transitions": list(self.transitions),
                           "predict": engine_predictor(self.engine, temperature=1.0),  # the world's uncertainty
                           "k": self.k, "examples": self.kind != "trained", "simulator": self.label,
                           "judge": self.judge}}


def _three_places(x: float) -> float:
    return round(x, 3)  # (``rehearse``'s ``round`` argument hides the builtin there)


def stop_engine(engine) -> None:
    """Shut the engine's vLLM core down (bounded), then end its actor so its CPU is free again."""
    import ray

    try:
        ray.get(engine.shutdown.remote(), timeout=120)
    except Exception:  # a dead or hung engine is killed all the same
        pass
    ray.kill(engine)
