"""Per-token distillation losses between a student and a teacher distribution.

Small pure torch functions.  Shapes: ``B`` batch, ``T`` time (token positions),
``V`` vocabulary, ``K`` teacher top-k size.

* Full vocabulary: student logits ``[B,T,V]`` against teacher log-probs
  ``[B,T,V]`` (the teacher's ``log_softmax`` at temperature 1):
  :func:`forward_kl`, :func:`reverse_kl`, :func:`generalized_jsd`.
* Top-k with a tail bucket: the teacher gives only its top-k ids ``[B,T,K]``
  and their log-probs ``[B,T,K]``; both distributions are coarsened to K+1
  buckets (the K ids, plus one "tail" bucket holding all remaining mass):
  :func:`topk_forward_kl`, :func:`topk_reverse_kl`, :func:`topk_generalized_jsd`.
* Sampled token: :func:`sampled_token_loss`, a policy-gradient surrogate from
  the log-probs of the tokens the student actually sampled.
* :func:`masked_token_mean` turns per-token losses ``[B,T]`` into one scalar,
  and :func:`distillation_loss` does everything from one call.

The teacher is always a constant: every function detaches teacher inputs, so
gradients flow only into the student.  All log-probabilities are computed with
``log_softmax`` / ``logsumexp`` (never ``log(softmax)``); the losses stay finite
for logits of magnitude 1e4.  Half-precision inputs are computed in float32;
float32 and float64 inputs keep their dtype.

Every per-token function returns ``[B,T]``: one loss per position, with no
masking.  Padding and prompt positions are dealt with by the reducer
(:func:`masked_token_mean`); :func:`distillation_loss` additionally replaces
whatever sits at masked positions with harmless values *before* computing, so
that even NaN or inf there cannot reach the value or the gradient.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "KINDS",
    "check_vocab_match",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "topk_bucket_logprobs",
    "topk_forward_kl",
    "topk_reverse_kl",
    "topk_generalized_jsd",
    "token_logprobs",
    "sampled_token_loss",
    "masked_token_mean",
    "distillation_loss",
]

KINDS: tuple[str, ...] = ("fkl", "rkl", "jsd", "sampled")
"""The kinds :func:`distillation_loss` accepts."""

DEFAULT_MIN_TEACHER_TAIL_LOGPROB = -20.0
"""Floor for the teacher's tail-bucket log-mass (e^-20 ~ 2e-9); see :func:`topk_bucket_logprobs`."""


# ----------------------------------------------------------------------------
# checks and small helpers


def check_vocab_match(student_vocab_size: int, teacher_vocab_size: int) -> None:
    """Raise ValueError unless the student and teacher vocabularies have the same size.

    Distillation compares the two distributions token id by token id, so the
    vocabularies must be the same (same tokenizer, same embedding rows).
    """
    if int(student_vocab_size) != int(teacher_vocab_size):
        raise ValueError(
            f"student and teacher vocabulary sizes differ: student has {int(student_vocab_size)} "
            f"tokens, teacher has {int(teacher_vocab_size)}; distillation needs the same "
            "tokenizer and vocabulary on both sides"
        )


