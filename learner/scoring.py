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
from learner.tokenizer import Encoder

Prompt = tuple[dict, ...]


@dataclass
class TeacherScores:
    """Per completion token ``[B,T]`` (padding where a completion is shorter)."""

    sampled: torch.Tensor  # teacher log-prob of the sampled token [B,T]
    full: torch.Tensor | None = None  # [B,T,V] log-probs, full vocabulary
    topk_ids: torch.Tensor | None = None  # [B,T,K]
    topk_logprobs: torch.Tensor | None = None  # [B,T,K]

    def at_temperature(self, temperature: float, sampled_ids: torch.Tensor) -> "TeacherScores":
        """The same scores with the teacher's distribution at ``temperature``
        (below 1 sharper, above 1 flatter) for the completion tokens
        ``sampled_ids [B,T]``.

        Full vocabulary: exact.  Top-k (vLLM scorers), below 1 only: the
        mass the top-k leaves out, ``r``, is tempered as if it were one token,
        ``r ** (1/temperature)``, the most it can be (for ``a >= 1``,
        ``sum p_i ** a <= (sum p_i) ** a``), so the top-k's own tempered
        probabilities are never overstated.  Above 1 a top-k cannot say how
        much the tail gains, and that is refused."""
        if temperature == 1.0:
            return self
        if not temperature > 0:
            raise ValueError(f"the teacher temperature must be > 0, got {temperature}")
        if self.full is not None:
            full = F.log_softmax(self.full / temperature, dim=-1)  # log-probs differ from logits by a constant
            return TeacherScores(sampled=full.gather(-1, sampled_ids.unsqueeze(-1)).squeeze(-1), full=full)
        if self.topk_logprobs is None:
            raise ValueError("these teacher scores have neither full nor top-k log-probs")
        if temperature > 1:
            raise ValueError("a teacher temperature above 1 needs full-vocabulary teacher scores (the torch "
                             "scorer): a top-k cannot say how much mass its tail gains")
        top = self.topk_logprobs.double()
        rest = torch.log1p(-torch.logsumexp(top, -1).exp().clamp(max=1.0)).clamp(min=-1e4)  # log r, finite
        log_z = torch.logsumexp(torch.cat([top / temperature, (rest / temperature).unsqueeze(-1)], -1), -1)
        dtype = self.topk_logprobs.dtype
        return TeacherScores(sampled=(self.sampled.double() / temperature - log_z).to(dtype),
                             topk_ids=self.topk_ids,
                             topk_logprobs=(top / temperature - log_z.unsqueeze(-1)).to(dtype))

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

    def __init__(self, model, encoder: Encoder):
        self.model, self.encoder = model, encoder

    @torch.no_grad()
    def score(self, prompts: list[Prompt], completions: list[list[int]]) -> TeacherScores:
        logits, ids, _ = completion_logits(self.model, self.encoder, prompts, completions)
        logp = F.log_softmax(logits.float(), dim=-1)  # temperature 1
        return TeacherScores(sampled=logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), full=logp)
