"""Simulator workers (Ray actors) playing episodes against a real vLLM rollout
engine, in an elastic pool, writing verified trajectories to the experience
store exactly once, also when a worker dies mid-episode."""
from __future__ import annotations

import json
import random
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from actors.store import ExperienceStore, read_table  # noqa: E402
from simulators.env import make  # noqa: E402
from simulators.rollout import engine_actor, wait_ready  # noqa: E402
from simulators.tinyworld.skills import new_tools_task  # noqa: E402
from simulators.tinyworld.tools_env import to_task  # noqa: E402
from reverie.ray_start import start_ray  # noqa: E402
from simulators.workers import Episode, SimulatorPool  # noqa: E402


@pytest.fixture(scope="module")
def version(shipped_model, tmp_path_factory):
    """The shipped model's id in a fresh version registry (one version space: no engine counts its own)."""
    from reverie.versions import VersionRegistry

    return VersionRegistry(tmp_path_factory.mktemp("versions")).ensure_base(shipped_model).version


@pytest.fixture(scope="module")
def cluster(shipped_model, version):
    start_ray(num_cpus=4)
    engine = engine_actor(shipped_model, version=version)
    wait_ready(engine)
    yield engine
    ray.get(engine.shutdown.remote())
    ray.shutdown()


def episodes(tag: str, n: int, seed: int, max_turns: int = 6) -> list[Episode]:
    rng = random.Random(seed)
    return [Episode(f"{tag}-{i}", to_task(new_tools_task(rng)), max_turns) for i in range(n)]


def stored(store, data_dir):
    ray.get(store.flush.remote())
    return read_table(str(data_dir), "trajectories").to_pylist()


def test_two_workers_store_each_verified_trajectory_once_when_one_is_killed_mid_episode(cluster, version, tmp_path):
    store = ExperienceStore.remote(str(tmp_path))
    pool = SimulatorPool(cluster, store, size=2, batch=8)
    eps = episodes("kill", 64, seed=1)
    out: dict = {}
    runner = threading.Thread(target=lambda: out.setdefault("records", pool.run(eps)))
    runner.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for wid, worker in list(pool.workers.items()):
            p = ray.get(worker.progress.remote())
            if p["active"] > 0 and p["turns"] >= 1:  # episodes started and not finished
                victim = wid
                ray.kill(worker, no_restart=True)
                break
    runner.join(timeout=300)
    assert victim is not None and not runner.is_alive()
    records = out["records"]
    assert pool.deaths == 1 and pool.retried >= 1
    assert pool.size == 2  # the dead worker was replaced
    assert [r["id"] for r in records] == [e.id for e in eps]  # every episode, once
    env = make("tinyworld-tools", max_turns=6)
    for r, e in zip(records, eps):
        assert r["task_id"] == e.task.id and r["env"] == "tinyworld-tools" and r["policy_version"] == version
        assert r["success"] == env.verify(e.task, r["messages"])  # the verifier's verdict
        assert r["seconds"] >= 0 and r["simulated"] is False
    rows = stored(store, tmp_path)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))  # nothing stored twice
    assert set(ids) == {r["id"] for r in records if r["success"]}  # only verified successes, all of them
    assert len(ids) > 0
    assert {json.loads(row["provenance"])["worker"] for row in rows} - {victim}
    pool.shutdown()


def test_pool_grows_and_shrinks_while_running(cluster, tmp_path):
    store = ExperienceStore.remote(str(tmp_path))
    pool = SimulatorPool(cluster, store, size=1, batch=4)
    eps = episodes("elastic", 96, seed=2)
    sizes = []

    def on_done(recs):
        done = len(sizes)
        sizes.append(pool.size)
        if done == 1:
            pool.resize(3)
        if done == 10:
            pool.resize(1)

    records = pool.run(eps, on_done=on_done)
    assert [r["id"] for r in records] == [e.id for e in eps]
    assert max(sizes) == 3 and sizes[-1] == 1
    workers = {json.loads(r["provenance"])["worker"] for r in records}
    assert len(workers) >= 3  # the grown pool did the work
    ids = [row["id"] for row in stored(store, tmp_path)]
    assert len(ids) == len(set(ids)) == sum(r["success"] for r in records)
    pool.shutdown()