def _compute_dtype(x: Tensor) -> Tensor:
    """Float32 for half-precision inputs, otherwise unchanged (float32/float64)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_logits(student_logits: Tensor) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be [B,T,V], got shape {tuple(student_logits.shape)}")


def _check_full_pair(student_logits: Tensor, teacher_logprobs: Tensor) -> None:
    _check_logits(student_logits)
    if teacher_logprobs.dim() != 3:
        raise ValueError(f"teacher_logprobs must be [B,T,V], got shape {tuple(teacher_logprobs.shape)}")
    check_vocab_match(student_logits.shape[-1], teacher_logprobs.shape[-1])
    if student_logits.shape[:2] != teacher_logprobs.shape[:2]:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logprobs "
            f"{tuple(teacher_logprobs.shape)} differ in their [B,T] dimensions"
        )


def _check_topk(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor) -> None:
    _check_logits(student_logits)
    if topk_ids.dim() != 3 or topk_ids.shape != topk_logprobs.shape:
        raise ValueError(
            f"teacher top-k ids and log-probs must both be [B,T,K], got {tuple(topk_ids.shape)} "
            f"and {tuple(topk_logprobs.shape)}"
        )
    if topk_ids.shape[:2] != student_logits.shape[:2]:
        raise ValueError(
            f"teacher top-k [B,T]={tuple(topk_ids.shape[:2])} does not match student_logits "
            f"[B,T]={tuple(student_logits.shape[:2])}"
        )
    if topk_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"teacher top-k ids must be an integer tensor, got dtype {topk_ids.dtype}")
    if not 1 <= topk_ids.shape[-1] <= student_logits.shape[-1]:
        raise ValueError(
            f"top-k size K={topk_ids.shape[-1]} must be between 1 and the vocabulary size "
            f"{student_logits.shape[-1]}"
        )


def _kl_from_logprobs(logp: Tensor, logq: Tensor) -> Tensor:
    """sum_v p_v (log p_v - log q_v) over the last dim, with 0 log 0 = 0.

    Terms where p_v = 0 exactly (log p_v = -inf) contribute 0, also to the
    gradient, even if log q_v = -inf there too.
    """
    p = logp.exp()
    terms = torch.where(logp > float("-inf"), p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1)


def _jsd_from_logprobs(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """beta*KL(p_t||m) + (1-beta)*KL(p_s||m), m = beta*p_t + (1-beta)*p_s, over the last dim."""
    _check_beta(beta)
    log_beta = math.log(beta) if beta > 0 else float("-inf")
    log_1m_beta = math.log1p(-beta) if beta < 1 else float("-inf")
    log_m = torch.logaddexp(teacher_logp + log_beta, student_logp + log_1m_beta)
    out = torch.zeros(student_logp.shape[:-1], dtype=student_logp.dtype, device=student_logp.device)
    # A term whose weight is exactly 0 is skipped: at beta=1 the student term
    # could otherwise be 0 * inf (m = p_t is 0 where the teacher is 0).
    if beta > 0:
        out = out + beta * _kl_from_logprobs(teacher_logp, log_m)
    if beta < 1:
        out = out + (1.0 - beta) * _kl_from_logprobs(student_logp, log_m)
    return out


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0.0 <= float(beta) <= 1.0):
        raise ValueError(f"JSD beta must be a number in [0, 1], got {beta!r}")


# ----------------------------------------------------------------------------
# full vocabulary


def forward_kl(student_logits: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Forward KL per token, KL(teacher || student) = sum_v p_t (log p_t - log p_s).

    Args:
        student_logits: ``[B,T,V]`` raw student logits (log_softmax is applied here).
        teacher_logprobs: ``[B,T,V]`` teacher log-probs at temperature 1
            (detached; ``-inf`` entries, i.e. probability 0, are allowed).

    Returns:
        ``[B,T]`` per-token loss (>= 0).  Mass-covering: the student is pushed
        to put mass wherever the teacher does.
    """
    _check_full_pair(student_logits, teacher_logprobs)
    s = torch.log_softmax(_compute_dtype(student_logits), dim=-1)
    t = _compute_dtype(teacher_logprobs.detach()).to(s.dtype)
    return _kl_from_logprobs(t, s)


