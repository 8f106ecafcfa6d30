"""Dreams, composed: rounds of rehearse -> learn -> reload -> measure, and the
one dream step the controller runs.

``simulators/dream.py`` produces (a :class:`simulators.dream.Dreamer`
rehearses and keeps verified successes in the experience store);
``learner/`` learns; this module strings them together and reads top to
bottom.

``run(cfg, progress)`` is ``reverie dream``: each round the Dreamer rehearses
``cfg.episodes`` new tasks with the current policy; the learner distils every
kept trajectory so far by on-policy self-distillation (teacher = the frozen
base model, or each round's own policy frozen with ``teacher: parent``, with a
kept trajectory of another task, or of the state's own with
``teacher_context: same``, as privileged context; student = the conversation
alone), in ``steps`` updates a round or in proportion to what the round kept
(``passes``), mixed with retention replay on the base skills; the round's
checkpoint is registered in the version registry under ``<data_dir>/versions``
(one version space: the base model is the registry's
base id, each round's weights the id the learner drew from the registry's
counter), the rollout engine is reloaded on it, and held-out success is
measured greedily with the real verifier.  With ``cfg.env == "simulated"``
the base policy first plays ``cfg.recorded`` tasks for real (recorded in the
store as an agent's requests), a simulator is built from the store alone
(:func:`build_simulator`), and the rounds rehearse in it; after each one the
Dreamer's agreement check replays a sample of the dreamed successes for real
and switches a disagreeing simulator off (that round's dreams are not learnt
from; later rounds are real, or skipped).  The report keys are those
``reverie dream --json`` prints.

``dream_step(...)`` is one rehearsal for the controller: an engine on the
given weights tagged with the given version, the proposer seeded with what
users asked, ``episodes`` episodes once (in a simulator built from the
store's recorded episodes when ``simulated`` says so, checked the same way),
the kept trajectories in the named store actor's ``trajectories`` table,
everything it started stopped again (the controller lends it the rollout
engine it keeps across cycles: reloaded, never restarted).
"""
from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simulators.dream import BUDGETS, EVAL_ITEMS, WORKER_BATCH, stop_engine
from simulators.success import states
from simulators.world import dream_family


TEACHERS = ("base", "parent")  # whose weights the teacher state has (DreamConfig.teacher)


@dataclass(frozen=True)
class DreamConfig:
    """``reverie dream``'s settings (the command line's defaults come from here)."""
    model_dir: Path
    skill: str = "tools"  # a dream family of the world
    world: str | None = None  # the world the skill is a family of (None: the model's own, reverie.models)
    simulators: int = 2
    episodes: int = 128  # rehearsed per round
    rounds: int = 4
    budgets: tuple[int, ...] = BUDGETS  # dream turn budgets (levels of the curriculum)
    steps: int = 40  # learner updates per round
    batch_size: int = 32
    lr: float = 2e-4
    retain: float = 0.5  # share of each learner batch that replays base skills (0.25: forgetting 0.012, 0.5: 0.003)
    eval_items: int = EVAL_ITEMS
    worker_batch: int = WORKER_BATCH  # episodes a worker plays in lock step
    seed: int = 0
    data_dir: Path | None = None  # experience store (default: a fresh temporary directory)
    scaling: bool = True  # round 1 measures episodes/s with 1, 2 (4, ...: up to --simulators) simulators
    env: str = "real"  # where rehearsals play: the real environment, or a simulator built from recorded episodes
    simulator: str = "trained"  # with env "simulated": retrieval | trained | both (simulators/world_model.py)
    recorded: int = 64  # with env "simulated": episodes the base policy plays for real first (the experience)
    min_agreement: float = 0.8  # a simulator whose dreamed successes replay for real less often is switched off
    agreement_samples: int = 32  # dreamed successes replayed in the real environment per round
    fallback: str = "real"  # after a switch-off: "real" (rehearse in the real environment) or "skip"
    simulator_steps: int = 300  # fine-tuning steps of a trained simulator
    judge: str = "family"  # what decides a dreamed success: the family's verifier, or the neighbour vote
    teacher_context: str = "other"  # whose kept success the teacher sees: another task's, or the same task's
    temperature: float = 1.0  # the policy's sampling temperature in rehearsals
    # the teacher state's weights: "base" (the model the dream started from, frozen throughout) or "parent" (each
    # round, a frozen copy of the policy that rehearsed it: a student that has overtaken the base is no longer
    # pulled back to it; docs/design-notes.md, "Dreams on SmolLM2")
    teacher: str = "base"
    benchmark_items: int | None = None  # items of each retention benchmark, where the family measures on them
    # 0: every round learns ``steps`` updates; > 0: a round learns this many passes over the states of the
    # successes it kept (``batch_size`` a step, at least one step, at most ``steps``), none when it kept nothing
    passes: float = 0.0


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
    env: str = "real"  # where this round was rehearsed
    agreement: float | None = None  # its dreamed successes replayed for real (simulated rounds)
    replayed: int = 0
    updates: int = 0  # learner updates made this round


