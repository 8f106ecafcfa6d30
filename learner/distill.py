"""On-policy self-distillation (OPSD) and its SFT baseline, one step at a time.

A :class:`Lesson` is one task seen two ways: ``student`` (the task alone) and
``teacher`` (the same task with privileged context: a fact, a rule, a
demonstration).  An OPSD step samples completions from the current student at
temperature 1, scores every completion token under the teacher state (the same
conversation with the privileged context, through a frozen or lagged copy of
the model), and backpropagates a per-token divergence into the student.  An SFT
step trains the student on ``reference`` with cross-entropy instead.

Sampling and scoring go through two small interfaces: a sampler (the torch
student here, or a vLLM engine: ``learner/vllm_backend.py``) and a scorer
(``learner/scoring.py``: a torch forward pass, or vLLM ``prompt_logprobs``),
so the same step runs in process or against Ray actors.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from learner.losses import check_vocab_match, distillation_loss
from learner.pretrain import collate
from learner.tokenizer import Encoder

LOSSES = ("fkl", "rkl", "jsd", "sampled")


def check_same_tokenizer(student_tok, teacher_tok) -> None:
    """Self-distillation compares distributions token by token: the teacher must
    use exactly the student's vocabulary."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        a, b = set(student_tok.get_vocab()), set(teacher_tok.get_vocab())
        raise ValueError(
            "teacher and student tokenizers differ "
            f"({len(a)} vs {len(b)} tokens, {len(a ^ b)} not shared, or the same tokens with other ids); "
            "use a teacher with the student's tokenizer"
        )


@dataclass(frozen=True)
class Lesson:
    student: tuple[dict, ...]  # the prompt the student sees
    teacher: tuple[dict, ...]  # the same prompt with privileged context in front
    reference: str | None = None  # a correct reply, for the SFT baseline

    @property
    def context(self) -> tuple[dict, ...]:
        """The privileged messages in front of the student's prompt in the teacher's: a system message, and the
        exchanges that demonstrate it where there are some (learner/experience.py)."""
        return self.teacher[: len(self.teacher) - len(self.student)]

    def asking(self, student, keeps_answer: bool = False) -> "Lesson":
        """The same privileged context in front of another prompt (a variation of the ask); the reference too
        where the variation asks for the same answer (``keeps_answer``: a fact asked another way), else none."""
        return Lesson(tuple(student), (*self.context, *student), self.reference if keeps_answer else None)