def test_an_episode_plays_the_same_whatever_the_pools_size_and_batching(cluster, tmp_path):
    """A policy's sampled action depends on its episode and turn only, not on which worker played it or what
    else the rollout engine batched beside it: a dream is reproducible from its seed, whatever the timing
    (seen in a suite run: one draw of timings took a dream from 0.0 to 0.06 success, others to 0.74)."""
    store = ExperienceStore.remote(str(tmp_path))
    eps = episodes("same", 24, seed=4)
    played = []
    for size, batch in ((1, 24), (3, 2)):
        pool = SimulatorPool(cluster, store, size=size, batch=batch)
        played.append(pool.run(eps, keep=False))
        pool.shutdown()
    first, second = ([r["messages"] for r in records] for records in played)
    assert first == second
    assert len({json.dumps(m) for m in first}) > 12  # sampled at temperature 1: the episodes differ


def test_an_episode_that_outgrows_the_models_context_ends_failed_and_the_batch_plays_on(cluster, tmp_path):
    """A policy may write long replies until the transcript no longer fits the model's context (measured: a
    dream's second round stopped on a 262-token prompt, over the tiny model's 256, and the whole dream with it).
    Such an episode ends there, failed; the other episodes of the batch are played to their end as before."""
    store = ExperienceStore.remote(str(tmp_path))
    pool = SimulatorPool(cluster, store, size=1, batch=8)
    eps = episodes("long", 6, seed=3)
    long = Episode("long-x", eps[0].task, 6, prefix=("call " + " ".join(["help"] * 300),))
    records = pool.run([*eps, long])
    assert [r["id"] for r in records] == [*(e.id for e in eps), "long-x"]
    assert records[-1]["success"] is False
    assert [m["role"] for m in records[-1]["messages"]] == ["user", "assistant", "tool"]  # no reply was written
    env = make("tinyworld-tools", max_turns=6)
    for r, e in zip(records[:-1], eps):
        assert len([m for m in r["messages"] if m["role"] == "assistant"]) >= 2  # played on, not cut short
        assert r["success"] == env.verify(e.task, r["messages"])
    pool.shutdown()


def test_the_rollout_engine_takes_new_weights_in_place_and_tags_them_with_their_version(cluster, version,
                                                                                         shipped_model, tmp_path):
    """``reload`` installs other weights into the running engine through the weight-sync interface: the same
    engine (no restart), replies that follow the new weights, and the first replies again once it is back."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from simulators.rollout import Sampling

    prompts = [[{"role": "user", "content": f"copy: {w} {w}"}] for w in "a b c d e f g h".split()]

    def replies():
        return ray.get(cluster.generate.remote(prompts, Sampling(temperature=0.0)), timeout=300)

    def engine():
        return ray.get(cluster.__ray_call__.remote(lambda self: id(self._llm)), timeout=60)

    started, first = engine(), replies()
    noisy = tmp_path / "noisy"
    shutil.copytree(shipped_model, noisy)
    g = torch.Generator().manual_seed(0)
    state = load_file(noisy / "model.safetensors")
    save_file({k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous() for k, v in state.items()},
              str(noisy / "model.safetensors"))
    try:
        assert ray.get(cluster.reload.remote(str(noisy), version + 100), timeout=300) == version + 100
        changed = replies()
    finally:
        assert ray.get(cluster.reload.remote(str(shipped_model), version), timeout=300) == version
    assert changed != first and replies() == first
    assert engine() == started and ray.get(cluster.stats.remote())["version"] == version


def test_the_rollout_engine_runs_its_engine_core_in_the_actors_own_process(cluster):
    """An offline engine in an actor runs in-process (it starts in about a quarter of the time: reverie/engine.py):
    the actor's process starts no engine process of its own, and still answers."""
    from simulators.rollout import Sampling

    def own_children(self):
        import psutil

        return [p.name() for p in psutil.Process().children(recursive=True)]

    assert ray.get(cluster.__ray_call__.remote(own_children), timeout=60) == []
    assert ray.get(cluster.generate.remote([[{"role": "user", "content": "copy: a b"}]], Sampling(temperature=0.0)),
                   timeout=300)[0]
