"""How far a model has drifted from another: KL(reference ‖ model) per token, on the reference's own replies.

A retention benchmark sees what a candidate still gets right; it cannot see a model that answers the same and
says everything else differently.  ``kl_per_token`` measures that: for each chat (general prompts followed by the
*reference* model's own greedy reply, so the measure stays on text the reference would write), at each token of the
reply (the encoder's training mask without the token that ends a message: a reply cut at the gate's length has
none of its own), the KL divergence of the model's next-token
distribution from the reference's, over the whole vocabulary, averaged over those tokens.  It is 0 for the same
weights and grows as the model moves away; the gate reports it for a candidate against the base
(``actors.gate``), and ``max_drift`` may bound it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Drift:
    kl_per_token: float  # nats
    chats: int
    tokens: int

    def report(self) -> dict:
        return {"kl_per_token": self.kl_per_token, "chats": self.chats, "tokens": self.tokens}


def scored_chats(encoder, prompts: Sequence[Sequence[dict]], replies: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Each prompt with its reply as the assistant's message: token ids and the mask of the tokens scored (the
    reply's own, not the one that ends it)."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts and {len(replies)} replies")
    chats = []
    for p, r in zip(prompts, replies):
        ids, mask = encoder.encode([*p, {"role": "assistant", "content": r}])
        chats.append((ids, [int(m and t != encoder.end_id) for t, m in zip(ids, mask)]))
    return chats


def kl_per_token(reference, model, chats: Sequence[tuple[list[int], list[int]]], batch: int = 4) -> Drift:
    """KL(reference ‖ model) at each scored token of ``chats`` (``(ids, mask)`` pairs: ``scored_chats``, or an
    encoder's training mask), averaged over all of them: the learner's ``forward_kl`` with the reference as the
    teacher, in float64.  Both models are torch causal LMs with the same vocabulary; chats are right-padded in
    batches of ``batch`` (the learner's ``collate``)."""
    import torch

    from learner.losses import check_vocab_match, forward_kl
    from learner.pretrain import collate

    if not chats:
        raise ValueError("no chats to measure drift on")
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for b in range(0, len(chats), batch):
        padded = collate(list(chats[b: b + batch]), pad_id=0)  # padding is masked out: its id never counts
        ids, attention = padded["input_ids"].to(device), padded["attention_mask"].to(device)
        with torch.inference_mode():
            logp = torch.log_softmax(reference(input_ids=ids, attention_mask=attention).logits[:, :-1].double(), -1)
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].double()
        check_vocab_match(logits.shape[-1], logp.shape[-1])
        at = (padded["labels"][:, 1:] != -100).to(device)  # the distribution at position t predicts token t + 1
        total += float(forward_kl(logits, logp)[at].sum())
        tokens += int(at.sum())
    if tokens == 0:
        raise ValueError("the chats have no scored tokens")
    return Drift(kl_per_token=max(0.0, total / tokens), chats=len(chats), tokens=tokens)


__all__ = ["Drift", "kl_per_token", "scored_chats"]
