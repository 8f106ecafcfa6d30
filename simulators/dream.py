"""Dreams: rounds of rehearse -> keep what verifiably succeeds -> distil -> re-measure.

Each round the proposer picks new tasks (no held-out task, nothing proposed
before) at the turn budgets the curriculum favours; the simulator pool plays
them with the current policy (temperature 1) through the rollout engine; the
success filter keeps the trajectories the environment's verifier accepts and
writes them to the experience store; the learner distils them by on-policy
self-distillation (teacher = the frozen base model with a kept trajectory of
another task as privileged context; student = the conversation alone), mixed
with retention replay on the base skills; the new checkpoint is loaded into
the rollout engine and measured greedily on held-out tasks with the real
verifier at the evaluation turn budget.

No demonstration is given: the world's expert (``solve``) is never called
here; the only judge is the verifier.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

DREAM_SKILLS = ("tools",)


@dataclass(frozen=True)
class DreamConfig:
    model_dir: Path
    skill: str = "tools"
    simulators: int = 2
    episodes: int = 128  # rehearsed per round
    rounds: int = 4
    budgets: tuple[int, ...] = (3, 4, 6)  # dream turn budgets (levels of the curriculum)
    steps: int = 40  # learner updates per round
    batch_size: int = 32
    lr: float = 2e-4
    retain: float = 0.5  # share of each learner batch that replays base skills (0.25: forgetting 0.012, 0.5: 0.003)
    eval_items: int = 200
    worker_batch: int = 16  # episodes a worker plays in lock step
    seed: int = 0
    data_dir: Path | None = None  # experience store (default: a fresh temporary directory)
    scaling: bool = True  # round 1 measures episodes/s with 1 and with 2 simulators


def task_source(skill: str):
    if skill == "tools":
        from simulators.tinyworld.tasks import ToolsTaskSource

        return ToolsTaskSource()
    raise ValueError(f"unknown dream skill {skill!r}; skills are: {', '.join(DREAM_SKILLS)}")


def heldout_prompts(skill: str, n: int) -> list[str]:
    """Every prompt evaluation uses for ``skill`` (both views): never rehearsed."""
    from simulators.tinyworld.evaluate import eval_items

    return [it.task.question for view in ("student", "teacher") for it in eval_items(skill, view, n)]


def heldout_success(engine, skill: str, n: int) -> float:
    """Greedy success on held-out tasks, played in the real environment at the
    evaluation turn budget and judged by its verifier (the world's own scorer)."""
    import ray

    from simulators.rollout import Sampling
    from simulators.tinyworld.evaluate import eval_items, score

    def generate(prompts):
        return ray.get(engine.generate.remote([list(p) for p in prompts], Sampling(temperature=0.0)))

    return score(eval_items(skill, "student", n), generate)


def recorded_asks(data_dir: Path) -> list[str]:
    """What users asked (first user message of each recorded interaction)."""
    from actors.store import read_table

    asks = []
    for messages in read_table(str(data_dir), "interactions").column("messages").to_pylist():
        for m in messages or []:
            if m["role"] == "user":
                asks.append(m["content"])
                break
    return asks


@dataclass
class RoundReport:
    round: int
    episodes: int
    kept: int
    rehearse_seconds: float
    learn_seconds: float
    success: float
    version: int
    levels: dict = field(default_factory=dict)


def run(cfg: DreamConfig, progress: Callable[[str, int], None] | None = None) -> dict:
    """Run the dream rounds; the report the ``dream`` command prints.  A Ray this
    call started (none was running) is shut down when it returns or fails."""
    import ray

    owns_ray = not ray.is_initialized()
    try:
        return _run(cfg, progress)
    finally:
        if owns_ray and ray.is_initialized():
            ray.shutdown()


def _run(cfg: DreamConfig, progress: Callable[[str, int], None] | None) -> dict:
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.store import ExperienceStore
    from learner.loop import LearnConfig, frozen_teacher, learn
    from learner.replay import mixed_batches
    from learner.tokenizer import ChatEncoder, load_tokenizer
    from simulators.proposer import TaskProposer
    from simulators.rollout import engine_actor, wait_ready
    from simulators.success import lessons
    from simulators.tinyworld.experiment import measure, retention_lessons
    from simulators.workers import Episode, SimulatorPool, start_local_ray

    tell = progress or (lambda phase, n: None)
    start = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    data_dir = Path(cfg.data_dir) if cfg.data_dir is not None else Path(tempfile.mkdtemp(prefix="reverie-dream-"))
    work = data_dir / "dreams" / run_id
    source = task_source(cfg.skill)
    proposer = TaskProposer(source, cfg.budgets, seed=cfg.seed, exclude=heldout_prompts(cfg.skill, cfg.eval_items))
    proposer.add_experience(recorded_asks(data_dir))

    start_local_ray(num_cpus=4)
    store = ExperienceStore.remote(str(data_dir))
    engine = engine_actor(cfg.model_dir, version=0, seed=cfg.seed)
    wait_ready(engine)
    tell("measure", 0)

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(Path(cfg.model_dir))
    encoder = ChatEncoder(tokenizer)
    student = AutoModelForCausalLM.from_pretrained(cfg.model_dir, dtype=torch.float32).eval()
    base = measure(student, encoder, cfg.skill)
    success_before = heldout_success(engine, cfg.skill, cfg.eval_items)
    teacher = frozen_teacher(student, tokenizer)  # the base state, never updated

    pool = SimulatorPool(engine, store, size=1 if cfg.scaling else cfg.simulators, batch=cfg.worker_batch,
                         name=f"dream-{run_id}")
    rng = random.Random(f"dream/{cfg.seed}")
    kept: list[dict] = []
    rounds: list[RoundReport] = []
    scaling: dict[str, float] = {}
    played, rehearse_seconds = 0, 0.0
    version = 0
    for k in range(1, cfg.rounds + 1):
        proposals = proposer.propose(cfg.episodes)
        episodes = [Episode(f"dream-{run_id}-r{k}-{i}", p.task, p.max_turns, 1.0, p.origin)
                    for i, p in enumerate(proposals)]
        by_id = {e.id: p for e, p in zip(episodes, proposals)}
        on_done = lambda recs: tell("rehearse", len(recs))  # noqa: E731
        t0 = time.perf_counter()
        if cfg.scaling and k == 1:
            # Quarters played by 1, 2, 1, 2 simulators: each count's rate is its
            # episodes over its time, so a drift in machine load hits both alike.
            q = len(episodes) // 4
            parts = [(1, episodes[:q]), (2, episodes[q:2 * q]), (1, episodes[2 * q:3 * q]), (2, episodes[3 * q:])]
            records, timed = [], {"1": [0, 0.0], "2": [0, 0.0]}
            for n, part in parts:
                pool.resize(n)
                ray.get([w.progress.remote() for w in pool.workers.values()])  # started before the clock
                t = time.perf_counter()
                records += pool.run(part, on_done)
                timed[str(n)][0] += len(part)
                timed[str(n)][1] += time.perf_counter() - t
            scaling = {n: count / secs for n, (count, secs) in timed.items()}
            pool.resize(cfg.simulators)
        else:
            records = pool.run(episodes, on_done)
        seconds = time.perf_counter() - t0
        played += len(records)
        rehearse_seconds += seconds
        proposer.curriculum.forget(0.25)  # older rounds say less about the current policy
        proposer.update((by_id[r["id"]], r["success"]) for r in records)
        levels = {lv: round(proposer.curriculum.rate(lv), 3) for lv in proposer.curriculum.levels}
        new = [r for r in records if r["success"]]
        kept += new
        if not kept:
            rounds.append(RoundReport(k, len(records), 0, seconds, 0.0, rounds[-1].success if rounds else success_before,
                                      version, levels))
            continue
        learn_cfg = LearnConfig(method="opsd", loss="fkl", steps=cfg.steps * k, batch_size=cfg.batch_size, lr=cfg.lr,
                                retain=cfg.retain, seed=cfg.seed)
        batches = mixed_batches(lessons(kept, rng), retention_lessons(cfg.seed * 1000 + k), cfg.batch_size, cfg.retain)
        saved: list[tuple[Path, int]] = []
        stats = learn(student, teacher, encoder, batches, learn_cfg, progress=False,
                      on_step=lambda s: tell("distil", 1), checkpoints=work, tokenizer_dir=Path(cfg.model_dir),
                      on_version=lambda path, v: saved.append((path, v)))
        path, version = saved[-1]
        ray.get(engine.reload.remote(str(path), version))
        success = heldout_success(engine, cfg.skill, cfg.eval_items)
        rounds.append(RoundReport(k, len(records), len(new), seconds, stats["seconds"], success, version, levels))
        tell("measure", 0)
    pool.shutdown()
    ray.get(store.flush.remote())
    after = measure(student, encoder, cfg.skill)
    ray.get(engine.shutdown.remote())
    return {
        "skill": cfg.skill,
        "simulators": cfg.simulators,
        "episodes": played,
        "success_before": success_before,
        "success_after": rounds[-1].success if rounds else success_before,
        "retention_avg": after["retention_avg"],
        "forgetting": base["retention_avg"] - after["retention_avg"],
        "episodes_per_second": played / rehearse_seconds if rehearse_seconds > 0 else 0.0,
        "seconds": time.perf_counter() - start,
        "episodes_per_second_by_simulators": scaling,
        "scaling_ratio": scaling["2"] / scaling["1"] if "1" in scaling and "2" in scaling else None,
        "retention": after["retention"],
        "rounds": [asdict(r) for r in rounds],
        "kept": len(kept),
        "data_dir": str(data_dir),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }


def dumps(report: dict) -> str:
    return json.dumps(report)
