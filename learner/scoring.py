"""Teacher scores of student completions, and the two ways to get them.

A scorer takes (teacher prompt, student completion) pairs and returns, for
every completion token, what the teacher state thinks of it: the full
log-distribution (``torch`` scorer, any loss), or the top-k log-probs plus the
log-prob of the sampled token (``vllm`` scorer through ``prompt_logprobs``,
losses over the top-k with a tail bucket, or the sampled-token loss).  The
learner turns either into the keyword arguments of
:func:`learner.losses.distillation_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from learner.distill import completion_logits
from learner.tokenizer import ChatEncoder

Prompt = tuple[dict, ...]


@dataclass
class TeacherScores:
    """Per completion token ``[B,T]`` (padding where a completion is shorter)."""

    sampled: torch.Tensor  # teacher log-prob of the sampled token [B,T]
    full: torch.Tensor | None = None  # [B,T,V] log-probs, full vocabulary
    topk_ids: torch.Tensor | None = None  # [B,T,K]
    topk_logprobs: torch.Tensor | None = None  # [B,T,K]

    def loss_kwargs(self, loss: str, sampled_ids: torch.Tensor, topk: int | None) -> dict:
        if loss == "sampled":
            return {"sampled_ids": sampled_ids, "teacher_sampled_logprobs": self.sampled}
        if self.full is not None and not topk:
            return {"teacher_logprobs": self.full}
        if self.full is not None:
            top = self.full.topk(topk, dim=-1)  # the choice of the top-k carries no gradient: teacher scores are constants
            return {"teacher_topk_ids": top.indices, "teacher_topk_logprobs": top.values}
        if self.topk_ids is None:
            raise ValueError("these teacher scores have neither full nor top-k log-probs")
        k = topk or self.topk_ids.shape[-1]
        if k > self.topk_ids.shape[-1]:
            raise ValueError(f"asked for the top-{k} but the scorer returned only {self.topk_ids.shape[-1]}")
        return {"teacher_topk_ids": self.topk_ids[..., :k], "teacher_topk_logprobs": self.topk_logprobs[..., :k]}


class Scorer(Protocol):
    def score(self, prompts: list[Prompt], completions: list[list[int]]) -> TeacherScores: ...


class TorchScorer:
    """Full-vocabulary teacher log-probs from a torch forward pass of ``model``."""

    def __init__(self, model, encoder: ChatEncoder):
        self.model, self.encoder = model, encoder

    @torch.no_grad()
    def score(self, prompts: list[Prompt], completions: list[list[int]]) -> TeacherScores:
        logits, ids, _ = completion_logits(self.model, self.encoder, prompts, completions)
        logp = F.log_softmax(logits.float(), dim=-1)  # temperature 1
        return TeacherScores(sampled=logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), full=logp)