def reverse_kl(student_logits: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Reverse KL per token, KL(student || teacher) = sum_v p_s (log p_s - log p_t).

    Same arguments as :func:`forward_kl`.  Mode-seeking: the student is pushed
    away from tokens the teacher finds unlikely.  Infinite where the teacher
    gives a token probability exactly 0 (log-prob ``-inf``).
    """
    _check_full_pair(student_logits, teacher_logprobs)
    s = torch.log_softmax(_compute_dtype(student_logits), dim=-1)
    t = _compute_dtype(teacher_logprobs.detach()).to(s.dtype)
    return _kl_from_logprobs(s, t)


def generalized_jsd(student_logits: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """Generalised Jensen-Shannon divergence per token (the GKD convention).

    ``JSD(beta) = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)`` with the
    mixture ``m = beta * p_t + (1 - beta) * p_s``.  ``beta = 0.5`` is the usual
    symmetric JS divergence (bounded by log 2).  In general it is bounded by the
    binary entropy of beta, and symmetric under (p_t, beta) <-> (p_s, 1 - beta).

    The endpoints: at ``beta = 0`` and ``beta = 1`` the mixture equals one of
    the two distributions and the divergence is **identically 0** (no gradient).
    The limits of the *rescaled* divergence are the KLs:
    ``JSD(beta) / beta -> KL(p_t || p_s)`` (forward KL) as beta -> 0, and
    ``JSD(beta) / (1 - beta) -> KL(p_s || p_t)`` (reverse KL) as beta -> 1.
    (Some libraries special-case beta=0/1 to return those KLs; this function
    does not: use :func:`forward_kl` / :func:`reverse_kl` for them.)

    Args:
        student_logits: ``[B,T,V]`` raw student logits.
        teacher_logprobs: ``[B,T,V]`` teacher log-probs at temperature 1 (detached).
        beta: weight of the teacher in the mixture, in [0, 1] (ValueError otherwise).

    Returns:
        ``[B,T]`` per-token loss (>= 0).
    """
    _check_beta(beta)
    _check_full_pair(student_logits, teacher_logprobs)
    s = torch.log_softmax(_compute_dtype(student_logits), dim=-1)
    t = _compute_dtype(teacher_logprobs.detach()).to(s.dtype)
    return _jsd_from_logprobs(s, t, float(beta))


# ----------------------------------------------------------------------------
# teacher top-k plus a tail bucket


def topk_bucket_logprobs(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    *,
    min_teacher_tail_logprob: float | None = DEFAULT_MIN_TEACHER_TAIL_LOGPROB,
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probs over the K+1 buckets (the teacher's top-k ids, then the tail).

    Student: bucket k holds ``log p_s(id_k)``; the tail holds the log of the
    student's mass on every other token, computed exactly as a ``logsumexp``
    over the complement of the top-k ids (no ``log(1 - sum)`` cancellation),
    so it stays accurate when the tail is tiny.  The ids are integer inputs:
    no gradient flows through their choice.  If K = V the tail is empty
    (log-mass ``-inf``, zero gradient).

    Teacher: bucket k holds the given log-prob; the tail holds
    ``log1p(-sum_k p_t(id_k))``, with the sum clamped to at most 1.  The tail
    log-mass is then floored at ``min_teacher_tail_logprob`` (default -20,
    mass ~2e-9; ``None`` for no floor).  Without the floor, a teacher whose
    top-k mass rounds to 1 would make the reverse KL infinite whenever the
    student has any tail mass; with it the teacher's tail is treated as at
    least e^-20, which adds about ``e^-20 * (log(e^-20) - log(student tail))``
    to the forward KL (~1e-7 unless the student's tail is itself astronomically
    small) and less to the JSD.
    The K+1 teacher buckets may then sum to slightly more than 1; when K = V
    the teacher tail is set to ``-inf`` (no floor: the student's tail is empty too).

    Ids must be distinct per position and in ``[0, V)`` (not checked here;
    :func:`distillation_loss` checks them).

    Returns:
        ``(student_bucket_logprobs, teacher_bucket_logprobs)``, both ``[B,T,K+1]``.
    """
    _check_topk(student_logits, teacher_topk_ids, teacher_topk_logprobs)
    logits = _compute_dtype(student_logits)
    ids = teacher_topk_ids.long()
    vocab = logits.shape[-1]

    lse_all = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B,T,1]
    s_topk = logits.gather(-1, ids) - lse_all  # [B,T,K]
    in_topk = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(-1, ids, True)
    # Empty complement (K = V): logsumexp over all -inf would give a NaN
    # gradient, so compute it on zeros there and select -inf afterwards.
    empty = in_topk.all(dim=-1, keepdim=True)  # [B,T,1]
    complement = logits.masked_fill(in_topk | empty, float("-inf")).masked_fill(empty, 0.0)
    s_tail = torch.logsumexp(complement, dim=-1, keepdim=True) - lse_all
    s_tail = torch.where(empty, torch.full_like(s_tail, float("-inf")), s_tail)

    t_topk = _compute_dtype(teacher_topk_logprobs.detach()).to(logits.dtype)
    t_mass = torch.logsumexp(t_topk, dim=-1, keepdim=True).exp().clamp(max=1.0)
    t_tail = torch.log1p(-t_mass)
    if min_teacher_tail_logprob is not None:
        t_tail = t_tail.clamp(min=float(min_teacher_tail_logprob))
    if ids.shape[-1] == vocab:
        t_tail = torch.full_like(t_tail, float("-inf"))

    return torch.cat([s_topk, s_tail], dim=-1), torch.cat([t_topk, t_tail], dim=-1)


