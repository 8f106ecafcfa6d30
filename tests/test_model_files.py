"""The shipped base model: its files, shape and chat encoding."""
from __future__ import annotations

import json
import random

import torch
from transformers import AutoModelForCausalLM

from learner.tokenizer import ChatEncoder
from simulators.tinyworld import corpus
from simulators.tinyworld.skills import NEW_SKILLS, VIEWS, new_item


def test_shipped_model_is_a_small_untied_llama_with_head_size_32(shipped_model):
    cfg = json.loads((shipped_model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["tie_word_embeddings"] is False
    assert cfg["hidden_size"] // cfg["num_attention_heads"] in (32, 64)
    size = sum(f.stat().st_size for f in shipped_model.iterdir())
    assert size < 20 * 2**20
    model = AutoModelForCausalLM.from_pretrained(shipped_model)
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7


def test_chat_encoder_matches_the_tokenizers_chat_template(tokenizer):
    enc = ChatEncoder(tokenizer)
    rng = random.Random(0)
    convs = [next(corpus.conversations(s)) for s in range(30)]
    convs += [list(new_item(s, v, rng).prompt) for s in NEW_SKILLS for v in VIEWS]
    for conv in convs:
        for gen in (False, True):
            ids, mask = enc.encode(conv, add_generation_prompt=gen)
            ref = tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen, return_dict=False)
            assert ids == list(ref)
            assert len(mask) == len(ids)


def test_only_assistant_replies_and_their_end_tags_are_trained(tokenizer):
    enc = ChatEncoder(tokenizer)
    conv = [{"role": "user", "content": "copy : a b"}, {"role": "assistant", "content": "a b"}]
    ids, mask = enc.encode(conv)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert trained == " a b<|end|>"


def test_transformers_loads_the_shipped_model_and_answers_a_base_task(shipped_model, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(shipped_model).eval()
    enc = ChatEncoder(tokenizer)
    ids, _ = enc.encode([{"role": "user", "content": "reverse : a b c d"}], add_generation_prompt=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip() == "d c b a"
