"""The learner: OPSD or the SFT baseline, with the same optimiser, schedule,
steps and data for both, crash-safe checkpoints and versioned exports.

:class:`Learner` holds the student, its optimiser and schedule, the teacher
state, a sampler and a scorer, and takes one batch of lessons per
:meth:`Learner.step`.  :func:`learn` is the loop: resume from the newest
checkpoint, skip the batches already learnt from, step, save every
``checkpoint_every`` updates and hand each saved version on.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from learner.checkpoint import (VersionCounter, assert_finite_update, latest_checkpoint, load_checkpoint,
                                save_checkpoint)
from learner import lora
from learner.config import METHODS, SFT_TARGETS, LearnConfig  # noqa: F401  (re-exported: the learner's settings)
from learner.distill import Lesson, TorchSampler, opsd_loss, sample, sft_loss
from learner.scoring import TorchScorer
from learner.teacher_state import TeacherConfig, TeacherState
from learner.tokenizer import Encoder

VERSIONS_FILE = "versions"

# A saved version: (checkpoint directory, version id).
OnVersion = Callable[[Path, int], None]


class Learner:
    """One student, its optimiser and schedule, its teacher state, sampler and scorer.  With
    ``cfg.lora_rank`` the student gets LoRA adapters in place (``learner/lora.py``) and only they learn."""

    def __init__(self, student, encoder: Encoder, cfg: LearnConfig, teacher: TeacherState | None = None,
                 sampler=None, scorer=None):
        if cfg.method not in METHODS:
            raise ValueError(f"unknown method {cfg.method!r}; methods are: {', '.join(METHODS)}")
        if cfg.method == "opsd" and teacher is None and scorer is None:
            raise ValueError("OPSD needs a teacher state or a scorer")
        if cfg.sft_targets not in SFT_TARGETS:
            raise ValueError(f"unknown SFT targets {cfg.sft_targets!r}; targets are: {', '.join(SFT_TARGETS)}")
        if cfg.method == "sft" and cfg.sft_targets == "teacher" and teacher is None:
            raise ValueError("SFT on the teacher state's replies needs a teacher state")
        lora.check(cfg.lora_rank, cfg.lora_alpha)
        if cfg.lora_rank and teacher is not None and teacher.cfg.kind in ("lagged", "ema"):
            raise ValueError(f"a {teacher.cfg.kind} teacher copies the student's weights, which LoRA leaves as "
                             "they were: use a frozen teacher with LoRA")
        self.student, self.encoder, self.cfg, self.teacher = student, encoder, cfg, teacher
        self.sampler = sampler or TorchSampler(student, encoder)
        self.scorer = scorer or (TorchScorer(teacher.model, encoder) if teacher is not None else None)
        self.base = None  # the weights learning started from, for the KL to the base policy
        if cfg.method == "opsd" and cfg.base_kl:
            frozen = teacher is not None and teacher.cfg.kind == "frozen"  # the frozen teacher is the base already
            self.base = TorchScorer(teacher.model if frozen else _frozen_copy(student), encoder)
        # what learns: every weight, or only the adapters (put in after every copy of the base above)
        self.params = lora.add_adapters(student, cfg.lora_rank, cfg.lora_alpha) if cfg.lora_rank else None
        self.opt = torch.optim.AdamW(self.params or student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(cfg.warmup, 0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.updates = 0

    def step(self, batch: list[Lesson]) -> dict:
        """One update on ``batch``; raises FloatingPointError (and changes nothing) when not finite."""
        self.student.train().requires_grad_(self.params is None)
        for p in self.params or ():
            p.requires_grad_(True)
        if self.cfg.method == "opsd":
            loss, info = opsd_loss(self.student, self.sampler, self.scorer, self.encoder, batch, self.cfg.loss,
                                   self.cfg.topk, clip_max=self.cfg.clip_max,
                                   seed=self.cfg.seed * 1_000_003 + self.updates,
                                   teacher_temperature=self.cfg.teacher_temperature, samples=self.cfg.samples,
                                   cut_below=self.cfg.cut_below, base=self.base, base_kl=self.cfg.base_kl,
                                   skip_below=self.cfg.skip_below, along_reference=self.cfg.along_reference)
        elif self.cfg.sft_targets == "teacher":  # the teacher state's own replies, sampled anew each step
            replies = sample(self.teacher.model, self.encoder, [l.teacher for l in batch],
                             temperature=self.cfg.teacher_temperature)
            loss, info = sft_loss(self.student, self.encoder, batch, replies)
        else:
            loss, info = sft_loss(self.student, self.encoder, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        assert_finite_update(loss, self.student)  # a non-finite step never becomes a version
        norm = torch.nn.utils.clip_grad_norm_(self.params or self.student.parameters(), 1.0)
        if float(norm) > 0:  # nothing to learn (a dead zone covering every token): Adam's momentum must not move the weights
            self.opt.step()
        self.sched.step()
        self.updates += 1
        self.student.eval()
        if self.teacher is not None and self.teacher.after_update(self.student, self.updates):
            sync = getattr(self.scorer, "sync", None)
            if sync is not None:
                sync(self.teacher.model)
        self.sampler.sync(self.student)  # the next samples come from the new weights
        return {"loss": loss.item(), "tokens": info["tokens"]}

    def save(self, root: Path, versions: VersionCounter, tokenizer_dir: Path | None = None) -> tuple[Path, int]:
        """A checkpoint (an HF model directory vLLM loads) with a new, never-reused version id."""
        version = versions.next()
        path = save_checkpoint(root, model=self.student, optimizer=self.opt, scheduler=self.sched,
                               step=self.updates, version=version, tokenizer_dir=tokenizer_dir,
                               tensors=self.teacher.tensors() if self.teacher is not None else None)
        return path, version

    def resume(self, root: Path) -> int:
        """Restore the newest checkpoint under ``root``, if any; return the updates already made."""
        path = latest_checkpoint(root) if root.is_dir() else None
        if path is None:
            return 0
        state = load_checkpoint(path, model=self.student, optimizer=self.opt, scheduler=self.sched)
        if self.teacher is not None and state["tensors"]:
            self.teacher.load_tensors(state["tensors"])
            sync = getattr(self.scorer, "sync", None)
            if sync is not None:
                sync(self.teacher.model)
        self.sampler.sync(self.student)
        self.updates = state["step"]
        return self.updates


def learn(student, teacher: TeacherState | None, encoder: Encoder, lessons: Iterator[list[Lesson]],
          cfg: LearnConfig, progress: bool = True, on_step: Callable[[int], None] | None = None, *,
          sampler=None, scorer=None, checkpoints: Path | None = None, tokenizer_dir: Path | None = None,
          on_version: OnVersion | None = None, versions: VersionCounter | None = None) -> dict:
    """Train ``student`` in place for ``cfg.steps`` updates in all (a resumed
    run makes only the ones left).  With ``checkpoints``, the newest checkpoint
    there is resumed and new ones are written every ``cfg.checkpoint_every``
    updates and at the end, each a new version handed to ``on_version``; its id comes from ``versions``
    (a version registry's counter), by default from a counter of the checkpoint directory's own."""
    if checkpoints is not None and cfg.lora_rank:
        raise ValueError("a LoRA learner's weights cannot be saved as versions yet: learn with lora_rank 0 "
                         "to keep checkpoints")
    torch.manual_seed(cfg.seed)
    learner = Learner(student, encoder, cfg, teacher, sampler, scorer)
    if checkpoints is None:
        versions = None
    else:
        checkpoints = Path(checkpoints)
        versions = versions or VersionCounter(checkpoints / VERSIONS_FILE)
        for _ in range(learner.resume(checkpoints)):
            next(lessons)  # the batches already learnt from: never repeated, never skipped
    tokens, start, done_before = 0, time.perf_counter(), learner.updates
    bar = tqdm(total=cfg.steps, initial=done_before, desc=cfg.method, disable=not progress, dynamic_ncols=True)
    exported = []
    while learner.updates < cfg.steps:
        stats = learner.step(next(lessons))
        tokens += stats["tokens"]
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}")
        if on_step is not None:
            on_step(learner.updates)
        last = learner.updates == cfg.steps
        if versions is not None and (last or (cfg.checkpoint_every and learner.updates % cfg.checkpoint_every == 0)):
            path, version = learner.save(checkpoints, versions, tokenizer_dir)
            exported.append({"path": str(path), "version": version})
            if on_version is not None:
                on_version(path, version)
    bar.close()
    student.eval()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in (learner.params or student.parameters()))
    return {"steps": cfg.steps, "resumed_at": done_before, "seconds": seconds, "tokens": tokens,
            "trainable_parameters": trainable,
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0, "versions": exported}


def _frozen_copy(model):
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def frozen_teacher(student, tokenizer, cfg: TeacherConfig | None = None) -> TeacherState:
    return TeacherState(cfg or TeacherConfig(), student, tokenizer)