@torch.no_grad()
def sample(model, encoder: Encoder, prompts: list[tuple[dict, ...]], max_new_tokens: int = 32,
           temperature: float = 1.0, greedy: bool = False) -> list[list[int]]:
    """On-policy completions (token ids, ending with the end tag when the
    model produced one) from the model's current weights; ``greedy`` takes the
    argmax instead of sampling."""
    device = next(model.parameters()).device
    encoded = [encoder.encode(list(p), add_generation_prompt=True)[0] for p in prompts]
    width = max(len(e) for e in encoded)
    pad = encoder.tok.pad_token_id
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(encoded):  # left padding for generation
        ids[i, width - len(e):] = torch.tensor(e)
        attn[i, width - len(e):] = 1
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens,
        eos_token_id=encoder.end_id, pad_token_id=pad,
        **({"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}),
    )
    model.train(was_training)
    completions = []
    for row in out[:, width:].tolist():
        comp = []
        for t in row:
            comp.append(t)
            if t == encoder.end_id:
                break
        completions.append(comp)
    return completions


def completion_logits(model, encoder: Encoder, prompts: list[tuple[dict, ...]],
                      completions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``[B,T,V]`` that predict each completion token after its prompt,
    the completion ids ``[B,T]`` and the mask ``[B,T]`` of real (non-pad) tokens.

    Only the positions that predict a completion token go through the output layer (``logits_to_keep``): a
    vocabulary of 49,152 over a calc lesson's 500 prompt tokens made most of the memory and a good part of the
    time of a step on SmolLM2."""
    device = next(model.parameters()).device
    heads = [encoder.encode(list(p), add_generation_prompt=True)[0] for p in prompts]
    padded = collate([(h + c, []) for h, c in zip(heads, completions)], encoder.tok.pad_token_id)
    first = min(len(h) for h in heads) - 1  # the first position that predicts a completion token, in any row
    last = max(len(h) + len(c) for h, c in zip(heads, completions)) - 1
    logits = model(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device),
                   logits_to_keep=torch.arange(first, last, device=device)).logits
    T = max(len(c) for c in completions)
    out = logits.new_zeros((len(prompts), T, logits.shape[-1]))
    comp_ids = torch.zeros((len(prompts), T), dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), T), device=device)
    for i, (h, c) in enumerate(zip(heads, completions)):
        n = len(c)
        out[i, :n] = logits[i, len(h) - 1 - first : len(h) - 1 - first + n]
        comp_ids[i, :n] = torch.tensor(c, device=device)
        mask[i, :n] = 1.0
    return out, comp_ids, mask


def opsd_loss(student, sampler, scorer, encoder: Encoder, lessons: list[Lesson], loss: str = "fkl",
              topk: int | None = None, beta: float = 0.5, clip_max: float | None = None,
              seed: int = 0, *, teacher_temperature: float = 1.0, samples: int = 1,
              cut_below: float | None = None, base=None, base_kl: float = 0.0,
              skip_below: float | None = None, along_reference: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Sample from the student (``sampler``, on the student's current weights),
    score under the teacher state (``scorer``), return the loss.

    ``samples`` completions are drawn per lesson.  ``teacher_temperature``
    sharpens (< 1) or flattens (> 1) the teacher's target.  ``cut_below``
    stops the loss after the first completion token to which the teacher gives
    less than that probability: from there on the student's prefix has left
    anything the teacher would write, and its scores describe a conversation
    that never happens (the token itself, where the teacher disagrees, still
    counts).  ``skip_below`` is a dead zone: a position whose divergence is
    below that many nats adds nothing (:func:`learner.losses.distillation_loss`).
    ``base_kl`` adds that weight times the reverse KL from the
    student to ``base`` (a scorer of the weights learning started from) on the
    student's own prompts and samples.

    ``along_reference`` > 0 mixes in the lessons' references, as generalised
    knowledge distillation mixes in fixed data (Agarwal et al., 2024): a
    lesson with a reference (a user's correction) is scored along that reply
    instead of a student sample with that probability (drawn from ``seed``),
    still against the teacher state's whole distribution at each position;
    a lesson without one (a rule's ask varied into another prompt) is always
    sampled.  The
    student's own samples reach a name's first token only: taught "Suvi
    Karjalainen" on-policy, SmolLM2-135M-Instruct answered "Suvi Kassav"
    (docs/design-notes.md, "Names the student never samples")."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; losses are: {', '.join(LOSSES)}")
    if samples < 1:
        raise ValueError(f"samples per lesson must be >= 1, got {samples}")
    if base_kl and base is None:
        raise ValueError("a KL to the base policy needs a scorer of the base weights")
    if not 0.0 <= along_reference <= 1.0:
        raise ValueError(f"the share scored along references must be in [0, 1], got {along_reference}")
    lessons = [l for l in lessons for _ in range(samples)]
    prompts = [l.student for l in lessons]
    pick = random.Random(seed)
    along = {i for i, l in enumerate(lessons) if l.reference is not None and pick.random() < along_reference}
    drawn = iter(sampler.sample([p for i, p in enumerate(prompts) if i not in along], seed=seed)
                 if len(along) < len(lessons) else [])
    completions = [encoder.reply_ids(l.reference) if i in along else next(drawn) for i, l in enumerate(lessons)]
    scores = scorer.score([l.teacher for l in lessons], completions)
    s_logits, ids, mask = completion_logits(student, encoder, prompts, completions)
    check_vocab_match(s_logits.shape[-1], scores.full.shape[-1] if scores.full is not None else s_logits.shape[-1])
    scores = scores.at_temperature(teacher_temperature, ids.to(scores.sampled.device))
    counted = mask
    if cut_below is not None:
        counted = mask * on_teacher_path(scores.sampled.to(mask.device), mask, cut_below)
    kwargs = scores.loss_kwargs(loss, ids, topk)
    kwargs = {k: v.to(s_logits.device) for k, v in kwargs.items()}
    value = distillation_loss(loss, s_logits, counted, beta=beta, clip_max=clip_max, skip_below=skip_below, **kwargs)
    if base_kl:
        reference = base.score(prompts, completions)
        value = value + base_kl * distillation_loss("rkl", s_logits, mask,
                                                    teacher_logprobs=reference.full.to(s_logits.device))
    return value, {"tokens": int(mask.sum()), "counted": int(counted.sum()), "along_references": len(along)}


def on_teacher_path(teacher_sampled_logprobs: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 at every completion position up to and including the first token the
    teacher gives less than ``threshold`` probability, 0 after it, ``[B,T]``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the cut-off probability must be in (0, 1), got {threshold}")
    off = ((teacher_sampled_logprobs < math.log(threshold)) & (mask > 0)).to(torch.long)
    before = off.cumsum(-1) - off  # tokens off the teacher's path strictly before each position
    return (before == 0).to(mask.dtype)


def greedy_replies(model, encoder: Encoder, prompts: Sequence[tuple[dict, ...]], max_new_tokens: int,
                   batch: int = 128) -> list[str]:
    """Greedy replies of a torch model as text, batched by prompt length (the same prompts always make the same
    batches, so the same replies)."""
    lengths = [len(encoder.encode(list(p), add_generation_prompt=True)[0]) for p in prompts]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    out = [""] * len(prompts)
    for b in range(0, len(order), batch):
        idx = order[b: b + batch]
        for i, ids in zip(idx, sample(model, encoder, [prompts[i] for i in idx], max_new_tokens, greedy=True)):
            out[i] = encoder.tok.decode([t for t in ids if t != encoder.end_id], skip_special_tokens=True).strip()
    return out


class TorchSampler:
    """On-policy samples from the torch student itself (always current)."""

    def __init__(self, model, encoder: Encoder, max_new_tokens: int = 32):
        self.model, self.encoder, self.max_new_tokens = model, encoder, max_new_tokens

    def sample(self, prompts: list[tuple[dict, ...]], seed: int = 0) -> list[list[int]]:
        return sample(self.model, self.encoder, prompts, self.max_new_tokens)  # draws from torch's RNG

    def sync(self, student) -> None:
        self.model = student


def sft_loss(student, encoder: Encoder, lessons: list[Lesson],
             targets: list[list[int]] | None = None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on the reference replies (or on ``targets``, token ids per lesson), given the student's
    prompt."""
    if targets is None:
        if any(l.reference is None for l in lessons):
            raise ValueError("SFT needs a reference reply for every lesson")
        targets = [encoder.reply_ids(l.reference) for l in lessons]
    logits, ids, mask = completion_logits(student, encoder, [l.student for l in lessons], targets)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none").view_as(mask)
    return (ce * mask).sum() / mask.sum(), {"tokens": int(mask.sum())}
