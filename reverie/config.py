"""The one place for the whole system's settings and their defaults.

``ServeConfig`` is what ``reverie serve`` runs: serving, the learning loop
(``loop``) and the evaluation gate (``gate``).  The command
line's flags and the YAML file (``reverie serve --config reverie.yaml``) both
fill it; ``reverie/config_file.py`` validates a file against it.  Plain data,
no torch, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# What a replica does with in-flight requests during a swap (serve/replica.py): drain them (wait), pause and
# continue them on the new weights (keep), end them (abort), or load into a second engine and switch (standby).
SWAP_MODES = ("wait", "keep", "abort", "standby")
APPROVAL_MODES = ("auto", "required")
METHODS = ("opsd", "sft")  # on-policy self-distillation, and the SFT baseline
DREAM_ENVS = ("real", "simulated")  # where dreams play: the task's environment, or a simulator built from records
SIMULATORS = ("retrieval", "trained", "both")  # the model that writes a simulator's observations (world_model.py)
# The worlds the loop can be taught in (``simulators/world.py`` loads them): the tiny world of the model reverie
# ships with, the chat world (instruct models), and ``none`` (a model reverie knows nothing about); a plug-in of the
# user's is ``package.module:Class``.
WORLDS = ("tiny", "chat", "none")
WEIGHT_TRANSPORTS = ("auto", "shm", "object_store")  # reverie/weight_sync.py (its nccl slot is not built)
# How a cycle's feedback lessons and dream lessons share the new-lesson slots of each batch: taking turns, or in
# proportion to their records (the feedback lessons, relearnt ones included, against the kept trajectories).
MIXES = ("turns", "records")
DREAM_FALLBACKS = ("real", "skip")  # after a simulator is switched off: rehearse for real, or not at all


@dataclass(frozen=True)
class LoopConfig:
    """The controller's cycle: when it starts, how it learns, whether a person must approve."""
    learn: bool = True  # False (``--no-learn``): serve and record only
    approval: str = "auto"  # "required": a candidate that passes the gate waits for a person
    min_feedback: int = 2  # new feedback records with a rule or a correction that start a cycle
    period_s: float = 0.0  # also start a cycle this often when there is anything new (0: never by time)
    poll_s: float = 2.0  # how often the controller looks at the store
    method: str = "opsd"  # or "sft" (the baseline)
    steps: int = 120  # learner updates per cycle (measured: `reverie learn --skill rule --steps 100` reaches 0.985, forgetting 0.004)
    batch_size: int = 32
    lr: float = 1e-4  # measured on the tiny world: 3e-4 forgets 0.04 even with replay (docs/design-notes.md)
    retain: float = 0.5  # share of each batch replaying what the model could do before
    # Share of the replay that goes to the old skills whose prompts look most like the new lessons (the rest evenly):
    # learner/replay.py::focus_weights (docs/design-notes.md, "Replay where the interference is").
    replay_focus: float = 0.5
    # Share of the feedback lessons, at most, that teach again what the served version's lineage was taught
    # (Controller._earlier; docs/design-notes.md, "Relearning what the lineage was taught"); 0: never.
    relearn: float = 0.5
    # The teacher's log-probs at this temperature (OPSD); None: the world's (``World.teacher_temperature``: 0.5 for
    # the tiny world, chosen by its sweep; 0.6 for the chat world, chosen by the SmolLM2 cycle), else 1.0, the
    # teacher as it is (docs/design-notes.md, "Replay that unteaches", "A sharper teacher for the rule").
    teacher_temperature: float | None = None
    # Share of the lessons with a correction that OPSD scores along the correction instead of a student sample
    # (learner.distill.opsd_loss); None: the world's (``World.along_reference``), else 0, every lesson sampled.
    along_reference: float | None = None
    checkpoint_every: int = 50  # a killed controller resumes its cycle's learning from the newest of these
    # Torch threads of the learner on a CPU.  1: one, on the cores Ray gives it (under a CPU plan, the host's);
    # n > 1: n, its process let onto every core at a lower priority than serving (reverie/cpus.py::background).
    # Measured on a 2-core machine: a SmolLM2-135M cycle's 30 updates took 723 s with 1, 488 s with 2
    # (bench/results/chat-cycle/2026-12-07-*-replay-kept.json, *-learner-threads-2.json); the tiny world's model
    # is too small to split (docs/design-notes.md).
    learner_threads: int = 1
    variations: float = 0.75  # share of new-experience lessons that are proposer variations of the asked task
    mix: str = "records"  # feedback and dream lessons: "records" (in proportion to their records), "turns" (half each)
    dream: bool = True  # rehearse recorded asks of a family with a registered environment (the tiny world's tools)
    min_episodes: int = 4  # new recorded asks of such a family that start a cycle
    dream_episodes: int = 128  # rehearsed per cycle
    simulators: int = 1  # simulator workers (Ray actors) per dream
    dream_env: str = "real"  # "simulated": dream in a simulator built from the recorded episodes of the family
    simulator: str = "trained"  # with dream_env simulated: retrieval, trained or both (simulators/world_model.py)
    simulator_steps: int = 300  # fine-tuning steps of a trained simulator
    min_agreement: float = 0.8  # dreamed successes that must replay for real, or the simulator is switched off
    dream_fallback: str = "real"  # after a switch-off: dream in the real environment, or skip the dream
    seed: int = 0


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must show before it may be served."""
    min_gain: float = 0.2  # held-out new tasks: net share of the parent's failures the candidate fixes (gate.py)
    max_retention_loss: float = 0.01  # retention suite accuracy, parent (and base) minus candidate (absolute)
    # Held-out tasks of one family, and what earlier versions learnt (per family): accuracy the candidate may lose
    # against its parent (absolute).  Measured in the demo runs of 2026-12-03 (d, e, f): a family traded away lost 10 of
    # 48 (0.21); other candidates lost at most 5 of 48 on a family, and 0.05 refused one for 3 of 48 (0.0625).
    max_family_loss: float = 0.1
    learnt_items: int = 144  # tasks per family earlier versions learnt that a candidate is held to (newest first)
    retention_suite: str | None = None  # a JSONL file (docs/design-notes.md); None: the tiny world's base skills
    retention_items: int = 100  # items per retention skill
    # Items per retention benchmark of a world that has them (``World.benchmarks``; the chat world's): each a
    # fixed subset (``evals.data.subset``), scored by log-likelihood for parent, candidate and base.
    benchmark_items: int = 100
    # General prompts of a world that gives them (``World.general_prompts``; the chat world's) on which the
    # candidate's drift from the base is measured: KL(base || candidate) per token on the base's own greedy
    # replies (``evals/drift.py``), reported; ``max_drift`` (nats per token) refuses a candidate beyond it.
    drift_prompts: int = 16
    max_drift: float | None = None
    heldout_items: int = 48  # held-out new tasks per family
    samples: int = 6  # before/after answers kept per family for the review
    max_tokens: int = 32  # greedy reply length during evaluation


@dataclass(frozen=True)
class ServeConfig:
    model_dir: Path
    # The world the loop is taught in (WORLDS, or package.module:Class); None: the model's own
    # (``reverie.models.default_world``: tiny for the shipped tiny-world model, none for any other).
    world: str | None = None
    data_dir: str = "./reverie-data"
    versions_dir: Path | None = None  # default: <data_dir>/versions (must be a local path)
    replicas: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    model_id: str = "reverie"
    swap_mode: str = "wait"
    swap_timeout_s: float = 120.0
    # How a new version reaches the replicas (reverie/weight_sync.py): auto (shared memory on one node, Ray's
    # object store when a replica is on another), shm, object_store; nccl is a slot, not built.
    weight_transport: str = "auto"
    store_name: str = "reverie-experience-store"
    store_flush_seconds: float = 1.0
    seed: int = 0
    # Feedback text (rules, corrections) is shown to people as "[redacted: N characters]": the admin API, the
    # review page and ``reverie review`` (the store keeps it; the learner and the gate need it).
    redact_feedback: bool = False
    # Keep the engine's compute cores to the engine (reverie/cpus.py); only with one replica on this node.
    pin_cpus: bool = False
    extra_engine_kwargs: dict = field(default_factory=dict)
    loop: LoopConfig = field(default_factory=LoopConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def world_name(self) -> str:
        from reverie.models import default_world

        return self.world or default_world(self.model_dir)

    def cpu_plan(self):
        from reverie import cpus

        return cpus.plan() if self.pin_cpus and self.replicas == 1 else None

    def resolved_versions_dir(self) -> Path:
        if self.versions_dir is not None:
            return Path(self.versions_dir).resolve()
        if "://" in self.data_dir:
            raise ValueError("with a remote --data-dir, give a local --versions-dir")
        return (Path(self.data_dir) / "versions").resolve()

    def state_dir(self) -> Path:
        """Where the controller keeps its durable state (beside the versions)."""
        return self.resolved_versions_dir().parent / "controller"
