"""The learner's settings: plain data, importable without torch (the command
line reads its defaults from here)."""
from __future__ import annotations

from dataclasses import dataclass

from reverie.config import METHODS  # noqa: F401  (the one list; re-exported for the learner)

SFT_TARGETS = ("reference", "teacher")


@dataclass(frozen=True)
class LearnConfig:
    method: str = "opsd"
    loss: str = "fkl"
    topk: int | None = None
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4  # measured on the tiny world: 3e-4 forgets 0.04 even with replay (docs/design-notes.md)
    warmup: int = 0  # linear warm-up steps, then constant
    weight_decay: float = 0.0
    clip_max: float | None = None
    # OPSD only: how the teacher's scores become the target (docs/design-notes.md, "Why OPSD forgets")
    teacher_temperature: float = 0.5  # the teacher's log-probs at this temperature: 0.5 chosen by the sweep (docs/design-notes.md)
    samples: int = 1  # completions sampled per lesson
    cut_below: float | None = None  # stop the loss after a token the teacher gives less than this probability
    base_kl: float = 0.0  # weight of KL(student || base) on the student's own samples
    skip_below: float | None = None  # positions whose divergence is below this many nats teach nothing
    retain: float = 0.5  # share of each batch that replays base-skill lessons (learner/replay.py)
    # OPSD only: share of the lessons with a reference (a correction) scored along that reply instead of a student
    # sample, against the same teacher state (learner.distill.opsd_loss); 0: every lesson sampled.
    along_reference: float = 0.0
    # Low-rank adapters (learner/lora.py): 0 trains every weight; > 0 trains only LoRA matrices of this rank
    # on every linear layer of the decoder, scaled by lora_alpha / lora_rank.
    lora_rank: int = 0
    lora_alpha: float = 32.0
    # SFT only: what the student imitates: "reference" (the lesson's correct reply), or "teacher" (a reply the
    # teacher state samples at teacher_temperature, drawn anew every step: OPSD's target, off the student's policy).
    sft_targets: str = "reference"
    checkpoint_every: int = 0  # 0: only at the end (when a checkpoint directory is given)
    seed: int = 0
