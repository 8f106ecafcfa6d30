"""Supervised pretraining of a causal LM on chat conversations (CPU or GPU).

Loss counts only assistant tokens.  Batches are formed from pools sorted by
length, so little compute goes to padding.  Deterministic for a seed.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from learner.tokenizer import Encoder


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    pool_batches: int = 32  # batches formed together from one length-sorted pool


def _batches(encoder: Encoder, stream: Iterator[list[dict]], cfg: PretrainConfig) -> Iterator[list[tuple[list[int], list[int]]]]:
    rng = random.Random(cfg.seed)
    while True:
        pool = [encoder.encode(next(stream)) for _ in range(cfg.batch_size * cfg.pool_batches)]
        pool.sort(key=lambda x: len(x[0]))
        chunks = [pool[i : i + cfg.batch_size] for i in range(0, len(pool), cfg.batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 off
    the trained mask) of (ids, mask) pairs; an empty mask trains nothing."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(batch):
        n = len(ids)
        t = torch.tensor(ids)
        input_ids[i, :n] = t
        attention[i, :n] = 1
        if mask:
            labels[i, :n] = torch.where(torch.tensor(mask, dtype=torch.bool), t, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, encoder: Encoder, stream: Iterator[list[dict]], cfg: PretrainConfig, progress: bool = True,
             on_step: Callable[[int], None] | None = None) -> dict:
    """Train ``model`` in place on the device it lives on; ``on_step(n)`` is
    called after every n-th step (1-based), e.g. to evaluate along the way."""
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    pad_id = encoder.tok.pad_token_id
    batches = _batches(encoder, stream, cfg)
    tokens, start, ema = 0, time.perf_counter(), None
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = {k: v.to(device) for k, v in collate(next(batches), pad_id).items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int(batch["attention_mask"].sum())
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        if on_step is not None:
            on_step(step + 1)
    model.eval()
    seconds = time.perf_counter() - start
    return {"steps": cfg.steps, "final_loss": ema, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}
