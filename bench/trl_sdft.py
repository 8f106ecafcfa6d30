"""``reverie bench trl``: reverie's learner beside TRL's self-distillation trainer, on the same lessons.

A user choosing a self-distillation stack today reaches for ``trl.experimental.sdft.SDFTTrainer`` (TRL
1.16, the optional ``bench`` extra; never a runtime dependency).  Every run here starts from the same
shipped model, learns the same tiny-world lessons (``simulators/tinyworld/experiment.py``: the same
batches, in the same order, no replay), for the same optimiser steps, batch size and learning rate
(AdamW, constant, gradient norm clipped at 1.0, float32), and is measured the same way (``measure``:
new-skill accuracy, the retention suite, KL to the base).  Each run is a fresh process, so its peak
resident memory is its own.

The methods (:data:`METHODS`):

- ``reverie-opsd``: reverie's OPSD with its defaults (forward KL over the full vocabulary, teacher
  log-probs at temperature 0.5, chosen by the forgetting sweep).
- ``reverie-opsd-t1``: the same at teacher temperature 1.0: the objective ``trl-sdft-fkl`` computes.
- ``reverie-sft``: the SFT baseline on the reference replies.
- ``trl-sdft-fkl``: SDFTTrainer configured as close to reverie's OPSD as its options allow:
  ``distillation_mode="full_logits"``, ``distillation_alpha=0.0`` (exactly 0 is forward
  KL(teacher||student); any other value is a JSD), the ``base`` teacher (frozen, reloaded from the model
  directory), one completion per lesson, temperature 1.
- ``trl-sdft-default``: the same with TRL's own loss defaults: the student's top-100 tokens without a tail
  bucket, renormalised, and ``distillation_alpha=0.5`` (a symmetric JSD, not the papers' forward KL).

What TRL cannot match, and how it was bridged (each checked by :func:`trl_prompts`):

- The teacher state puts the privileged context in a system turn before the question (the tiny-world
  model uses context only there: 1.0 teacher accuracy, against 0.0 appended after the question).  TRL's
  conversational prompts put the context into the last user turn, so plain-text prompts are used: the
  student's prompt and the system turn are rendered with the model's chat template, and the teacher
  template is ``"{privileged_context}{prompt}"``; the token ids equal the ones reverie's encoder makes.
- ``max_prompt_length=None``: TRL left-truncates the teacher prompt, question first.
- TRL's per-token loss is averaged per sequence and then over the batch; reverie's over every token in
  the batch.  TRL has no separate teacher temperature: its ``temperature`` scales both models and the
  sampling.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from reverie.errors import ReverieError
from reverie.results import write_result

# method -> (framework, settings); reverie's settings are LearnConfig fields, TRL's SDFTConfig fields
METHODS: dict[str, tuple[str, dict]] = {
    "reverie-opsd": ("reverie", {"method": "opsd"}),
    "reverie-opsd-t1": ("reverie", {"method": "opsd", "loss": "fkl", "topk": None, "teacher_temperature": 1.0}),
    "reverie-sft": ("reverie", {"method": "sft"}),
    "trl-sdft-fkl": ("trl", {"distillation_mode": "full_logits", "distillation_alpha": 0.0}),
    "trl-sdft-default": ("trl", {}),  # topk_logits, top 100, alpha 0.5: TRL's loss defaults
}
DEFAULT_METHODS = tuple(METHODS)
TRL_VERSION = "1.16.0"  # the bench extra's pin (pyproject.toml)
MAX_NEW_TOKENS = 32  # reverie's sampler's completion length (learner/distill.py)
TEACHER_TEMPLATE = "{privileged_context}{prompt}"  # the context's system turn, then the student's prompt


def trl_missing() -> str | None:
    """None when TRL's SDFTTrainer can be imported, else one line saying how to get it."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # its import warns that the API is experimental
    try:
        import trl  # noqa: F401
        from trl.experimental.sdft import SDFTTrainer  # noqa: F401
    except ImportError:
        return "TRL is not installed: it is the optional bench extra (pip install -e '.[bench]', or make setup)"
    return None


def render(encoder, messages) -> str:
    """The chat-template text of ``messages`` (no generation prompt), as the tokenizer would read it."""
    return "".join(f"<|{m['role']}|> {m['content']}<|end|>" for m in messages)


