"""Multiple-choice scoring by log-likelihood through a vLLM engine's prompt log-probs, the lm-evaluation-harness way.

Each choice of an item is one request ``(context, " " + choice)`` (the harness's ``target_delimiter``).  It is
tokenised as the harness's ``_encode_pair`` does: whitespace that ends the context moves onto the continuation,
``context + continuation`` is encoded whole and the continuation's tokens are the whole's after the context's own
token count (no special tokens added; an empty context is the tokenizer's BOS or end token).  The engine is given
the context's tokens followed by those (what the harness feeds), and the log-likelihood is the sum of the
continuation tokens' prompt log-probs (``SamplingParams(max_tokens=1, prompt_logprobs=0)``).  A request longer
than the engine's context keeps its last tokens, as the harness's vLLM model does (counted as truncated).

``acc`` counts items whose gold choice has the highest log-likelihood, ``acc_norm`` those whose gold choice has the
highest log-likelihood per character of the choice (``len(choice)``, without the leading space: lm-eval's
``acc_norm``, lighteval's ``acc_norm_nospace``); ties go to the first choice, as ``numpy.argmax``.

With ``chat_template`` the context is first wrapped as one user message with the model's generation prompt
(``apply_chat_template(..., add_generation_prompt=True)``), as lighteval's ``--use_chat_template`` does (the setup
of SmolLM2's published figures); the template's final newline then moves onto the continuation.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from evals.data import Item


@dataclass(frozen=True)
class Request:
    """One choice to score: the context's token ids and the continuation's."""
    context: tuple[int, ...]
    continuation: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.context) + len(self.continuation)


@dataclass(frozen=True)
class Score:
    """A benchmark's scores on ``n`` items (fractions), their standard errors, and what it cost."""
    name: str
    n: int
    acc: float
    acc_norm: float
    acc_stderr: float
    acc_norm_stderr: float
    requests: int
    tokens: int
    truncated: int
    seconds: float


def with_chat_template(tokenizer, context: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": context}], add_generation_prompt=True,
                                         tokenize=False)


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """The harness's ``_encode_pair``: the context's and the continuation's token ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return Request((prefix,), tuple(tokenizer.encode(continuation, add_special_tokens=False)))
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return Request(tuple(ctx), tuple(whole[len(ctx):]))


def requests(tokenizer, items: Sequence[Item], chat_template: bool = False) -> list[Request]:
    """One request per choice, item after item, each choice in order."""
    out = []
    for item in items:
        context = with_chat_template(tokenizer, item.context) if chat_template else item.context
        out.extend(encode_pair(tokenizer, context, " " + choice) for choice in item.choices)
    return out


def max_model_len(llm) -> int:
    return llm.llm_engine.model_config.max_model_len


def prompt(request: Request, limit: int) -> tuple[list[int], int]:
    """The ids the engine is given (the last ``limit`` of context + continuation) and where the scored tokens
    start among them (never at 0: the first token has no log-prob)."""
    ids = list(request.context + request.continuation)[-limit:]
    return ids, len(ids) - min(len(request.continuation), len(ids) - 1)


def loglikelihoods(llm, reqs: Sequence[Request]) -> list[float]:
    """The summed log-probs of each request's continuation given its context, from one ``generate`` call."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    limit = max_model_len(llm) - 1  # room for the one token generate insists on
    prompts = [prompt(r, limit) for r in reqs]
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in prompts],
                        SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    return [sum(out.prompt_logprobs[j][ids[j]].logprob for j in range(start, len(ids)))
            for out, (ids, start) in zip(outs, prompts)]


def torch_loglikelihoods(model, reqs: Sequence[Request], limit: int | None = None, batch: int = 16) -> list[float]:
    """The same sums as :func:`loglikelihoods`, from a transformers causal LM in torch (the gate's models): each
    request cut to its last ``limit`` tokens (default: one less than the model's ``max_position_embeddings``, as
    an engine of that length cuts it), requests of similar length batched together, right-padded."""
    import torch

    limit = limit or int(model.config.max_position_embeddings) - 1
    prompts = [prompt(r, limit) for r in reqs]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
    device = next(model.parameters()).device
    out = [0.0] * len(prompts)
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        width = max(len(prompts[i][0]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(prompts[i][0])] = torch.tensor(prompts[i][0])
            mask[row, :len(prompts[i][0])] = 1
        with torch.no_grad():
            logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
        for row, i in enumerate(idx):
            tokens, start = prompts[i]
            at = torch.arange(start, len(tokens), device=device)
            out[i] = logp[row, at - 1, torch.tensor(tokens[start:], dtype=torch.long, device=device)].sum().item()
    return out


def predictions(items: Sequence[Item], lls: Sequence[float]) -> tuple[list[int], list[int]]:
    """For each item, the choice with the highest log-likelihood, and the one with the highest per character."""
    if len(lls) != sum(len(item.choices) for item in items):
        raise ValueError(f"{len(lls)} log-likelihoods for {sum(len(i.choices) for i in items)} choices")
    pred, pred_norm, at = [], [], 0
    for item in items:
        ll = lls[at:at + len(item.choices)]
        at += len(item.choices)
        per_char = [x / len(c) if c else -math.inf for x, c in zip(ll, item.choices)]
        pred.append(max(range(len(ll)), key=ll.__getitem__))  # the first of equal ones, as numpy.argmax
        pred_norm.append(max(range(len(ll)), key=per_char.__getitem__))
    return pred, pred_norm


def stderr(p: float, n: int) -> float:
    """The standard error of a mean of ``n`` hits and misses whose mean is ``p`` (the harness's, n - 1)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def accuracy(items: Sequence[Item], lls: Sequence[float]) -> tuple[float, float]:
    """``acc`` and ``acc_norm`` of ``items`` given each choice's log-likelihood (item after item)."""
    pred, pred_norm = predictions(items, lls)
    n = len(items)
    return (sum(p == i.gold for p, i in zip(pred, items)) / n, sum(p == i.gold for p, i in zip(pred_norm, items)) / n)


def score(llm, name: str, items: Sequence[Item], reqs: Sequence[Request]) -> Score:
    """A benchmark's scores: ``reqs`` (``requests`` of ``items``) scored in one ``generate`` call."""
    start = time.perf_counter()
    lls = loglikelihoods(llm, reqs)
    seconds = time.perf_counter() - start
    acc, acc_norm = accuracy(items, lls)
    limit = max_model_len(llm) - 1
    return Score(name=name, n=len(items), acc=acc, acc_norm=acc_norm, acc_stderr=stderr(acc, len(items)),
                 acc_norm_stderr=stderr(acc_norm, len(items)), requests=len(reqs),
                 tokens=sum(min(len(r), limit) for r in reqs), truncated=sum(len(r) > limit for r in reqs),
                 seconds=seconds)
