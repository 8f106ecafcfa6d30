"""Simulator workers (Ray actors) and the elastic pool that feeds them episodes.

A worker plays a batch of episodes in lock step: each turn it sends every
active episode's conversation to the rollout engine in one request, steps the
environments with the replies, and when all are done tags each trajectory
(task id, environment, policy version, reward, verified success, timings,
provenance), passes it through the success filter (which writes the kept ones
to the experience store) and returns them all.

The pool hands out batches to its workers: ``size`` of them on every live
node that offers the ``simulator`` resource (cluster.yaml's simulator node
type), pinned there.  It follows the cluster while it runs: a simulator node
that joins gets its workers at the next dispatch, and a node that leaves
takes its workers with it (``resize`` changes the count per node, also while
it runs: new workers are started, surplus ones retire once idle).  Where no
node offers the resource yet, ``size`` workers ask for it and wait: that
demand is what makes Ray's autoscaler add a simulator node.  A worker that
dies mid-episode, or whose node leaves, loses only its batch, which goes
back in the queue for the others; episode ids are fixed before dispatch, so
a retried episode never yields a second stored trajectory (the store ignores
a duplicate id, and the pool keeps one record per id).
"""
from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from simulators.env import Task, family_verifier, make
from simulators.rollout import Sampling
from simulators.success import SuccessFilter

WORKER_RESOURCES = {"simulator": 1}  # cluster.yaml's simulator node type offers this resource


def action_seed(episode_id: str, turn: int) -> int:
    """The sampling seed of an episode's action at ``turn``: the same on every worker, in every batch and on a
    retry, so a dream round played again from the same version and tasks plays the same."""
    return zlib.crc32(f"{episode_id}#{turn}".encode())


@dataclass(frozen=True)
class Episode:
    id: str  # fixed before dispatch: the trajectory id, the same on every retry
    task: Task
    max_turns: int
    temperature: float = 1.0
    origin: str = ""  # where the task came from (proposer provenance)
    prefix: tuple[str, ...] = ()  # actions played as given before the policy acts (a dream replayed for real)


class SimulatorWorker:
    """Runs episodes against the policy served by a rollout engine."""

    def __init__(self, engine, store, worker_id: str, env_options: dict[str, dict] | None = None):
        import ray

        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.engine = engine
        self.filter = SuccessFilter(store)
        self.worker_id = worker_id
        self.env_options = env_options or {}  # environment name -> what its factory needs (a simulator's parts)
        self._progress = {"batches": 0, "active": 0, "turns": 0}

    def progress(self) -> dict:
        return dict(self._progress, pid=os.getpid())

    def run(self, episodes: Sequence[Episode], keep: bool = True) -> list[dict]:
        """Play ``episodes`` to their end; the records, and (``keep``) the verified successes in the store."""
        import ray

        version = ray.get(self.engine.version.remote())
        started = [time.time()] * len(episodes)
        envs = [make(ep.task.env, max_turns=ep.max_turns, **self.env_options.get(ep.task.env, {}))
                for ep in episodes]
        turn = [0] * len(episodes)
        openings = [len(env.reset(ep.task)) for env, ep in zip(envs, episodes)]
        rewards, ended = [0.0] * len(episodes), [0.0] * len(episodes)
        active = list(range(len(episodes)))
        self._progress.update(active=len(active), turns=0)
        while active:
            by_temp: dict[float, list[int]] = {}
            for i in active:
                by_temp.setdefault(episodes[i].temperature, []).append(i)
            actions = {i: episodes[i].prefix[turn[i]] for i in active if turn[i] < len(episodes[i].prefix)}
            for temp, idx in by_temp.items():
                idx = [i for i in idx if i not in actions]
                if idx:
                    replies = ray.get(self.engine.generate.remote(
                        [envs[i].transcript for i in idx], Sampling(temperature=temp),
                        seeds=[action_seed(episodes[i].id, turn[i]) for i in idx]))
                    actions.update(zip(idx, replies))
            for i in [i for i, a in actions.items() if a is None]:  # the transcript outgrew the context: it ends
                del actions[i]
                ended[i] = time.time()
            if any(envs[i].simulated for i in actions):
                # simulated environments step concurrently: each waits on its model, which batches what arrives
                with ThreadPoolExecutor(max_workers=len(actions)) as pool:
                    steps = dict(zip(actions, pool.map(lambda i: envs[i].step(actions[i]), list(actions))))
            else:
                steps = {i: envs[i].step(action) for i, action in actions.items()}
            still = []
            for i, step in steps.items():
                turn[i] += 1
                if step.done:
                    rewards[i], ended[i] = step.reward, time.time()
                else:
                    still.append(i)
            active = sorted(still)
            self._progress.update(active=len(active), turns=self._progress["turns"] + 1)
        records = [self._record(ep, env, rewards[i], version, started[i], ended[i], openings[i])
                   for i, (ep, env) in enumerate(zip(episodes, envs))]
        if keep:
            self.filter.keep(records)
        self._progress.update(batches=self._progress["batches"] + 1, active=0)
        return records

    def _record(self, ep: Episode, env, reward: float, version: int, started: float, ended: float,
                opening: int = 0) -> dict:
        messages = env.transcript
        family_check = family_verifier(ep.task.family)
        return {
            "id": ep.id,
            "task_id": ep.task.id,
            "env": ep.task.env,
            "policy_version": int(version),
            "reward": float(reward),
            "success": bool(env.verify(ep.task, messages)),  # the verifier, not the reward, decides
            "simulated": bool(env.simulated),
            # the family's own verifier (from the episode's observations), where one is registered
            "family_verdict": None if family_check is None else bool(family_check(messages, ep.max_turns)),
            "messages": messages,
            "opening": opening,  # the environment's opening messages (worked examples included): not the agent's
            "started": started,
            "seconds": ended - started,
            "provenance": json.dumps({"worker": self.worker_id, "node": self.node, "origin": ep.origin, "max_turns": ep.max_turns,
                                      "temperature": ep.temperature, "family": ep.task.family,
                                      "simulator": getattr(env, "simulator", "") if env.simulated else None}),
            "task": ep.task.to_dict(),
        }