def trl_prompts(encoder, lesson) -> dict:
    """One TRL dataset row for ``lesson``: the student's prompt and the privileged context as plain text,
    such that :data:`TEACHER_TEMPLATE` filled with them is the teacher state's prompt, token for token (checked
    here).  On a chat template that writes a default system turn when a chat has none (SmolLM2's), the student's
    prompt carries that turn and TRL's teacher prompt can only be the context followed by the whole student
    prompt: the context's turns, then the default system turn, then the question (checked here too), where
    reverie's teacher state has no default turn.  No template of TRL's can drop it (it must contain the whole
    ``{prompt}``)."""
    from learner.tokenizer import ChatEncoder

    student = list(lesson.student)
    teacher = list(lesson.teacher)
    if teacher[-len(student):] != student:
        raise ValueError("the teacher state must be the student's prompt with context before it")
    context_messages = teacher[: len(teacher) - len(student)]
    tok = encoder.tok
    if isinstance(encoder, ChatEncoder):  # the tiny world's tags
        prompt = render(encoder, student) + "<|assistant|>"
        context = render(encoder, context_messages)
        context_ids = None
    else:  # the model's own chat template
        prompt = tok.apply_chat_template(student, add_generation_prompt=True, tokenize=False)
        context = tok.apply_chat_template(context_messages, tokenize=False) if context_messages else ""
        context_ids = encoder.encode(context_messages)[0] if context_messages else []
    teacher_text = TEACHER_TEMPLATE.format(privileged_context=context, prompt=prompt)
    student_ids = encoder.encode(student, add_generation_prompt=True)[0]
    teacher_ids = (encoder.encode(teacher, add_generation_prompt=True)[0] if context_ids is None
                   else context_ids + student_ids)
    for text, ids in ((prompt, student_ids), (teacher_text, teacher_ids)):
        if tok(text, add_special_tokens=False)["input_ids"] != ids:
            raise ValueError(f"plain-text prompt does not tokenise as reverie's encoder does: {text!r}")
    return {"prompt": prompt, "privileged_context": context}


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_one(method: str, skill: str, lr: float, seed: int, steps: int, batch_size: int, model_dir: str,
            world: str = "tiny", benchmark_items: int = 100, base_measure: str | None = None,
            benchmarks: Sequence[str] | None = None) -> dict:
    """One run in this (fresh) process: learn ``skill`` of ``world``'s experiment (``bench.experiments``) by
    ``method``, measure, report.  ``base_measure``: a file holding the base's measure (read when there, else
    written), as the sweep's runs share it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    framework, settings = METHODS[method]
    from learner.config import LearnConfig

    cfg = replace(LearnConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, retain=0.0),
                  **(settings if framework == "reverie" else {"method": "opsd"}))
    where = {"world": world} if world == "tiny" else {
        "world": world, "benchmark_items": benchmark_items,
        "base_measure": Path(base_measure) if base_measure else None, "benchmarks": benchmarks}
    if framework == "reverie":
        from bench.experiments import run

        r = run(Path(model_dir), cfg, skill, progress=False, **where)
        report = {k: v for k, v in r.items() if k in _MEASURED or k.startswith("retention_")}
        train_seconds = r["seconds"]
    else:
        report, train_seconds = _run_trl(settings, cfg, skill, Path(model_dir), **where)
    return {"method": method, "framework": framework, "settings": settings, "skill": skill, "lr": lr,
            "seed": seed, "steps": steps, "batch_size": batch_size, "retain": 0.0, **report,
            "train_seconds": train_seconds, "seconds": train_seconds, "seconds_per_step": train_seconds / steps,
            "peak_rss_bytes": _peak_rss_bytes()}


# what a run reports of its measures (with every retention_* figure)
_MEASURED = ("world", "benchmark_items", "new_skill_acc_before", "new_skill_acc", "retention", "retention_avg",
             "forgetting")


def _run_trl(settings: dict, cfg, skill: str, model_dir: Path, world: str = "tiny", benchmark_items: int = 100,
             base_measure: Path | None = None, benchmarks: Sequence[str] | None = None) -> tuple[dict, float]:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from bench.experiments import experiment, measured_base
    from learner.tokenizer import chat_encoder, load_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_dir)
    encoder = chat_encoder(tokenizer)
    before_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lessons, measure, compare = experiment(world, before_model, encoder, skill, benchmark_items, benchmarks)
    before = measured_base(base_measure, lambda: measure(before_model, encoder, skill))
    batches = lessons(skill, cfg.batch_size, cfg.seed, cfg.retain)
    rows = [trl_prompts(encoder, lesson) for _ in range(cfg.steps) for lesson in next(batches)]
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="reverie-trl-") as tmp:
        args = SDFTConfig(
            output_dir=tmp, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=1, num_generations=1, learning_rate=cfg.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed,
            shuffle_dataset=False, max_prompt_length=None, max_completion_length=MAX_NEW_TOKENS, temperature=1.0,
            teacher_model_kind="base", teacher_prompt_template=TEACHER_TEMPLATE, bf16=False, fp16=False,
            use_cpu=not gpu, gradient_checkpointing=False,
            report_to="none", save_strategy="no", logging_steps=max(1, cfg.steps // 10), disable_tqdm=True,
            dataloader_num_workers=0, **settings)
        student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = SDFTTrainer(model=student, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its log lines: a --json command's stdout is one object
            trainer.train()
        seconds = time.perf_counter() - start
        model = trainer.model.eval()
    after = measure(model.to(next(before_model.parameters()).device), encoder, skill, base=before_model)
    paired = compare(before, after)
    return {"world": world, **({"benchmark_items": benchmark_items} if world != "tiny" else {}),
            "new_skill_acc_before": before["new_skill_acc"], "retention_before": before["retention"], **after,
            "forgetting": before["retention_avg"] - after["retention_avg"], **paired}, seconds


def run_name(method: str, skill: str, lr: float, seed: int) -> str:
    return f"{method}-{skill}-lr{lr:g}-seed{seed}"


def compare(model_dir: Path, out: Path, *, methods: Sequence[str] = DEFAULT_METHODS,
            skills: Sequence[str] = ("facts", "rule"), lrs: Sequence[float] = (1e-3,), seeds: Sequence[int] = (0,),
            steps: int = 300, batch_size: int = 32, progress: Callable[[str], None] = print) -> dict:
    """Every (method, skill, lr, seed) not already in ``out``, each in a fresh process; returns and writes
    ``summary.json`` (mean and spread per method, skill and lr)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ReverieError(f"unknown method {unknown[0]!r}; methods are: {', '.join(METHODS)}")
    if any(METHODS[m][0] == "trl" for m in methods) and (why := trl_missing()):
        raise ReverieError(why)
    out.mkdir(parents=True, exist_ok=True)
    grid = [(m, s, lr, seed) for s in skills for lr in lrs for seed in seeds for m in methods]
    ctx = get_context("spawn")
    for i, (method, skill, lr, seed) in enumerate(grid, 1):
        path = out / f"{run_name(method, skill, lr, seed)}.json"
        if path.exists():
            continue
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:  # a fresh process: its own peak memory
            report = pool.submit(run_one, method, skill, lr, seed, steps, batch_size, str(model_dir)).result()
        write_result(report, path)
        progress(f"[{i}/{len(grid)}] {path.stem}: new skill {report['new_skill_acc']:.3f}, retention "
                 f"{report['retention_avg']:.3f}, {report['seconds_per_step']:.3f} s/step, "
                 f"peak {report['peak_rss_bytes'] / 2**30:.2f} GiB")
    runs = [json.loads((out / f"{run_name(*key)}.json").read_text()) for key in grid]
    summary = summarise(runs)
    write_result(summary, out / "summary.json")
    return summary


