"""``reverie learn``, composed: teach one new skill of the tiny world to a base
model by OPSD or SFT, and measure the gain and the forgetting.

The lessons and the measurement are the tiny world's
(``simulators/tinyworld/experiment.py``); the learner is ``learner/``
(in this process with ``backend="torch"``, as a Ray actor that samples through
vLLM and takes teacher scores from scorer actors with ``backend="ray"``).
``run`` returns the report ``reverie learn --json`` prints.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.cycle import _PeakRss
from learner.lora import TARGETS as LORA_TARGETS
from learner.loop import LearnConfig, learn
from learner.teacher_state import TeacherConfig, TeacherState
from learner.tokenizer import chat_encoder, load_tokenizer
from reverie.files import atomic_write_json
from simulators.chatworld.experiment import BENCHMARK_ITEMS as CHAT_BENCHMARK_ITEMS
from simulators.tinyworld.experiment import LEARNABLE, lessons, measure

__all__ = ["BACKENDS", "LEARNABLE", "WORLDS", "experiment", "run"]

BACKENDS = ("torch", "ray")


WORLDS = ("tiny", "chat")  # the worlds whose experiment ``run`` composes


def experiment(world: str, student, encoder, skill: str, benchmark_items: int = CHAT_BENCHMARK_ITEMS,
               benchmarks: Sequence[str] | None = None):
    """``(lessons(skill, batch_size, seed, retain), measure(model, encoder, skill, base=None),
    compare(before, after))`` of ``world``'s experiment: the tiny world's (``simulators/tinyworld/experiment.py``;
    it compares nothing more than its measures) or the chat world's, built from the student
    (``simulators/chatworld/experiment.py``) on ``benchmarks`` (names; by default the gate's)."""
    if world == "tiny":
        if skill not in LEARNABLE:
            raise ValueError(f"unknown skill {skill!r} for the tiny world; skills are: {', '.join(LEARNABLE)}")
        return lessons, measure, lambda before, after: {}
    if world == "chat":
        from simulators.chatworld.experiment import ChatExperiment

        built = ChatExperiment.build(student.eval(), encoder, [skill], benchmark_items, benchmark_names=benchmarks)
        return built.lessons, built.measure, built.compare
    raise ValueError(f"no learning experiment for the {world!r} world; worlds are: {', '.join(WORLDS)}")


def measured_base(path: Path | None, measure) -> dict:
    """The base model's measure: read from ``path`` when it exists, else ``measure()`` (written to ``path`` when
    given), so the runs of a sweep, reverie's and TRL's, measure the same base once."""
    if path is not None and path.exists():
        return json.loads(path.read_text())
    before = measure()
    if path is not None:
        atomic_write_json(path, before)
    return before


def run(model_dir: Path, cfg: LearnConfig, skill: str, progress: bool = True,
        teacher_cfg: TeacherConfig | None = None, checkpoints: Path | None = None,
        backend: str = "torch", scorers: int = 1, world: str = "tiny",
        benchmark_items: int = CHAT_BENCHMARK_ITEMS, base_measure: Path | None = None,
        benchmarks: Sequence[str] | None = None) -> dict:
    """Learn ``skill`` from the base model at ``model_dir`` and measure.

    ``torch``: everything in this process (student samples by HF generate,
    full-vocabulary teacher).  ``ray``: the learner is a Ray actor that samples
    through its vLLM engine and gets top-k teacher scores from ``scorers``
    teacher-scorer actors (0: a full-vocabulary torch teacher inside the learner).  ``base_measure``: a JSON
    file that holds the base model's measure (read when it exists, else written): the runs of a sweep measure
    the same base once.  ``benchmarks``: the chat world's retention benchmarks by name (default: the gate's)."""
    from transformers import AutoModelForCausalLM

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are: {', '.join(BACKENDS)}")
    if world != "tiny" and backend != "torch":
        raise ValueError(f"the {world} world's experiment runs on the torch backend only")
    if backend != "torch" and (cfg.lora_rank or cfg.sft_targets != "reference"):
        raise ValueError("LoRA and SFT on the teacher state's replies run on the torch backend only")
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_dir)
    encoder = chat_encoder(tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the learner's GPU path where there is one
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    lessons_of, measure_of, compare = experiment(world, student, encoder, skill, benchmark_items, benchmarks)
    before = measured_base(base_measure, lambda: measure_of(student.eval(), encoder, skill))
    base = copy.deepcopy(student).requires_grad_(False)
    batches = lessons_of(skill, cfg.batch_size, cfg.seed, cfg.retain)
    taught = cfg.method == "opsd" or cfg.sft_targets == "teacher"  # a teacher state is needed
    with _PeakRss() as memory:  # this process's memory while it learns (and, on ray, the actors it started)
        if backend == "torch":
            teacher = TeacherState(teacher_cfg or TeacherConfig(), student, tokenizer) if taught else None
            stats = learn(student, teacher, encoder, batches, cfg, progress, checkpoints=checkpoints,
                          tokenizer_dir=model_dir)
        else:
            student, stats = _learn_on_ray(model_dir, cfg, batches, teacher_cfg, checkpoints, scorers, progress)
    after = measure_of(student.eval(), encoder, skill, base=base)
    paired = compare(before, after)  # every choice's log-likelihood stays in the report for later pairings
    return {
        "world": world,
        **({"benchmark_items": benchmark_items} if world == "chat" else {}),
        "method": cfg.method,
        "loss": cfg.loss if cfg.method == "opsd" else "ce",
        **({"sft_targets": cfg.sft_targets} if cfg.method == "sft" else {}),
        **({"teacher_temperature": cfg.teacher_temperature} if cfg.sft_targets == "teacher" else {}),
        "adapter": f"lora-r{cfg.lora_rank}" if cfg.lora_rank else "full",
        **({"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_targets": list(LORA_TARGETS)}
           if cfg.lora_rank else {}),
        "skill": skill,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "retain": cfg.retain,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        **({"topk": cfg.topk, "teacher_temperature": cfg.teacher_temperature, "samples": cfg.samples,
            "cut_below": cfg.cut_below, "base_kl": cfg.base_kl, "skip_below": cfg.skip_below,
            "along_reference": cfg.along_reference} if cfg.method == "opsd" else {}),
        "backend": backend,
        "device": device if backend == "torch" else "ray",
        "teacher": (teacher_cfg or TeacherConfig()).kind if taught else None,
        "new_skill_acc_before": before["new_skill_acc"],
        "retention_before": before["retention"],
        **after,
        "forgetting": before["retention_avg"] - after["retention_avg"],
        **paired,
        "versions": stats["versions"],
        "seconds": stats["seconds"],
        "seconds_per_step": stats["seconds"] / max(cfg.steps - stats.get("resumed_at", 0), 1),  # this call's
        "tokens_per_second": stats["tokens_per_second"],
        **({"trainable_parameters": stats["trainable_parameters"]} if "trainable_parameters" in stats else {}),
        "peak_rss_bytes": memory.peak,
    }


def _learn_on_ray(model_dir: Path, cfg: LearnConfig, batches, teacher_cfg, checkpoints, scorers: int, progress):
    import json
    import tempfile
    import time

    import ray
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from actors.learner import start_learner
    from reverie.ray_start import start_ray

    owns_ray = start_ray(num_cpus=max(4, scorers + 2))  # a Ray this call starts, it shuts down
    try:
        root = Path(checkpoints or tempfile.mkdtemp(prefix="reverie-learn-"))
        learner = start_learner(str(model_dir), cfg, str(root), teacher_cfg, scorers, cfg.topk)
        done = ray.get(learner.updates.remote())
        for _ in range(done):
            next(batches)  # already learnt from before a restart
        versions, tokens, start = [], 0, time.perf_counter()
        for _ in tqdm(range(done, cfg.steps), initial=done, total=cfg.steps, desc=cfg.method, disable=not progress):
            stats = ray.get(learner.step.remote(next(batches)))
            tokens += stats["tokens"]
            if "saved" in stats:
                versions.append(stats["saved"])
        seconds = time.perf_counter() - start
        final = root / f"step-{cfg.steps:08d}"
        if not versions or versions[-1]["path"] != str(final):
            if final.is_dir():  # a restarted run that had already finished
                versions.append({"path": str(final), "version": json.loads((final / "state.json").read_text())["version"]})
            else:
                versions.append(ray.get(learner.save.remote()))
        ray.kill(learner)
        student = AutoModelForCausalLM.from_pretrained(versions[-1]["path"], dtype=torch.float32).eval()
        return student, {"versions": versions, "seconds": seconds, "tokens_per_second": tokens / max(seconds, 1e-9)}
    finally:
        if owns_ray:
            ray.shutdown()
