"""The learner as a Ray actor (on a GPU where the cluster has one).

It loads the student from a model directory, resumes from the newest
checkpoint under ``checkpoints`` if there is one, samples the student through
its own vLLM engine, gets teacher scores from a :class:`ScorerPool` of Ray
actors (or, with ``scorers=0``, from a torch forward pass of the teacher in
this process: full-vocabulary losses need that), and steps on each batch of
lessons it is given.  Every ``checkpoint_every`` updates, and on ``save()``, it
writes a checkpoint that is a new version: a model directory vLLM loads, handed
to the caller (and from there to the weight broadcaster).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch

from learner.checkpoint import VersionCounter
from learner.distill import Lesson
from learner.loop import VERSIONS_FILE, LearnConfig, Learner
from learner.teacher_state import TeacherConfig, TeacherState
from learner.tokenizer import chat_encoder, load_tokenizer


class LearnerService:
    def __init__(self, model_dir: str, cfg: LearnConfig, checkpoints: str, teacher: TeacherConfig | None = None,
                 scorers: int = 1, topk: int | None = None, workdir: str | None = None, sampler: str = "vllm",
                 weights: list[str] | None = None, threads: int = 1):
        """``sampler="torch"``: sample and score in this process (no engine to start; full-vocabulary teacher).
        ``weights``: safetensors files to start from instead of ``model_dir``'s own (a registered version).
        ``threads`` > 1 on a CPU: that many torch threads, the process let onto every core at a lower priority
        than serving (``reverie.cpus.background``; ``loop.learner_threads``)."""
        from transformers import AutoModelForCausalLM

        from learner.vllm_backend import DEFAULT_TOPK, VllmSampler

        torch.manual_seed(cfg.seed)
        self.model_dir, self.cfg, self.root = Path(model_dir), cfg, Path(checkpoints)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and threads > 1:
            from reverie.cpus import background

            background()
            torch.set_num_threads(threads)
        tokenizer = load_tokenizer(model_dir)
        self.encoder = chat_encoder(tokenizer)
        self.student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if weights:
            from serve.weights import load_state_files

            self.student.load_state_dict(load_state_files(list(weights)))
        self.student = self.student.to(device).eval()
        self.teacher = TeacherState(teacher or TeacherConfig(), self.student, tokenizer) if cfg.method == "opsd" else None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="reverie-learner-"))
        if sampler not in ("vllm", "torch"):
            raise ValueError(f"unknown sampler {sampler!r}; samplers are: vllm, torch")
        use_vllm, sampler, scorer = sampler == "vllm", None, None  # torch: the Learner's in-process defaults
        if cfg.method == "opsd" and use_vllm:
            sampler = VllmSampler(self.student, self.encoder, self.workdir, self.model_dir)
            if scorers > 0:
                from actors.teacher_scorer import ScorerPool

                scorer = ScorerPool(self.teacher.model, self.model_dir, self.workdir, scorers, topk or DEFAULT_TOPK)
        self.learner = Learner(self.student, self.encoder, cfg, self.teacher, sampler, scorer)
        self.versions = VersionCounter(self.root / VERSIONS_FILE)
        self.learner.resume(self.root)

    def updates(self) -> int:
        return self.learner.updates

    def placement(self) -> dict:
        """Where this learner computes: torch threads, niceness, the cores it may run on."""
        import os

        return {"threads": torch.get_num_threads(), "nice": os.nice(0), "cores": sorted(os.sched_getaffinity(0))}

    def step(self, batch: list[Lesson]) -> dict:
        stats = self.learner.step(batch)
        every = self.cfg.checkpoint_every
        if every and self.learner.updates % every == 0:
            stats["saved"] = self.save()
        return stats

    def save(self) -> dict:
        path, version = self.learner.save(self.root, self.versions, self.model_dir)
        return {"path": str(path), "version": version}

    def export(self, directory: str) -> str:
        """The student as it is now, alone (config, safetensors, tokenizer), in ``directory``."""
        from learner.checkpoint import export_model

        return str(export_model(self.student, Path(directory), self.model_dir))


LearnerActor = ray.remote(LearnerService)


def learner_options() -> dict:
    """Where a learner actor goes: a ``learner`` node when the cluster has that node type, and a GPU when the
    cluster has one."""
    from reverie.ray_start import placed

    return {"num_cpus": 1, "num_gpus": 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0, **placed("learner")}


def start_learner(*args, **kwargs):
    """A :class:`LearnerService` actor, on a GPU when the cluster has one."""
    return LearnerActor.options(**learner_options()).remote(*args, **kwargs)
