"""Low-rank adapters for the learner (``LearnConfig.lora_rank`` > 0): the ``peft`` library's LoRA layers put into
the student in place, so every forward pass of the student (sampling, scoring, the gate's measures) goes through
them, and only their matrices learn.

Each targeted linear layer ``W`` becomes ``W + (alpha / rank) * B @ A`` with ``A`` ``[rank, in]`` drawn at random
and ``B`` ``[out, rank]`` zero, so the student starts exactly where the base is (Hu et al., 2021).  The targets are
every linear layer of the decoder, attention and MLP alike, and never the embeddings or the head: "LoRA Without
Regret" (Schulman et al., Thinking Machines, 2025) finds attention-only adapters learn less at the same rank.
"""
from __future__ import annotations

import torch

# A Llama decoder's linear layers (SmolLM2, the tiny world's model and every catalogue model are Llamas).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check(rank: int, alpha: float) -> None:
    if rank < 0:
        raise ValueError(f"a LoRA rank must be >= 0 (0: full fine-tuning), got {rank}")
    if rank and alpha <= 0:
        raise ValueError(f"a LoRA alpha must be > 0, got {alpha}")


def add_adapters(model, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> list[torch.nn.Parameter]:
    """Put LoRA layers of ``rank`` and ``alpha`` into ``model``'s ``targets`` in place (seeded by torch's RNG);
    return the adapters' parameters, the only ones that should learn.  Raises ValueError when ``model`` has no
    such layer."""
    from peft import LoraConfig, inject_adapter_in_model

    check(rank, alpha)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not present & set(targets):
        raise ValueError(f"the model has none of the layers LoRA targets ({', '.join(targets)})")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                       target_modules=list(targets)), model)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            params.append(p)
    return params


def has_adapters(model) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


__all__ = ["TARGETS", "add_adapters", "check", "has_adapters"]
