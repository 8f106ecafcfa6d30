"""Evaluate a model on the tiny world with greedy decoding through vLLM.

Items are drawn from evaluation seeds that training never uses.  Single-turn
skills are checked by exact match after whitespace normalisation; ``tools`` is
played out in its environment and checked by its verifier.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from simulators.tinyworld.skills import BASE_SKILLS, NEW_SKILLS, VIEWS, Item, base_item, new_item
from simulators.tinyworld.tools_env import EVAL_MAX_TURNS, ToolsEnv

EVAL_ITEMS = 200
MAX_REPLY_TOKENS = 32

# prompts (as chat messages) -> greedy replies (text)
Generate = Callable[[Sequence[Sequence[dict]]], list[str]]


def eval_items(skill: str, view: str | None, n: int = EVAL_ITEMS) -> list[Item]:
    rng = random.Random(f"tinyworld-eval/{skill}/{view}")
    if view is None:
        return [base_item(skill, rng) for _ in range(n)]
    return [new_item(skill, view, rng) for _ in range(n)]


def score(items: list[Item], generate: Generate, max_turns: int = EVAL_MAX_TURNS) -> float:
    """Fraction of items solved greedily."""
    if items[0].task is None:
        replies = generate([it.prompt for it in items])
        return sum(it.verify(r) for it, r in zip(items, replies)) / len(items)
    envs = [ToolsEnv(it.task, max_turns=max_turns) for it in items]
    for env in envs:
        env.reset()
    systems = [list(it.prompt[:-1]) for it in items]  # privileged context, if any
    active, rewards = list(range(len(items))), [0.0] * len(items)
    while active:
        replies = generate([systems[i] + envs[i].transcript for i in active])
        still = []
        for i, reply in zip(active, replies):
            if reply is None:  # the transcript no longer fits the model's context: failed
                continue
            result = envs[i].step(reply)
            if result.done:
                rewards[i] = result.reward
            else:
                still.append(i)
        active = still
    return sum(rewards) / len(items)


def evaluate(generate: Generate, n: int = EVAL_ITEMS, skills: Sequence[str] | None = None) -> dict:
    wanted = set(skills or (*BASE_SKILLS, *NEW_SKILLS))
    report = {
        "base_skills": {s: score(eval_items(s, None, n), generate) for s in BASE_SKILLS if s in wanted},
        "new_skills": {
            s: {v: score(eval_items(s, v, n), generate) for v in VIEWS} for s in NEW_SKILLS if s in wanted
        },
    }
    return report


def vllm_generate(llm, encoder) -> Generate:
    """Greedy generation through a vLLM engine, prompts encoded by ``encoder``."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=MAX_REPLY_TOKENS)

    def generate(prompts: Sequence[Sequence[dict]]) -> list[str]:
        token_prompts = [TokensPrompt(prompt_token_ids=encoder.encode(list(p), add_generation_prompt=True)[0]) for p in prompts]
        outs = llm.generate(token_prompts, params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    return generate


def reference_conversation(item: Item) -> list[dict]:
    """The item's prompt followed by the correct replies (the expert's, for tools)."""
    if item.task is None:
        return item.conversation()
    from simulators.tinyworld.tools_env import solve

    return [*item.prompt[:-1], *solve(item.task, ask_help=False)]


def forced_accuracy(model, encoder, items: list[Item], batch: int = 100) -> float:
    """Greedy accuracy computed in one teacher-forced pass per batch: an item
    counts when the model's argmax is the correct token at every trained
    position, which is exactly when greedy decoding would produce the correct
    replies (for tools: solve the episode within the evaluation budget)."""
    import torch

    from learner.pretrain import collate

    device = next(model.parameters()).device
    solved = 0
    for i in range(0, len(items), batch):
        encoded = [_own_reply(encoder, it) for it in items[i : i + batch]]
        padded = collate(encoded, encoder.tok.pad_token_id)
        ids, labels = padded["input_ids"].to(device), padded["labels"].to(device)
        with torch.no_grad():
            pred = model(ids, attention_mask=padded["attention_mask"].to(device)).logits.argmax(-1)
        right = (pred[:, :-1] == labels[:, 1:]) | (labels[:, 1:] == -100)
        solved += int(right.all(-1).sum())
    return solved / len(items)


def _own_reply(encoder, item: Item) -> tuple[list[int], list[int]]:
    """The item's reference conversation, trained only where the item is judged: every reply of a tools
    episode; the one reply of any other item (a state's earlier moves are given, as in greedy decoding)."""
    ids, mask = encoder.encode(reference_conversation(item))
    if item.task is None:
        given = len(encoder.encode(list(item.prompt), add_generation_prompt=True)[0])
        mask = [0] * given + list(mask[given:])
    return ids, mask


def forced_report(model, encoder, n: int = EVAL_ITEMS) -> dict[str, float]:
    """Every skill and view by forced_accuracy: a cheap learning curve point."""
    was_training = model.training
    model.eval()
    report = {s: forced_accuracy(model, encoder, eval_items(s, None, n)) for s in BASE_SKILLS}
    for s in NEW_SKILLS:
        for v in VIEWS:
            report[f"{s}/{v}"] = forced_accuracy(model, encoder, eval_items(s, v, n))
    model.train(was_training)
    return report