def worker_actor_class(**options):
    """The worker as a Ray actor class asking for a ``simulator`` slot; ``options``: more Ray actor options."""
    import ray

    return ray.remote(SimulatorWorker).options(num_cpus=0, resources=WORKER_RESOURCES, max_concurrency=2,
                                               max_restarts=0, **options)


def simulator_nodes() -> set[str]:
    """The ids of the live nodes that offer the ``simulator`` resource."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("simulator", 0) > 0}


class SimulatorPool:
    """An elastic pool of simulator workers fed from one queue of episodes: ``size`` workers per simulator
    node, following the nodes that join and leave."""

    def __init__(self, engine, store, size: int, batch: int = 8, name: str = "sim",
                 env_options: dict[str, dict] | None = None):
        if size < 1:
            raise ValueError(f"a pool needs at least one simulator, got {size}")
        self.engine, self.store, self.batch, self.name = engine, store, batch, name
        self._env_options = env_options or {}
        self._target = size
        self._lock = threading.Lock()
        self._next = 0
        self.workers: dict[str, object] = {}
        self.node_of: dict[str, str] = {}  # worker id -> the node it is pinned to ("" while waiting for one)
        self.busy: dict[str, object] = {}  # worker id -> ObjectRef of its running batch
        self.retried = 0  # episodes re-queued because their worker died
        self.deaths = 0
        self._reconcile()

    @property
    def size(self) -> int:
        return len(self.workers)

    def resize(self, n: int) -> None:
        """``n`` workers per simulator node: grow now, shrink as workers become idle (safe to call while
        ``run`` runs)."""
        if n < 1:
            raise ValueError(f"a pool needs at least one simulator, got {n}")
        with self._lock:
            self._target = n
        self._reconcile()

    def _start(self, node: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        wid = f"{self.name}-{self._next}"
        self._next += 1
        cls = worker_actor_class(**({} if not node else {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}))
        self.workers[wid] = cls.remote(self.engine, self.store, wid, self._env_options)
        self.node_of[wid] = node

    def _drop(self, wid: str) -> None:
        import ray

        self.node_of.pop(wid, None)
        worker = self.workers.pop(wid, None)
        if worker is not None:
            ray.kill(worker)

    def _reconcile(self) -> None:
        nodes = simulator_nodes()
        with self._lock:
            for wid in [w for w, node in self.node_of.items() if node not in nodes and w not in self.busy]:
                self._drop(wid)  # its node left (or it waited for a node and now there are some: pin anew)
            for node in sorted(nodes) or [""]:
                mine = [w for w, n in self.node_of.items() if n == node]
                for _ in range(self._target - len(mine)):
                    self._start(node)
                for wid in [w for w in mine if w not in self.busy][: max(0, len(mine) - self._target)]:
                    self._drop(wid)

    def configure(self, env_options: dict[str, dict]) -> None:
        """Workers started from now on get ``env_options`` (a simulator's parts); idle ones are replaced."""
        with self._lock:
            self._env_options = dict(env_options)
            for wid in [w for w in self.workers if w not in self.busy]:
                self._drop(wid)
        self._reconcile()

    def run(self, episodes: Sequence[Episode], on_done: Callable[[list[dict]], None] | None = None,
            keep: bool = True) -> list[dict]:
        """Play every episode once (retrying those whose worker died); one record per episode id.  ``keep``:
        verified successes are written to the store (a measurement writes nothing)."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        ids = [ep.id for ep in episodes]
        if len(set(ids)) != len(ids):
            raise ValueError("episode ids must be unique")
        queue = deque(list(episodes[i : i + self.batch]) for i in range(0, len(episodes), self.batch))
        inflight: dict[object, tuple[str, list[Episode]]] = {}
        results: dict[str, dict] = {}
        while queue or inflight:
            self._reconcile()
            for wid, worker in list(self.workers.items()):
                if not queue:
                    break
                if wid not in self.busy:
                    chunk = queue.popleft()
                    ref = worker.run.remote(chunk, keep)
                    self.busy[wid] = ref
                    inflight[ref] = (wid, chunk)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                wid, chunk = inflight.pop(ref)
                self.busy.pop(wid, None)
                try:
                    records = ray.get(ref)
                except (RayActorError, ActorDiedError, ActorUnavailableError):
                    with self._lock:  # the worker is gone (or its node): its episodes go back in the queue
                        self._drop(wid)  # an unreachable worker must not finish the batch late
                    self.deaths += 1
                    self.retried += len(chunk)
                    queue.appendleft(chunk)
                    continue
                fresh = [r for r in records if r["id"] not in results]
                for r in fresh:
                    results[r["id"]] = r
                if on_done is not None and fresh:
                    on_done(fresh)
        return [results[i] for i in ids]

    def shutdown(self) -> None:
        import ray

        with self._lock:
            for worker in self.workers.values():
                ray.kill(worker)
            self.workers.clear()
            self.node_of.clear()
            self.busy.clear()