def cfg_world(cfg: DreamConfig):
    """The world of ``reverie dream``'s settings: ``cfg.world``, else the model's own."""
    from reverie.models import default_world
    from simulators.world import load_world

    return load_world(cfg.world or default_world(cfg.model_dir))


def run(cfg: DreamConfig, progress: Callable[[str, int], None] | None = None) -> dict:
    """Run the dream rounds; the report the ``dream`` command prints.  A Ray this
    call started (none was running) is shut down when it returns or fails.
    ``progress(phase, n)``: phases ``rehearse`` (n episodes done), ``distil`` (one update), ``measure``."""
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
    from learner.checkpoint import prune_checkpoints
    from learner.loop import LearnConfig, frozen_teacher, learn
    from learner.replay import mixed_batches
    from learner.tokenizer import chat_encoder, load_tokenizer
    from reverie.ray_start import start_ray
    from reverie.versions import VersionRegistry
    from simulators.dream import Dreamer, recorded_asks
    from simulators.success import lessons

    if cfg.teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {cfg.teacher!r}; teachers are: {', '.join(TEACHERS)}")
    world = cfg_world(cfg)
    family = dream_family(world, cfg.skill)
    if cfg.benchmark_items is not None and hasattr(family, "benchmark_items"):
        family.benchmark_items = cfg.benchmark_items  # the retention benchmarks' items (calc's: the chat world's)
    tell = progress or (lambda phase, n: None)
    start = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    data_dir = Path(cfg.data_dir) if cfg.data_dir is not None else Path(tempfile.mkdtemp(prefix="reverie-dream-"))
    work = data_dir / "dreams" / run_id
    asks = recorded_asks(data_dir, world.dream_families.values())

    start_ray(num_cpus=4, env_vars={"TOKENIZERS_PARALLELISM": "false"})
    store = ExperienceStore.remote(str(data_dir))
    # One version space: the base model and every round's weights get their ids from the registry.
    registry = VersionRegistry(data_dir / "versions")
    version = registry.ensure_base(cfg.model_dir).version
    dreamer = Dreamer.start(cfg.model_dir, version, store, family=family, budgets=cfg.budgets,
                            simulators=cfg.simulators, worker_batch=cfg.worker_batch, eval_items=cfg.eval_items,
                            seed=cfg.seed, name=f"dream-{run_id}")
    simulator, built = None, {}
    try:
        dreamer.add_experience(asks)
        tell("measure", 0)

        torch.manual_seed(cfg.seed)
        tokenizer = load_tokenizer(Path(cfg.model_dir))
        encoder = chat_encoder(tokenizer)
        student = AutoModelForCausalLM.from_pretrained(cfg.model_dir, dtype=torch.float32).eval()
        base = family.measure(student, encoder)
        success_before = dreamer.heldout_success(cfg.eval_items)
        teacher = frozen_teacher(student, tokenizer)  # the base state (cfg.teacher "parent": replaced each round)
        if cfg.env == "simulated":  # 0. experience, then a simulator built from it alone
            simulator, built = _simulator(cfg, dreamer, data_dir, work, tell)

        rng = random.Random(f"dream/{cfg.seed}")
        kept: list[dict] = []
        rounds: list[RoundReport] = []
        scaling: dict[str, float] = {}
        played, rehearse_seconds, switched_off, learnt = 0, 0.0, None, 0
        for k in range(1, cfg.rounds + 1):
            # 1. rehearse: new tasks played by the current policy; verified successes are stored.
            rehearsal = dreamer.rehearse(cfg.episodes, k, scaling=cfg.scaling and k == 1, temperature=cfg.temperature,
                                         on_done=lambda recs: tell("rehearse", len(recs)))
            scaling = rehearsal.scaling or scaling
            played += rehearsal.episodes
            rehearse_seconds += rehearsal.seconds
            where, agreement, fresh = ("simulated" if dreamer.simulated else "real"), {}, rehearsal.kept
            if dreamer.simulated:
                # Dreamed successes are learnt from only while enough of them replay for real.
                agreement, off = dreamer.check(rehearsal, cfg.agreement_samples, cfg.min_agreement,
                                               seed=cfg.seed * 1000 + k)
                if off is not None:
                    switched_off, fresh = dict(off, round=k, fallback=cfg.fallback), []
            kept += fresh
            report = RoundReport(k, rehearsal.episodes, len(fresh), rehearsal.seconds, 0.0,
                                 rounds[-1].success if rounds else success_before, version, rehearsal.levels, where,
                                 agreement.get("agreement"), agreement.get("replayed", 0))
            updates = round_updates(cfg, fresh) if kept else 0
            if not updates or (switched_off and cfg.fallback == "skip"):
                rounds.append(report)
                if switched_off and cfg.fallback == "skip":
                    break
                continue
            # 2. learn: distil every kept trajectory so far, with retention replay; the checkpoint's id comes
            #    from the registry's counter.  (Simulated successes are among them only after their round's
            #    agreement check passed.)
            if cfg.teacher == "parent":
                teacher = frozen_teacher(student, tokenizer)  # the policy that rehearsed this round, frozen
            replay = world.replay(cfg.seed * 1000 + k)
            retain = cfg.retain if replay else 0.0  # a world with no replay of its own (the chat world's)
            learnt += updates  # the learner resumes from the last round's checkpoint and makes the rest
            learn_cfg = LearnConfig(method="opsd", loss="fkl", steps=learnt, batch_size=cfg.batch_size,
                                    lr=cfg.lr, retain=retain, seed=cfg.seed)
            batches = mixed_batches(lessons(kept, rng, trusted_only=False, context=cfg.teacher_context),
                                    replay[0] if replay else iter(()),
                                    cfg.batch_size, retain)
            saved: list[tuple[Path, int]] = []
            stats = learn(student, teacher, encoder, batches, learn_cfg, progress=False,
                          on_step=lambda s: tell("distil", 1), checkpoints=work, tokenizer_dir=Path(cfg.model_dir),
                          on_version=lambda path, v: saved.append((path, v)), versions=registry.counter)
            path, new_version = saved[-1]
            registry.register(path, version=new_version, source="dream", parent=version, step=learn_cfg.steps)
            prune_checkpoints(work, keep=1)  # the weights are a version now; only the newest is resumed from
            version = new_version
            # 3. reload and measure on held-out tasks, in the real environment.
            dreamer.reload(path, version)
            report.learn_seconds, report.success, report.version, report.updates = stats["seconds"], \
                dreamer.heldout_success(cfg.eval_items), version, updates
            rounds.append(report)
            tell("measure", 0)
        check = dreamer.verifier_check(cfg.eval_items)
        ray.get(store.flush.remote())
    finally:
        dreamer.shutdown()
        if simulator is not None:
            stop_engine(simulator.engine)
        # every round's weights stay as a version; the learner's checkpoint (weights and optimiser state, three
        # times the weights: 10 GB over a 3-round dream on SmolLM2) only served to resume from
        prune_checkpoints(work, keep=0)
    after = family.measure(student, encoder)
    replays = [(r.agreement, r.replayed) for r in rounds if r.agreement is not None]
    return {
        "skill": cfg.skill,
        "env": cfg.env,
        "simulator": cfg.simulator if cfg.env == "simulated" else None,
        "judge": cfg.judge if cfg.env == "simulated" else None,
        "simulators": cfg.simulators,
        "episodes": played,
        "success_before": success_before,
        "success_after": rounds[-1].success if rounds else success_before,
        "retention_avg": after["retention_avg"],
        "forgetting": base["retention_avg"] - after["retention_avg"],
        # dreamed successes that replayed for real, over every round's sample (None: nothing dreamed to replay)
        "agreement": (sum(a * n for a, n in replays) / sum(n for _, n in replays)) if replays else None,
        "switched_off": switched_off,
        "verifier_accepts_right": check["accepts_right"],
        "verifier_rejects_wrong": check["rejects_wrong"],
        "verifier_episodes": {"right": check["right"], "wrong": check["wrong"]},
        "recorded": built.get("recorded", 0),
        "simulator_build": built,
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


def round_updates(cfg: DreamConfig, fresh: Sequence[dict]) -> int:
    """Learner updates a round makes after keeping ``fresh`` successes (``cfg.passes``): ``cfg.steps``, or that
    many passes over their states, ``cfg.batch_size`` a step, between 1 and ``cfg.steps``; 0 when they hold no
    state."""
    if cfg.passes <= 0:
        return cfg.steps
    n = sum(len(states(r["messages"], r.get("opening") or 0)) for r in fresh)
    return min(cfg.steps, max(1, math.ceil(cfg.passes * n / cfg.batch_size))) if n else 0


def _simulator(cfg: DreamConfig, dreamer, data_dir: Path, work: Path, tell) -> tuple:
    """Recorded experience, then the simulator built from it: the base policy plays ``cfg.recorded`` tasks
    for real (stored as the requests an agent sends) and the Dreamer rehearses in a simulator built from the
    store's recorded conversations of the skill (:func:`build_simulator`) from then on."""
    t0 = time.perf_counter()
    records = dreamer.record(cfg.recorded)
    tell("record", len(records))
    simulator, built = build_simulator(cfg.model_dir, data_dir, dreamer.family, cfg.simulator, work / "simulator",
                                       steps=cfg.simulator_steps, seed=cfg.seed, judge=cfg.judge)
    dreamer.simulate(simulator)
    built.update(recorded=len(records), recorded_success=sum(r["success"] for r in records) / len(records),
                 seconds=time.perf_counter() - t0)
    return simulator, built


class NoExperience(ValueError):
    """The store holds no recorded conversation of the skill to build a simulator from."""


def build_simulator(model_dir: str | Path, data_dir: str | Path, family, kind: str, out: Path, *,
                    steps: int, seed: int, judge: str = "family") -> tuple:
    """A simulator of ``family`` (a ``simulators.world.DreamFamily``) built from the store's recorded conversations alone (``Ray`` initialised):
    they become transitions; a copy of the model is fine-tuned on them into ``out`` (``trained``, ``both``;
    a directory left there by an earlier try is replaced); an engine on the simulator's weights writes its
    observations.  ``(Simulator, what was built)``; stop its engine with ``stop_engine``."""
    from simulators.dream import Simulator
    from simulators.model_env import transitions_from_store
    from simulators.rollout import engine_actor, wait_ready
    from simulators.world_model import SimulatorTraining, simulator_label, train_simulator

    source = family.source

    def of_skill(messages: list[dict]) -> bool:
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        return source.parse(first, random.Random(0)) is not None

    transitions = transitions_from_store(str(data_dir), keep=of_skill)
    if not any(t.observation is not None for t in transitions):
        raise NoExperience(f"no recorded {family.skill} episode with an observation to build a simulator from")
    built: dict = {"transitions": len(transitions), "episodes": sum(t.done for t in transitions)}
    weights = Path(model_dir)
    if kind != "retrieval":
        if out.exists():
            shutil.rmtree(out)
        trained = train_simulator(model_dir, transitions, out, with_examples=kind == "both",
                                  cfg=SimulatorTraining(steps=steps, seed=seed))
        weights = Path(trained["path"])
        built["training"] = trained
    engine = engine_actor(weights, version=0, seed=seed)
    try:
        wait_ready(engine)
    except BaseException:
        stop_engine(engine)
        raise
    simulator = Simulator(engine, tuple(transitions), kind, simulator_label(kind, weights, transitions), judge=judge)
    built["label"] = simulator.label
    return simulator, built


def simulated_dream(loop) -> dict | None:
    """What ``dream_step`` needs to dream in a simulator, from a ``reverie.config.LoopConfig``
    (``dream_env: simulated``); None when the loop dreams in the real environment."""
    if loop.dream_env != "simulated":
        return None
    return {"kind": loop.simulator, "steps": loop.simulator_steps, "min_agreement": loop.min_agreement,
            "fallback": loop.dream_fallback}


def dream_step(model_dir: str | Path, weights_dir_or_model_dir: str | Path, version: int, store_name: str,
               data_dir: str | Path, asks: Sequence[str], episodes: int, seed: int, simulators: int = 1, *,
               family, run_id: str | None = None, exclude: Sequence[str] = (),
               simulated: dict | None = None, engine=None, temperature: float = 1.0) -> dict:
    """One rehearsal on the weights of ``version``, for the controller (Ray must be initialised), the policy
    sampled at ``temperature``.

    ``weights_dir_or_model_dir``: an HF model directory of those weights (a learner checkpoint, a registry
    version directory, or the base ``model_dir`` itself); a directory of safetensors alone is completed with
    ``model_dir``'s config and tokenizer (links under ``<data_dir>/dreams/<run_id>/``).  The proposer is
    seeded with ``asks`` (what users asked) and never proposes a prompt of ``exclude`` (what the gate will
    score) nor one of the family's held-out tasks.  Kept trajectories go to the store actor ``store_name``
    (namespace ``reverie``), tagged ``version``, and are flushed to its ``trajectories`` table before this
    returns; the engine and the pool are stopped whatever happens, unless ``engine`` (a running rollout engine
    actor, kept by the caller across steps) was lent: it is reloaded on these weights and left running.
    ``run_id`` names the episodes
    (``dream-{run_id}-r1-{i}``): give a stable one (the cycle's) and a retried step stores nothing twice.

    ``simulated`` (``{"kind", "steps", "min_agreement", "fallback"}``, optionally ``"judge"`` and
    ``"samples"``; :func:`simulated_dream` makes one from the loop config): the rehearsal plays in a simulator
    built from the store's recorded episodes of the skill (:func:`build_simulator`); a sample of its dreamed
    successes is replayed for real, and when fewer than ``min_agreement`` of them succeed the simulator is
    switched off: its trajectories stay stored, marked, but are not returned to learn from, and the
    ``fallback`` ("real") rehearses once more in the real environment (round 2) or ("skip") not at all.
    Without recorded episodes to build from, the rehearsal is real (``"simulator": {"error": ...}``).

    Returns ``{"episodes", "kept", "success_rate", "seconds", "trajectory_ids", "env", "agreement",
    "replayed", "switched_off", "simulator"}``: ``trajectory_ids`` are those that may be learnt from."""
    import ray

    from simulators.dream import Dreamer

    store = ray.get_actor(store_name, namespace="reverie")
    run_id = run_id or f"v{int(version)}-{uuid.uuid4().hex[:8]}"
    weights = _model_directory(Path(model_dir), Path(weights_dir_or_model_dir),
                               Path(data_dir) / "dreams" / run_id / "model")
    dreamer = Dreamer.start(weights, version, store, family=family, simulators=simulators, seed=seed,
                            name=f"dream-{run_id}", exclude=exclude, engine=engine)
    simulator, built, agreement, switched_off = None, {}, {"agreement": None, "replayed": 0}, None
    try:
        dreamer.add_experience(asks)
        if simulated is not None:
            ray.get(store.flush.remote(), timeout=120)  # the recorded episodes, on disk
            try:
                simulator, built = build_simulator(model_dir, data_dir, family, simulated["kind"],
                                                   Path(data_dir) / "dreams" / run_id / "simulator",
                                                   steps=simulated.get("steps", 300), seed=seed,
                                                   judge=simulated.get("judge", "family"))
                dreamer.simulate(simulator)
            except NoExperience as e:
                built = {"error": str(e)}
        rehearsal = dreamer.rehearse(episodes, 1, temperature=temperature)
        env, kept, seconds = ("simulated" if dreamer.simulated else "real"), rehearsal.kept, rehearsal.seconds
        if dreamer.simulated:
            agreement, off = dreamer.check(rehearsal, simulated.get("samples", 32), simulated["min_agreement"],
                                           seed=seed)
            if off is not None:
                switched_off, kept = dict(off, fallback=simulated["fallback"]), []
                if simulated["fallback"] == "real":
                    rehearsal = dreamer.rehearse(episodes, 2, temperature=temperature)
                    env, kept, seconds = "real", rehearsal.kept, seconds + rehearsal.seconds
        ray.get(store.flush.remote(), timeout=120)
    finally:
        dreamer.shutdown()
        if simulator is not None:
            stop_engine(simulator.engine)
    return {
        "episodes": rehearsal.episodes,
        "kept": len(kept),
        "success_rate": len(kept) / rehearsal.episodes,
        "seconds": seconds,
        "trajectory_ids": [r["id"] for r in kept],
        "env": env,
        "agreement": agreement["agreement"],
        "replayed": agreement["replayed"],
        "switched_off": switched_off,
        "simulator": built or None,
    }


_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")


def _model_directory(model_dir: Path, weights: Path, work: Path) -> Path:
    """``weights`` when it is a whole HF model directory; otherwise a directory of links: ``weights``'
    safetensors with ``model_dir``'s config and tokenizer files."""
    if not weights.is_dir() or not sorted(weights.glob("*.safetensors")):
        raise FileNotFoundError(f"{str(weights)!r} is not a directory of *.safetensors weights")
    if (weights / "config.json").is_file() and any((weights / f).is_file() for f in
                                                   ("tokenizer.json", "tokenizer_config.json")):
        return weights
    if work.exists():  # links of a step that ran before under the same run id
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ours = {p.name for pattern in _WEIGHTS for p in weights.glob(pattern)}
    for src in model_dir.iterdir():
        if src.is_file() and src.name not in ours and not any(src.match(p) for p in _WEIGHTS):
            (work / src.name).symlink_to(src.resolve())
    for name in ours:
        (work / name).symlink_to((weights / name).resolve())
    return work
