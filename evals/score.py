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


def packed(reqs: Sequence[Request], limit: int) -> list[tuple[tuple[int, ...], list[tuple[int, tuple[int, ...]]]]]:
    """The requests as rows of one shared context and its continuations: ``(context, [(request index,
    continuation), ...])``, each request cut to its last ``limit`` tokens first (:func:`prompt`), so a cut request
    shares only with requests cut to the same context.  The choices of one item share a row."""
    rows: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for i, r in enumerate(reqs):
        ids, start = prompt(r, limit)
        rows.setdefault(tuple(ids[:start]), []).append((i, tuple(ids[start:])))
    return list(rows.items())


def torch_loglikelihoods(model, reqs: Sequence[Request], limit: int | None = None, batch: int = 16) -> list[float]:
    """The same sums as :func:`loglikelihoods`, from a transformers causal LM in torch (the gate's models): each
    request cut to its last ``limit`` tokens (default: one less than the model's ``max_position_embeddings``, as
    an engine of that length cuts it).

    The requests that share a context are one row (:func:`packed`): the context once, then each continuation,
    positioned right after the context and attending to the context and its own tokens only (a 4D mask), so an
    item of four choices costs its context once, not four times.  Log-probs are taken only where a continuation's
    tokens are predicted, not over every position.  Rows of similar length are batched, ``batch`` at a time,
    right-padded."""
    import torch

    limit = limit or int(model.config.max_position_embeddings) - 1
    rows = sorted(packed(reqs, limit), key=lambda row: len(row[0]) + sum(len(c) for _, c in row[1]))
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = [0.0] * len(reqs)
    for b in range(0, len(rows), batch):
        chunk = rows[b:b + batch]
        width = max(len(ctx) + sum(len(c) for _, c in conts) for ctx, conts in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        positions = torch.zeros((len(chunk), width), dtype=torch.long)
        segment = torch.full((len(chunk), width), -1, dtype=torch.long)  # 0: context, k: choice k, -1: padding
        where: list[tuple[int, int, list[int], tuple[int, ...]]] = []  # (request, row, predicting positions, targets)
        for row, (ctx, conts) in enumerate(chunk):
            n = len(ctx)
            ids[row, :n], positions[row, :n], segment[row, :n] = torch.tensor(ctx), torch.arange(n), 0
            at = n
            for k, (i, cont) in enumerate(conts, start=1):
                span = slice(at, at + len(cont))
                ids[row, span] = torch.tensor(cont)
                positions[row, span] = torch.arange(n, n + len(cont))
                segment[row, span] = k
                where.append((i, row, [n - 1, *range(at, at + len(cont) - 1)], cont))
                at += len(cont)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        seen = causal & ((segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None]))
        mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)[:, None]
        with torch.no_grad():
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                             position_ids=positions.to(device)).last_hidden_state
            rows_at = torch.tensor([row for _, row, preds, _ in where for _ in preds], device=device)
            cols_at = torch.tensor([p for _, _, preds, _ in where for p in preds], device=device)
            logits = head(hidden[rows_at, cols_at]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            targets = torch.tensor([t for *_, cont in where for t in cont], device=device)
            picked = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0].tolist()
        at = 0
        for i, _, _, cont in where:
            out[i] = sum(picked[at:at + len(cont)])
            at += len(cont)
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
