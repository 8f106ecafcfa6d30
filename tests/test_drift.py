"""KL(reference || model) per token on the reference's replies (evals/drift.py), with the real tiny-world
model in torch, against the divergence computed one chat and one position at a time."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from evals.drift import kl_per_token, scored_chats
from learner.tokenizer import chat_encoder, load_tokenizer
from simulators.tinyworld.build import SHIPPED_MODEL

PROMPTS = [({"role": "user", "content": "copy : a b c d"},), ({"role": "user", "content": "reverse : q w e"},),
           ({"role": "user", "content": "sort : z y x w v u"},)]
REPLIES = ["a b c d", "e w q", "u v w x y z"]


@pytest.fixture(scope="module")
def models():
    base = AutoModelForCausalLM.from_pretrained(str(SHIPPED_MODEL), dtype=torch.float32).eval()
    moved = AutoModelForCausalLM.from_pretrained(str(SHIPPED_MODEL), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            if p.ndim == 2:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
    return base, moved


@pytest.fixture(scope="module")
def encoder():
    return chat_encoder(load_tokenizer(SHIPPED_MODEL))


def test_only_the_replys_own_tokens_are_scored_not_the_prompt_nor_the_token_that_ends_it(encoder):
    chats = scored_chats(encoder, PROMPTS, REPLIES)
    for (ids, mask), p, r in zip(chats, PROMPTS, REPLIES):
        prompt = encoder.encode(list(p), add_generation_prompt=True)[0]
        assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])
        assert [t for t, m in zip(ids, mask) if m] == encoder.reply_ids(r)[: sum(mask)] and sum(mask) > 0
        assert encoder.end_id not in [t for t, m in zip(ids, mask) if m]


def test_a_model_has_no_drift_from_itself_and_a_moved_copy_has_the_mean_kl_over_the_reply_tokens_in_any_batching(
        models, encoder):
    base, moved = models
    chats = scored_chats(encoder, PROMPTS, REPLIES)
    assert kl_per_token(base, base, chats).kl_per_token == pytest.approx(0.0, abs=1e-7)

    kls = []  # one chat, one position at a time, no padding
    for ids, mask in chats:
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(base(input_ids=x).logits[0], -1)
            logq = torch.log_softmax(moved(input_ids=x).logits[0], -1)
        kls += [float(torch.nn.functional.kl_div(logq[t - 1], logp[t - 1], log_target=True, reduction="sum"))
                for t in range(1, len(ids)) if mask[t]]
    for batch in (1, 2, 4):  # padded batches of unequal lengths: padding must not count
        drift = kl_per_token(base, moved, chats, batch=batch)
        assert drift.tokens == len(kls) and drift.chats == 3
        assert drift.kl_per_token == pytest.approx(sum(kls) / len(kls), rel=1e-4) and drift.kl_per_token > 0


def test_no_chats_or_unequal_prompts_and_replies_are_refused_in_one_line(models, encoder):
    with pytest.raises(ValueError, match="no chats"):
        kl_per_token(*models, [])
    with pytest.raises(ValueError, match="3 prompts and 2 replies"):
        scored_chats(encoder, PROMPTS, REPLIES[:2])
