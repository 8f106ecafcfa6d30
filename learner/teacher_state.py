"""The teacher's weights: which model scores the student's samples.

``frozen``    the base version, never updated (the default);
``lagged``    a copy of the student refreshed every ``lag_every`` updates;
``ema``       an exponential moving average of the student (``ema_rate`` per update);
``separate``  another, typically larger model that shares the student's tokenizer.

The privileged context is what makes the teacher a teacher; these options
only choose whose weights read it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from learner.distill import check_same_tokenizer

TEACHER_KINDS = ("frozen", "lagged", "ema", "separate")


@dataclass(frozen=True)
class TeacherConfig:
    kind: str = "frozen"
    lag_every: int = 50
    ema_rate: float = 0.99
    model_dir: str | None = None  # for ``separate``

    def check(self) -> None:
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"unknown teacher {self.kind!r}; teachers are: {', '.join(TEACHER_KINDS)}")
        if self.kind == "lagged" and self.lag_every < 1:
            raise ValueError(f"a lagged teacher needs lag_every >= 1, got {self.lag_every}")
        if self.kind == "ema" and not 0.0 < self.ema_rate < 1.0:
            raise ValueError(f"an EMA teacher needs 0 < ema_rate < 1, got {self.ema_rate}")
        if self.kind == "separate" and not self.model_dir:
            raise ValueError("a separate teacher needs model_dir")


class TeacherState:
    """Owns the teacher's torch weights and updates them after each student update."""

    def __init__(self, cfg: TeacherConfig, student, student_tokenizer):
        cfg.check()
        self.cfg = cfg
        if cfg.kind == "separate":
            from transformers import AutoModelForCausalLM

            from learner.tokenizer import load_tokenizer

            check_same_tokenizer(student_tokenizer, load_tokenizer(cfg.model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model_dir, dtype=torch.float32)
        else:
            self.model = copy.deepcopy(student)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def after_update(self, student, updates: int) -> bool:
        """Apply the schedule after the ``updates``-th update; True when the weights changed."""
        if self.cfg.kind == "lagged" and updates % self.cfg.lag_every == 0:
            self.model.load_state_dict(student.state_dict())
            return True
        if self.cfg.kind == "ema":
            rate = self.cfg.ema_rate
            for t, s in zip(self.model.parameters(), student.parameters()):
                t.mul_(rate).add_(s.detach(), alpha=1.0 - rate)
            return True
        return False

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep to resume exactly (nothing for fixed teachers)."""
        if self.cfg.kind in ("lagged", "ema"):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            self.model.load_state_dict(tensors)
