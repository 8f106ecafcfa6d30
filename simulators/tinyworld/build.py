"""Build the tiny world's base model from scratch: tokenizer, model, pretraining.

Deterministic for a seed.  The result is a Hugging Face directory (safetensors,
tokenizer with chat template) that transformers and vLLM both load; it is
written to a temporary sibling directory and renamed into place, so a failed
or interrupted build leaves nothing partial behind.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from learner.model import ModelShape, build_model
from learner.pretrain import PretrainConfig, pretrain
from learner.tokenizer import ChatEncoder, train_tokenizer
from reverie.files import settle_modes
from simulators.tinyworld import corpus
from simulators.tinyworld.evaluate import forced_report

VOCAB_SIZE = 1024
TOKENIZER_TEXTS = 20000
DEFAULT_STEPS = 7000
SHIPPED_MODEL = Path(__file__).parent / "model"


def build(out: Path, seed: int = 0, steps: int = DEFAULT_STEPS, shape: ModelShape = ModelShape(),
          progress: bool = True, eval_every: int = 0) -> dict:
    """Pretrain the base model into ``out``.  With ``eval_every`` > 0, the
    learning curve (greedy accuracy per skill, by teacher forcing) is printed
    to stderr every that many steps and kept in the build report."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(corpus.tokenizer_texts(seed + 1, TOKENIZER_TEXTS), VOCAB_SIZE)
    model = build_model(shape, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, seed)
    cfg = PretrainConfig(steps=steps, seed=seed, warmup=min(100, max(1, steps // 10)))
    encoder = ChatEncoder(tokenizer)
    curve: list[dict] = []

    def checkpoint(step: int) -> None:
        if eval_every and (step % eval_every == 0 or step == steps):
            point = {"step": step, **{k: round(v, 3) for k, v in forced_report(model, encoder).items()}}
            curve.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)

    stats = pretrain(model, encoder, corpus.conversations(seed), cfg, progress=progress, on_step=checkpoint)
    report = {
        "seed": seed,
        "shape": asdict(shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain": asdict(cfg),
        **{k: stats[k] for k in ("final_loss", "tokens", "tokens_per_second")},
        "build_seconds": time.perf_counter() - start,
        "learning_curve": curve,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)  # safetensors: the only format transformers 5 writes
        tokenizer.save_pretrained(tmp)
        (tmp / "reverie_build.json").write_text(json.dumps(report, indent=1) + "\n")
        settle_modes(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
