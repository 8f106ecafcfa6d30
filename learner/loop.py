"""The learner's training loop over lessons: OPSD or the SFT baseline, same
optimiser, schedule, steps and data for both."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from learner.checkpoint import assert_finite_update
from learner.distill import Lesson, opsd_loss, sft_loss
from learner.tokenizer import ChatEncoder

METHODS = ("opsd", "sft")


@dataclass(frozen=True)
class LearnConfig:
    method: str = "opsd"
    loss: str = "fkl"
    topk: int | None = None
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    clip_max: float | None = None
    seed: int = 0


def learn(student, teacher, encoder: ChatEncoder, lessons: Iterator[list[Lesson]], cfg: LearnConfig,
          progress: bool = True, on_step: Callable[[int], None] | None = None) -> dict:
    """Train ``student`` in place; ``teacher`` is never updated (frozen state)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; methods are: {', '.join(METHODS)}")
    torch.manual_seed(cfg.seed)
    student.train().requires_grad_(True)
    if teacher is not None:
        teacher.eval()  # scored under torch.no_grad(): never updated
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tokens, start = 0, time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=cfg.method, disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = next(lessons)
        if cfg.method == "opsd":
            loss, info = opsd_loss(student, teacher, encoder, batch, cfg.loss, cfg.topk, clip_max=cfg.clip_max)
        else:
            loss, info = sft_loss(student, encoder, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert_finite_update(loss, student)  # a non-finite step never becomes a version
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        tokens += info["tokens"]
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1)
    student.eval()
    seconds = time.perf_counter() - start
    return {"steps": cfg.steps, "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}