def _stat(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


KEYS = ("new_skill_acc", "retention_avg", "forgetting", "retention_kl", "seconds_per_step", "peak_rss_bytes")


def summarise(runs: list[dict]) -> dict:
    """Mean and spread per (method, skill, lr), and each row's verdict against TRL's matched run: reverie's
    OPSD accuracy at least TRL's, forgetting at most TRL's, seconds per step at most half of TRL's."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["skill"], r["lr"], r["method"]), []).append(r)
    rows = [{"skill": s, "lr": lr, "method": m, "steps": rs[0]["steps"], "batch_size": rs[0]["batch_size"],
             "seeds": sorted(r["seed"] for r in rs), **{k: _stat([r[k] for r in rs]) for k in KEYS}}
            for (s, lr, m), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], list(METHODS).index(kv[0][2])))]
    verdicts = []
    for s, lr in sorted({(r["skill"], r["lr"]) for r in rows}):
        by = {r["method"]: r for r in rows if r["skill"] == s and r["lr"] == lr}
        ours, theirs = by.get("reverie-opsd"), by.get("trl-sdft-fkl")
        if ours and theirs:
            verdicts.append({
                "skill": s, "lr": lr,
                "accuracy_at_least_trl": ours["new_skill_acc"]["mean"] >= theirs["new_skill_acc"]["mean"] - 1e-9,
                "forgetting_at_most_trl": ours["forgetting"]["mean"] <= theirs["forgetting"]["mean"] + 1e-9,
                "step_time_ratio": ours["seconds_per_step"]["mean"] / theirs["seconds_per_step"]["mean"],
                "at_most_half_the_step_time": ours["seconds_per_step"]["mean"] <= 0.5 * theirs["seconds_per_step"]["mean"],
            })
    return {"runs": len(runs), "trl_version": TRL_VERSION, "rows": rows, "verdicts": verdicts}