def topk_forward_kl(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    *,
    min_teacher_tail_logprob: float | None = DEFAULT_MIN_TEACHER_TAIL_LOGPROB,
) -> Tensor:
    """Forward KL(teacher || student) over the K+1 top-k-plus-tail buckets, ``[B,T]``.

    Equals :func:`forward_kl` when K = V-1, and approximately so when the
    teacher's mass outside its top-k is ~0.  Otherwise it is a lower bound of
    the full-vocabulary KL (merging tokens into a bucket can only lower a KL).
    See :func:`topk_bucket_logprobs` for the buckets and the tail floor.
    """
    s, t = topk_bucket_logprobs(
        student_logits, teacher_topk_ids, teacher_topk_logprobs,
        min_teacher_tail_logprob=min_teacher_tail_logprob,
    )
    return _kl_from_logprobs(t, s)


def topk_reverse_kl(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    *,
    min_teacher_tail_logprob: float | None = DEFAULT_MIN_TEACHER_TAIL_LOGPROB,
) -> Tensor:
    """Reverse KL(student || teacher) over the K+1 top-k-plus-tail buckets, ``[B,T]``.

    Equals :func:`reverse_kl` when K = V-1.  Unlike the forward KL, it does not
    approach the full-vocabulary reverse KL merely because the teacher's tail
    is ~0: the student's tail tokens are merged into one bucket.  A lower bound
    of the full-vocabulary reverse KL.
    """
    s, t = topk_bucket_logprobs(
        student_logits, teacher_topk_ids, teacher_topk_logprobs,
        min_teacher_tail_logprob=min_teacher_tail_logprob,
    )
    return _kl_from_logprobs(s, t)


def topk_generalized_jsd(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    beta: float = 0.5,
    *,
    min_teacher_tail_logprob: float | None = DEFAULT_MIN_TEACHER_TAIL_LOGPROB,
) -> Tensor:
    """Generalised JSD(beta) over the K+1 top-k-plus-tail buckets, ``[B,T]``.

    Same convention as :func:`generalized_jsd` (identically 0 at beta = 0 or 1).
    Equals the full-vocabulary JSD when K = V-1, and approximately so when the
    teacher's tail mass is ~0 (the student's tail tokens then each contribute
    ``(1-beta) p_s log(1/(1-beta))``, which merges exactly).
    """
    _check_beta(beta)
    s, t = topk_bucket_logprobs(
        student_logits, teacher_topk_ids, teacher_topk_logprobs,
        min_teacher_tail_logprob=min_teacher_tail_logprob,
    )
    return _jsd_from_logprobs(s, t, float(beta))


# ----------------------------------------------------------------------------
# sampled token


def token_logprobs(logits: Tensor, token_ids: Tensor) -> Tensor:
    """Log-probs ``[B,T]`` of ``token_ids [B,T]`` under ``logits [B,T,V]`` (via log_softmax)."""
    _check_logits(logits)
    if token_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"token_ids {tuple(token_ids.shape)} must be [B,T] matching logits {tuple(logits.shape)}"
        )
    logp = torch.log_softmax(_compute_dtype(logits), dim=-1)
    return logp.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)


