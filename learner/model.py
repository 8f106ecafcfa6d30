"""The Llama-architecture model reverie builds for the tiny world."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 128
    layers: int = 4
    heads: int = 4  # head size hidden/heads = 32 (vLLM-CPU does not support 16)
    intermediate: int = 384
    max_positions: int = 256


def build_model(shape: ModelShape, vocab_size: int, pad_id: int, eos_id: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,  # vLLM-CPU reloads tied embeddings wrongly
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
