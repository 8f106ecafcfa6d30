"""``reverie learn --sweep``: the forgetting grid behind the learner's defaults.

Every variant (a method and its options) learns every skill at every learning
rate from every seed, without replay, from the same shipped model with the
same lessons, steps and batch size; each run is one ``reverie learn`` report
(``bench/experiments.py``) written to its own file, so a sweep that stops
resumes where it was.  At the end, ``summary.json`` holds the mean and the
spread per cell of every run in the folder (earlier grids' too) and ``forgetting.png`` plots new-skill accuracy
against retention, one point per run, a colour per variant, a marker per adapter kind.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from learner.config import LearnConfig
from reverie.errors import ReverieError
from reverie.files import atomic_write_json
from reverie.results import write_result

SKILLS = ("facts", "rule")
LEARNING_RATES = (3e-4, 1e-3)
SEEDS = (0, 1, 2)

# Every OPSD variant is spelt out in full from this (the defaults before the sweep), so that changing
# reverie's defaults never changes what a named variant means; "opsd" alone is whatever the defaults are.
_OPSD = {"method": "opsd", "loss": "fkl", "topk": None, "teacher_temperature": 1.0, "cut_below": None, "samples": 1,
         "base_kl": 0.0, "skip_below": None, "along_reference": 0.0}

# name -> the LearnConfig fields that make the variant (the rest: steps, batch size, lr, seed, no replay)
VARIANTS: dict[str, dict] = {
    "sft": {"method": "sft"},
    "opsd": {"method": "opsd"},  # reverie's defaults, whatever they are now
    "opsd-fkl-full": _OPSD,
    "opsd-fkl-t05": {**_OPSD, "teacher_temperature": 0.5},
    "opsd-fkl-t025": {**_OPSD, "teacher_temperature": 0.25},
    "opsd-fkl-cut": {**_OPSD, "cut_below": 0.1},
    "opsd-fkl-t05-cut": {**_OPSD, "teacher_temperature": 0.5, "cut_below": 0.1},
    "opsd-fkl-top20": {**_OPSD, "topk": 20},
    "opsd-rkl": {**_OPSD, "loss": "rkl"},
    "opsd-sampled": {**_OPSD, "loss": "sampled"},
    "opsd-sampled-cut": {**_OPSD, "loss": "sampled", "cut_below": 0.1},
    "opsd-fkl-basekl": {**_OPSD, "base_kl": 1.0},
    "opsd-fkl-skip": {**_OPSD, "skip_below": 0.1},
    "opsd-fkl-4samples": {**_OPSD, "samples": 4},
    "opsd-fkl-along": {**_OPSD, "along_reference": 1.0},  # a lesson with a reference scored along it (GKD's mix)
    "opsd-fkl-t05-along": {**_OPSD, "teacher_temperature": 0.5, "along_reference": 1.0},
    "opsd-fkl-t06-along": {**_OPSD, "teacher_temperature": 0.6, "along_reference": 1.0},  # the chat world's loop
    # SFT on the teacher state's own sampled replies: OPSD's target distribution, off the student's policy
    "sft-teacher": {"method": "sft", "sft_targets": "teacher", "teacher_temperature": 1.0},
    "sft-teacher-t06": {"method": "sft", "sft_targets": "teacher", "teacher_temperature": 0.6},
    # LoRA of rank 16, alpha 32, on every linear layer of the decoder (learner/lora.py)
    "sft-lora16": {"method": "sft", "lora_rank": 16, "lora_alpha": 32.0},
    "opsd-fkl-t06-along-lora16": {**_OPSD, "teacher_temperature": 0.6, "along_reference": 1.0, "lora_rank": 16,
                                  "lora_alpha": 32.0},
}
DEFAULT_VARIANTS = ("sft", "opsd", "opsd-fkl-full")
# TRL's SDFTTrainer, configured as close to reverie's OPSD as its options allow (bench/trl_sdft.py: the bench extra),
# each run in a fresh process
TRL_VARIANTS = ("trl-sdft-fkl", "trl-sdft-default")
ALL_VARIANTS = (*VARIANTS, *TRL_VARIANTS)


def run_name(variant: str, skill: str, lr: float, seed: int) -> str:
    return f"{variant}-{skill}-lr{lr:g}-seed{seed}"


def sweep(model_dir: Path, out: Path, *, variants: Sequence[str] = DEFAULT_VARIANTS, skills: Sequence[str] = SKILLS,
          lrs: Sequence[float] = LEARNING_RATES, seeds: Sequence[int] = SEEDS, steps: int = 300,
          batch_size: int = 32, progress: Callable[[str], None] = print, run=None, world: str = "tiny",
          benchmark_items: int = 100, trl=None, benchmarks: Sequence[str] | None = None) -> dict:
    """Run every (variant, skill, lr, seed) not already in ``out``; return and write the summary.  ``world``:
    whose experiment (``bench.experiments.experiment``; the chat world's with ``benchmark_items`` of each of
    ``benchmarks``, by default the gate's).
    ``run`` and ``trl`` run one of reverie's variants and one of TRL's (by default ``bench.experiments.run``, and
    ``bench.trl_sdft.run_one`` in a fresh process)."""
    from bench.experiments import run as learn_run

    run, trl = run or learn_run, trl or _trl_run
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown sweep variant {unknown[0]!r}; variants are: {', '.join(ALL_VARIANTS)}")
    if any(v in TRL_VARIANTS for v in variants) and trl is _trl_run:
        from bench.trl_sdft import trl_missing

        if why := trl_missing():
            raise ReverieError(why)
    out.mkdir(parents=True, exist_ok=True)
    base = LearnConfig(steps=steps, batch_size=batch_size, retain=0.0)
    grid = [(v, s, lr, seed) for s in skills for lr in lrs for seed in seeds for v in variants]
    for i, (variant, skill, lr, seed) in enumerate(grid, 1):
        path = out / f"{run_name(variant, skill, lr, seed)}.json"
        if path.exists():
            continue
        where = {} if world == "tiny" else {  # the base measured once per skill and benchmark set and size
            "world": world, "benchmark_items": benchmark_items,
            "base_measure": out / f"base-{skill}-{benchmark_items}-items{_named(benchmarks)}.json",
            **({"benchmarks": tuple(benchmarks)} if benchmarks else {})}
        if variant in TRL_VARIANTS:
            report = {"variant": variant, **trl(variant, skill, lr, seed, steps, batch_size, model_dir, **where)}
        else:
            cfg = replace(base, lr=lr, seed=seed, **VARIANTS[variant])
            report = {"variant": variant, **run(model_dir, cfg, skill, progress=False, **where)}
        atomic_write_json(path, report)
        progress(f"[{i}/{len(grid)}] {path.stem}: new skill {report['new_skill_acc']:.3f}, retention "
                 f"{report['retention_avg']:.3f}, KL to base {report['retention_kl']:.4f}, {report['seconds']:.0f} s")
    if world == "tiny":  # what OPSD's first step sees, on the tiny world's lessons
        atomic_write_json(out / "signal.json", signal(model_dir, skills))
    return write_summary(out)


def runs_in(out: Path) -> list[dict]:
    """Every run's report in ``out`` (whatever grid wrote it), by file name."""
    runs = []
    for path in sorted(out.glob("*.json")):
        report = json.loads(path.read_text())
        if isinstance(report, dict) and "variant" in report and "skill" in report:
            runs.append(report)
    return runs


def write_summary(out: Path) -> dict:
    """``summary.json`` and ``forgetting.png`` over every run in ``out``, not only the last grid's."""
    runs = runs_in(out)
    summary = write_result({**summarise(runs), "defaults": defaults_variant()}, out / "summary.json")
    plot(runs, out / "forgetting.png")
    return summary


def _named(benchmarks: Sequence[str] | None) -> str:
    """How a base measure's file names a benchmark set other than the gate's."""
    from simulators.chatworld.plugin import BENCHMARKS

    return "" if not benchmarks or tuple(benchmarks) == tuple(BENCHMARKS) else "-" + "-".join(benchmarks)


def _trl_run(variant: str, skill: str, lr: float, seed: int, steps: int, batch_size: int, model_dir: Path,
             **where) -> dict:
    """One TRL run in a fresh process (TRL's trainer and accelerate keep process-wide state)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from bench.trl_sdft import run_one

    if where.get("base_measure") is not None:
        where = {**where, "base_measure": str(where["base_measure"])}
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_one, variant, skill, lr, seed, steps, batch_size, str(model_dir), **where).result()


def defaults_variant() -> str | None:
    """The named variant that reverie's OPSD defaults are, if one is."""
    d = LearnConfig()
    for name, fields in VARIANTS.items():
        if name != "opsd" and fields.get("method") == "opsd" and all(getattr(d, k) == v for k, v in fields.items()):
            return name
    return None


def signal(model_dir: Path, skills: Sequence[str] = SKILLS, n: int = 64, seed: int = 5) -> dict:
    """What OPSD's first step sees, per completion position, on the base model: the forward KL
    from the teacher state to the student, the teacher's entropy and its probability of the token
    in the completion, on the correct replies and on the student's own samples (temperature 1)."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.distill import completion_logits, sample
    from learner.tokenizer import chat_encoder, load_tokenizer
    from simulators.tinyworld.experiment import lessons

    encoder = chat_encoder(load_tokenizer(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: dict = {"model": str(model_dir), "lessons": n, "seed": seed}
    for skill in skills:
        batch = next(lessons(skill, n, seed=seed))
        torch.manual_seed(seed)
        completions = {"reference": [encoder.reply_ids(l.reference) for l in batch],
                       "sampled": sample(model, encoder, [l.student for l in batch])}
        out[skill] = {}
        for name, comps in completions.items():
            with torch.no_grad():
                s, ids, mask = completion_logits(model, encoder, [l.student for l in batch], comps)
                t, _, _ = completion_logits(model, encoder, [l.teacher for l in batch], comps)
            s, t = s.double().log_softmax(-1), t.double().log_softmax(-1)
            kl = (t.exp() * (t - s)).sum(-1)
            entropy = -(t.exp() * t).sum(-1)
            p_token = t.gather(-1, ids.unsqueeze(-1)).squeeze(-1).exp()
            rows = []
            for j in range(mask.shape[1]):
                m = mask[:, j] > 0
                rows.append({"position": j, "completions": int(m.sum()), "fkl": float(kl[m, j].mean()),
                             "teacher_entropy": float(entropy[m, j].mean()),
                             "teacher_p_token": float(p_token[m, j].mean())})
            out[skill][name] = rows
    return out


def _mean_sd(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds per (variant, skill, lr, steps, batch size) of what each run
    measured."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["variant"], r["skill"], r["lr"], r["steps"], r["batch_size"]), []).append(r)
    rows = []
    for (variant, skill, lr, steps, batch), rs in sorted(cells.items(),
                                                         key=lambda kv: (kv[0][1], kv[0][2], kv[0][0], kv[0][3:])):
        rows.append({"variant": variant, "skill": skill, "lr": lr, "steps": steps, "batch_size": batch,
                     "adapter": rs[0].get("adapter", "full"), "seeds": sorted(r["seed"] for r in rs),
                     **{k: _mean_sd([r[k] for r in rs])
                        for k in ("new_skill_acc", "retention_avg", "forgetting", "retention_kl", "seconds")},
                     **{k: _mean_sd([r[k] for r in rs if k in r]) for k in _MEASURED_SOMETIMES
                        if any(k in r for r in rs)}})  # over the runs that measured it (its n says how many)
    return {"runs": len(runs), "rows": rows, "versus_sft": versus_sft(rows)}


# what only some runs measured (the chat world's paired benchmark figures, the newer runs' cost)
_MEASURED_SOMETIMES = ("retention_gold_logprob_shift_avg", "retention_choice_kl_avg",
                       "retention_norm_margin_shift_avg", "seconds_per_step", "peak_rss_bytes")
EQUAL_ACCURACY = 0.02  # new-skill accuracies this close are "equal" (issue 38's comparison)
SFT_FORGETS = 0.01  # a cell counts where SFT's benchmark average drops more than this


def versus_sft(rows: list[dict]) -> list[dict]:
    """Every variant against SFT (on references, full fine-tuning) in the same skill, lr, steps and batch size:
    whether the accuracies are equal within ``EQUAL_ACCURACY``, whether SFT forgets more than ``SFT_FORGETS``
    there, and whether the variant's mean benchmark drop is below SFT's (and, where both measured them, whether
    its mean gold log-probability shift and its acc_norm margin shift are above SFT's)."""
    key = lambda r: (r["skill"], r["lr"], r["steps"], r["batch_size"])  # noqa: E731
    sft = {key(r): r for r in rows if r["variant"] == "sft"}
    out = []
    for r in rows:
        base = sft.get(key(r))
        if base is None or r is base:
            continue
        gap = r["new_skill_acc"]["mean"] - base["new_skill_acc"]["mean"]
        row = {"variant": r["variant"], "skill": r["skill"], "lr": r["lr"], "steps": r["steps"],
               "seeds": len(r["seeds"]), "sft_seeds": len(base["seeds"]),
               "accuracy_gap": gap, "equal_accuracy": abs(gap) <= EQUAL_ACCURACY + 1e-9,
               "sft_forgets": base["forgetting"]["mean"] > SFT_FORGETS,
               "drop": r["forgetting"]["mean"], "sft_drop": base["forgetting"]["mean"],
               "forgets_less": r["forgetting"]["mean"] < base["forgetting"]["mean"]}
        for field, name in (("retention_gold_logprob_shift_avg", "shift"),
                            ("retention_norm_margin_shift_avg", "margin")):
            if field in r and field in base:  # above SFT's: the right answers lost less
                row.update({name: r[field]["mean"], f"sft_{name}": base[field]["mean"],
                            f"{name}_less": r[field]["mean"] > base[field]["mean"]})
        out.append(row)
    return out


def plot(runs: list[dict], path: Path) -> None:
    """New-skill accuracy against retention, a point per run, a colour per variant, a panel per skill and lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["skill"], r["lr"]) for r in runs})
    variants = sorted({r["variant"] for r in runs})
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    markers = {"full": "o"}  # a marker per adapter kind: full fine-tuning a circle, LoRA a triangle
    adapter = {v: next(r.get("adapter", "full") for r in runs if r["variant"] == v) for v in variants}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), dpi=110, squeeze=False)
    for ax, (skill, lr) in zip(axes[0], panels):
        for v in variants:
            pts = [(r["retention_avg"], r["new_skill_acc"]) for r in runs
                   if r["variant"] == v and r["skill"] == skill and r["lr"] == lr]
            if pts:
                ax.scatter(*zip(*pts), color=colours[v], marker=markers.get(adapter[v], "^"), label=v, s=28,
                           alpha=0.85)
        ax.set_title(f"{skill}, lr {lr:g}, no replay", fontsize=10)
        ax.set_xlabel("retention average (the world's)")
        low = min(r["new_skill_acc"] for r in runs if r["skill"] == skill and r["lr"] == lr)
        ax.set_ylim(min(0.8, low - 0.05), 1.02)  # the runs that learnt: the spread is along retention
        ax.margins(x=0.15)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("new-skill accuracy (held-out)")
    shown = {}  # one legend for every panel's variants, under them
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            shown.setdefault(label, handle)
    fig.legend(list(shown.values()), list(shown), fontsize=7, loc="lower center", ncol=min(len(shown), 4))
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(shown) - 1) // 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)