def sampled_token_loss(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Policy-gradient surrogate on the sampled tokens, ``[B,T]``.

    With the per-token advantage ``A = (log p_t(y) - log p_s(y)).detach()`` for
    the token ``y`` the student sampled, the loss is ``-A * log p_s(y)``, whose
    gradient is ``-A * grad log p_s(y)``: a single-sample (REINFORCE) estimate
    of the gradient of the reverse KL(student || teacher) when y ~ p_s.  Its
    *value* is a surrogate, not a divergence (it can be negative); the
    per-token reverse-KL estimate itself is ``-A``.

    Args:
        student_logprobs: ``[B,T]`` student log-probs of the sampled tokens
            (with gradient; see :func:`token_logprobs`).
        teacher_logprobs: ``[B,T]`` teacher log-probs of the same tokens (detached).
    """
    if student_logprobs.shape != teacher_logprobs.shape:
        raise ValueError(
            f"student_logprobs {tuple(student_logprobs.shape)} and teacher_logprobs "
            f"{tuple(teacher_logprobs.shape)} must have the same [B,T] shape"
        )
    s = _compute_dtype(student_logprobs)
    t = _compute_dtype(teacher_logprobs.detach()).to(s.dtype)
    advantage = (t - s).detach()
    return -(advantage * s)


# ----------------------------------------------------------------------------
# reduction


def _bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the per-token shape {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1 (1 = completion token that counts)")
    return mask != 0


def masked_token_mean(per_token_loss: Tensor, mask: Tensor, *, clip_max: float | None = None,
                      keep: Tensor | None = None) -> Tensor:
    """Mean of ``per_token_loss [B,T]`` over the positions where ``mask [B,T]`` is 1.

    The mean is over all counted tokens of the batch together (each counted
    token weighs the same, whatever its sequence's length).  Masked positions
    (prompt, padding: 0 in the mask) are selected away with ``torch.where``, so
    any value there, even NaN or inf, affects neither the result nor the
    gradient reaching the counted positions.

    Args:
        per_token_loss: ``[B,T]`` losses.
        mask: ``[B,T]`` bool, or numbers that are all 0 or 1.
        clip_max: if given, each token's loss is clamped to at most ``clip_max``
            before averaging; a clipped token contributes ``clip_max`` and **no
            gradient** (``torch.clamp`` passes no gradient where it clips).
        keep: if given, ``[B,T]`` bool: counted positions where it is False
            contribute 0 and no gradient but still count in the denominator
            (the mean stays over every counted token).

    Raises:
        ValueError: the mask has no counted token (the mean would be 0/0), or a
            bad shape, or values other than 0 and 1.
    """
    m = _bool_mask(mask, per_token_loss.shape)
    count = int(m.sum())
    if count == 0:
        raise ValueError("mask counts no tokens (all zeros): nothing to average the loss over")
    loss = per_token_loss
    if clip_max is not None:
        loss = loss.clamp(max=float(clip_max))
    if keep is not None:
        m = m & keep
    loss = torch.where(m, loss, torch.zeros_like(loss))
    return loss.sum() / count


# ----------------------------------------------------------------------------
# one call


def _validate_counted(
    vocab: int,
    teacher_logprobs: Tensor | None,
    topk_ids: Tensor | None,
    topk_logprobs: Tensor | None,
    sampled_ids: Tensor | None,
    tol: float = 1e-3,
) -> None:
    """Data checks on already-sanitised inputs (masked positions hold harmless values)."""
    if teacher_logprobs is not None:
        lse = torch.logsumexp(teacher_logprobs.detach().float(), dim=-1)
        worst = float(lse.abs().max())
        if not worst <= tol:
            raise ValueError(
                "teacher_logprobs are not log-probabilities: at some counted position they sum to "
                f"exp({worst:+.3g}) instead of 1; pass log_softmax(teacher_logits) at temperature 1"
            )
    if topk_ids is not None:
        assert topk_logprobs is not None
        if int(topk_ids.min()) < 0 or int(topk_ids.max()) >= vocab:
            raise ValueError(f"teacher top-k ids must lie in [0, {vocab}) at counted positions")
        ordered = topk_ids.sort(dim=-1).values
        if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
            raise ValueError("teacher top-k ids repeat an id within a position; they must be distinct")
        lse = torch.logsumexp(topk_logprobs.detach().float(), dim=-1)
        worst = float(lse.max())
        if not worst <= tol:
            raise ValueError(
                f"teacher top-k log-probs sum to exp({worst:+.3g}) > 1 at some counted position; "
                "they must be log-probs at temperature 1"
            )
    if sampled_ids is not None:
        if int(sampled_ids.min()) < 0 or int(sampled_ids.max()) >= vocab:
            raise ValueError(f"sampled token ids must lie in [0, {vocab}) at counted positions")


def distillation_loss(
    kind: str,
    student_logits: Tensor,
    mask: Tensor,
    *,
    teacher_logprobs: Tensor | None = None,
    teacher_topk_ids: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    sampled_ids: Tensor | None = None,
    teacher_sampled_logprobs: Tensor | None = None,
    beta: float = 0.5,
    clip_max: float | None = None,
    min_teacher_tail_logprob: float | None = DEFAULT_MIN_TEACHER_TAIL_LOGPROB,
    skip_below: float | None = None,
) -> Tensor:
    """The scalar distillation loss: mean over counted tokens of a per-token loss.

    Args:
        kind: one of :data:`KINDS`:

            * ``"fkl"``: forward KL(teacher || student),
            * ``"rkl"``: reverse KL(student || teacher),
            * ``"jsd"``: generalised JSD(beta) (beta strictly inside (0, 1) here:
              at 0 or 1 it is identically zero, so a ValueError points to fkl/rkl),
            * ``"sampled"``: :func:`sampled_token_loss` on ``sampled_ids``.

            fkl/rkl/jsd take either ``teacher_logprobs`` (full vocabulary) or
            ``teacher_topk_ids`` + ``teacher_topk_logprobs`` (top-k plus tail
            bucket), not both.  ``"sampled"`` takes ``sampled_ids`` and
            ``teacher_sampled_logprobs`` and nothing else from the teacher.
        student_logits: ``[B,T,V]`` student logits at the positions that predict
            each token (the caller aligns/shifts them).
        mask: ``[B,T]``, 1 for completion tokens that count, 0 for prompt and padding.
        teacher_logprobs: ``[B,T,V]`` teacher log-probs, temperature 1.
        teacher_topk_ids, teacher_topk_logprobs: ``[B,T,K]`` teacher top-k.
        sampled_ids: ``[B,T]`` tokens the student sampled.
        teacher_sampled_logprobs: ``[B,T]`` teacher log-probs of ``sampled_ids``.
        beta: JSD weight of the teacher (``"jsd"`` only).
        clip_max: optional per-token clamp, see :func:`masked_token_mean`.
        skip_below: optional dead zone: a counted position whose divergence
            is below this many nats (for ``"sampled"``, the single-sample
            estimate ``|log p_t(y) - log p_s(y)|``) contributes 0 and no
            gradient, and still counts in the mean; where the student already
            says what the teacher would, there is nothing left to learn.
        min_teacher_tail_logprob: top-k only, see :func:`topk_bucket_logprobs`.

    Before computing, every masked position of every input is replaced by a
    harmless value (student logits 0, teacher uniform), so whatever the caller
    left there (NaN, inf, padding ids) affects neither the value nor any
    gradient.  Counted positions are checked: teacher log-probs must be
    normalised (within 1e-3 in log space), top-k ids distinct and in range.

    Raises:
        ValueError: unknown kind, missing or conflicting inputs, mismatched
            shapes or vocabularies, bad beta, bad teacher data, all-zero mask.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown distillation loss kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
    _check_logits(student_logits)
    batch_time = student_logits.shape[:2]
    vocab = student_logits.shape[-1]
    m = _bool_mask(mask, batch_time)
    m3 = m.unsqueeze(-1)

    has_full = teacher_logprobs is not None
    has_topk = teacher_topk_ids is not None or teacher_topk_logprobs is not None
    has_sampled = sampled_ids is not None or teacher_sampled_logprobs is not None

    logits = torch.where(m3, student_logits, torch.zeros((), dtype=student_logits.dtype, device=student_logits.device))

    if kind == "sampled":
        if has_full or has_topk:
            raise ValueError("kind 'sampled' uses sampled_ids and teacher_sampled_logprobs, not full or top-k teacher log-probs")
        if sampled_ids is None or teacher_sampled_logprobs is None:
            raise ValueError("kind 'sampled' needs both sampled_ids and teacher_sampled_logprobs ([B,T])")
        if sampled_ids.shape != batch_time or teacher_sampled_logprobs.shape != batch_time:
            raise ValueError(
                f"sampled_ids {tuple(sampled_ids.shape)} and teacher_sampled_logprobs "
                f"{tuple(teacher_sampled_logprobs.shape)} must both be [B,T]={tuple(batch_time)}"
            )
        ids = torch.where(m, sampled_ids.long(), torch.zeros((), dtype=torch.long, device=sampled_ids.device))
        t = teacher_sampled_logprobs.detach()
        t = torch.where(m, t, torch.zeros((), dtype=t.dtype, device=t.device))
        _validate_counted(vocab, None, None, None, ids)
        s_logp = token_logprobs(logits, ids)
        per_token = sampled_token_loss(s_logp, t)
        keep = None if skip_below is None else (t - s_logp.detach()).abs() >= skip_below
        return masked_token_mean(per_token, m, clip_max=clip_max, keep=keep)

    if has_sampled:
        raise ValueError(f"kind {kind!r} does not use sampled_ids / teacher_sampled_logprobs")
    if kind == "jsd":
        _check_beta(beta)
        if beta in (0, 1):
            hint = (
                "JSD/beta -> forward KL as beta -> 0: use kind='fkl'"
                if beta == 0
                else "JSD/(1-beta) -> reverse KL as beta -> 1: use kind='rkl'"
            )
            raise ValueError(
                f"kind 'jsd' needs beta strictly between 0 and 1: at beta={beta} JSD(beta) is "
                f"identically zero (no training signal); {hint}"
            )
    if has_full == has_topk:
        raise ValueError(
            f"kind {kind!r} needs exactly one teacher: teacher_logprobs [B,T,V], or "
            "teacher_topk_ids + teacher_topk_logprobs [B,T,K]"
        )

    if has_full:
        assert teacher_logprobs is not None
        _check_full_pair(student_logits, teacher_logprobs)
        t = teacher_logprobs.detach()
        t = torch.where(m3, t, torch.full((), -math.log(vocab), dtype=t.dtype, device=t.device))
        _validate_counted(vocab, t, None, None, None)
        if kind == "fkl":
            per_token = forward_kl(logits, t)
        elif kind == "rkl":
            per_token = reverse_kl(logits, t)
        else:
            per_token = generalized_jsd(logits, t, beta)
        return masked_token_mean(per_token, m, clip_max=clip_max, keep=_keep(per_token, skip_below))

    if teacher_topk_ids is None or teacher_topk_logprobs is None:
        raise ValueError("top-k distillation needs both teacher_topk_ids and teacher_topk_logprobs")
    _check_topk(student_logits, teacher_topk_ids, teacher_topk_logprobs)
    k = teacher_topk_ids.shape[-1]
    filler_ids = torch.arange(k, device=teacher_topk_ids.device).expand_as(teacher_topk_ids)
    ids = torch.where(m3, teacher_topk_ids.long(), filler_ids)
    tk = teacher_topk_logprobs.detach()
    tk = torch.where(m3, tk, torch.full((), -math.log(k + 1), dtype=tk.dtype, device=tk.device))
    _validate_counted(vocab, None, ids, tk, None)
    opts = {"min_teacher_tail_logprob": min_teacher_tail_logprob}
    if kind == "fkl":
        per_token = topk_forward_kl(logits, ids, tk, **opts)
    elif kind == "rkl":
        per_token = topk_reverse_kl(logits, ids, tk, **opts)
    else:
        per_token = topk_generalized_jsd(logits, ids, tk, beta, **opts)
    return masked_token_mean(per_token, m, clip_max=clip_max, keep=_keep(per_token, skip_below))


def _keep(per_token: Tensor, skip_below: float | None) -> Tensor | None:
    return None if skip_below is None else per_token.detach() >= skip_below
