"""learner.losses against float64 references written independently here.

References use explicit probabilities (exp / sum, then log) and, for the top-k
buckets, explicit per-position Python loops; gradients are compared with the
references' autograd gradients and with finite differences (gradcheck).
All tensors are tiny, so the file runs in a few seconds on one CPU thread.
"""
from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (
    KINDS,
    check_vocab_match,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    masked_token_mean,
    reverse_kl,
    sampled_token_loss,
    token_logprobs,
    topk_bucket_logprobs,
    topk_forward_kl,
    topk_generalized_jsd,
    topk_reverse_kl,
)

torch.set_num_threads(1)

B, T, V, K = 2, 3, 7, 3
SEEDS = (0, 1, 2, 3)
F64 = torch.float64


# ----------------------------------------------------------------------------
# independent float64 references


def ref_probs(logits: torch.Tensor) -> torch.Tensor:
    z = logits - logits.max(dim=-1, keepdim=True).values
    e = z.exp()
    return e / e.sum(dim=-1, keepdim=True)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum p log(p/q) over the last dim, from probabilities (0 log 0 = 0)."""
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    return torch.where(p > 0, p * (torch.log(safe_p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def ref_fkl(student_logits, teacher_probs):
    return ref_kl(teacher_probs, ref_probs(student_logits))


def ref_rkl(student_logits, teacher_probs):
    return ref_kl(ref_probs(student_logits), teacher_probs)


def ref_jsd(student_logits, teacher_probs, beta):
    ps = ref_probs(student_logits)
    m = beta * teacher_probs + (1 - beta) * ps
    return beta * ref_kl(teacher_probs, m) + (1 - beta) * ref_kl(ps, m)


def ref_buckets(student_logits, ids, teacher_topk_logprobs):
    """Bucket probabilities [B,T,K+1] by explicit loops: the ids, then the tail."""
    ps = ref_probs(student_logits)
    b, t, k = ids.shape
    s_rows, t_rows = [], []
    for i in range(b):
        for j in range(t):
            chosen = [int(x) for x in ids[i, j]]
            rest = [v for v in range(student_logits.shape[-1]) if v not in chosen]
            s_b = [ps[i, j, v] for v in chosen]
            s_b.append(sum((ps[i, j, v] for v in rest), torch.zeros((), dtype=F64)))
            t_b = [teacher_topk_logprobs[i, j, n].exp() for n in range(k)]
            t_b.append(1.0 - sum(t_b))
            s_rows.append(torch.stack(s_b))
            t_rows.append(torch.stack(t_b))
    return torch.stack(s_rows).reshape(b, t, k + 1), torch.stack(t_rows).reshape(b, t, k + 1)


def ref_topk(kind, student_logits, ids, teacher_topk_logprobs, beta=0.5):
    ps, pt = ref_buckets(student_logits, ids, teacher_topk_logprobs)
    if kind == "fkl":
        return ref_kl(pt, ps)
    if kind == "rkl":
        return ref_kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * ref_kl(pt, m) + (1 - beta) * ref_kl(ps, m)


# ----------------------------------------------------------------------------
# inputs


def make_full(seed: int, scale: float = 3.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(B, T, V, generator=g, dtype=F64) * scale).to(dtype)
    teacher_logits = torch.randn(B, T, V, generator=g, dtype=F64) * scale
    teacher_logprobs = torch.log_softmax(teacher_logits, dim=-1).to(dtype)
    weights = torch.rand(B, T, generator=g, dtype=F64) + 0.5
    return student, teacher_logprobs, weights


def make_topk(seed: int, k: int = K, scale: float = 2.0, random_ids: bool = True):
    """Student logits, teacher top-k (ids, log-probs), per-token weights, teacher full log-probs."""
    g = torch.Generator().manual_seed(1000 + seed)
    student = torch.randn(B, T, V, generator=g, dtype=F64) * scale
    teacher_full = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=F64) * scale, dim=-1)
    if random_ids:  # any distinct ids, in no particular order
        ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B * T)]).reshape(B, T, k)
    else:
        ids = teacher_full.topk(k, dim=-1).indices
    weights = torch.rand(B, T, generator=g, dtype=F64) + 0.5
    return student, ids, teacher_full.gather(-1, ids), weights, teacher_full


def value_and_grad(fn, logits: torch.Tensor, weights: torch.Tensor):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad


FULL = {
    "fkl": (forward_kl, lambda s, pt, beta: ref_fkl(s, pt)),
    "rkl": (reverse_kl, lambda s, pt, beta: ref_rkl(s, pt)),
    "jsd": (generalized_jsd, ref_jsd),
}
TOPK = {"fkl": topk_forward_kl, "rkl": topk_reverse_kl, "jsd": topk_generalized_jsd}


def call_full(kind, s, t, beta=0.5):
    return generalized_jsd(s, t, beta) if kind == "jsd" else FULL[kind][0](s, t)


def call_topk(kind, s, ids, lp, beta=0.5, **kw):
    return TOPK[kind](s, ids, lp, beta, **kw) if kind == "jsd" else TOPK[kind](s, ids, lp, **kw)


# ----------------------------------------------------------------------------
# full vocabulary


@pytest.mark.parametrize("seed", SEEDS)
def test_forward_kl_matches_float64_reference_values_and_gradients(seed):
    s, t, w = make_full(seed)
    got, got_grad = value_and_grad(lambda x: forward_kl(x, t), s, w)
    want, want_grad = value_and_grad(lambda x: ref_fkl(x, t.exp()), s, w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    assert (got >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_reverse_kl_matches_float64_reference_values_and_gradients(seed):
    s, t, w = make_full(seed)
    got, got_grad = value_and_grad(lambda x: reverse_kl(x, t), s, w)
    want, want_grad = value_and_grad(lambda x: ref_rkl(x, t.exp()), s, w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    assert (got >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_float64_reference_values_and_gradients(seed, beta):
    s, t, w = make_full(seed)
    got, got_grad = value_and_grad(lambda x: generalized_jsd(x, t, beta), s, w)
    want, want_grad = value_and_grad(lambda x: ref_jsd(x, t.exp(), beta), s, w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    # bounded by the binary entropy of beta (log 2 at beta = 1/2)
    assert (got >= 0).all() and (got <= -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta)) + 1e-12).all()


def test_generalized_jsd_at_half_is_symmetric_in_student_and_teacher():
    s, t, _ = make_full(5)
    t_logits = t  # log-probs are valid logits too
    a = generalized_jsd(s, t, 0.5)
    b = generalized_jsd(t_logits, torch.log_softmax(s, -1), 0.5)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_generalized_jsd_is_zero_at_beta_0_and_1_and_its_rescaled_limits_are_forward_and_reverse_kl():
    s, t, w = make_full(6)
    for beta in (0.0, 1.0):
        val, grad = value_and_grad(lambda x: generalized_jsd(x, t, beta), s, w)
        assert torch.equal(val, torch.zeros_like(val))
        assert torch.equal(grad, torch.zeros_like(grad))
    # the O(beta) correction is large where one side has tiny probabilities, so go close to the limit
    eps = 1e-8
    torch.testing.assert_close(generalized_jsd(s, t, eps) / eps, forward_kl(s, t), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(generalized_jsd(s, t, 1 - eps) / eps, reverse_kl(s, t), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("beta", [-0.1, 1.0001, float("nan"), "0.5"])
def test_generalized_jsd_rejects_beta_outside_unit_interval(beta):
    s, t, _ = make_full(0)
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\]"):
        generalized_jsd(s, t, beta)
    ids = t.topk(K, -1).indices
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\]"):
        topk_generalized_jsd(s, ids, t.gather(-1, ids), beta)


def test_full_vocab_losses_match_finite_difference_gradients():
    s, t, _ = make_full(7, scale=1.5)
    s = s[:1, :2].clone().requires_grad_(True)
    t = t[:1, :2]
    ids = t.topk(K, -1).indices
    lp = t.gather(-1, ids)
    fns = [
        lambda x: forward_kl(x, t),
        lambda x: reverse_kl(x, t),
        lambda x: generalized_jsd(x, t, 0.3),
        lambda x: topk_forward_kl(x, ids, lp),
        lambda x: topk_reverse_kl(x, ids, lp),
        lambda x: topk_generalized_jsd(x, ids, lp, 0.7),
    ]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_no_gradient_reaches_the_teacher_inputs():
    s, t, _ = make_full(8)
    t = t.clone().requires_grad_(True)
    ids = t.detach().topk(K, -1).indices
    lp = t.detach().gather(-1, ids).clone().requires_grad_(True)
    total = forward_kl(s, t).sum() + reverse_kl(s, t).sum() + generalized_jsd(s, t).sum()
    total = total + sum(call_topk(k, s, ids, lp).sum() for k in TOPK)
    assert not total.requires_grad  # student logits here need no grad, teacher is detached
    s = s.clone().requires_grad_(True)
    (forward_kl(s, t).sum() + topk_reverse_kl(s, ids, lp).sum()).backward()
    assert t.grad is None and lp.grad is None and s.grad is not None


def test_half_precision_inputs_are_computed_in_float32():
    s, t, _ = make_full(9, dtype=torch.bfloat16)
    out = forward_kl(s, t)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------
# top-k with a tail bucket


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_topk_losses_match_float64_reference_values_and_gradients(seed, kind):
    s, ids, lp, w, _ = make_topk(seed)
    beta = 0.3
    got, got_grad = value_and_grad(lambda x: call_topk(kind, x, ids, lp, beta), s, w)
    want, want_grad = value_and_grad(lambda x: ref_topk(kind, x, ids, lp, beta), s, w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_topk_with_k_equal_vocab_minus_one_matches_full_vocab_loss_and_gradient(seed, kind):
    s, ids, lp, w, t_full = make_topk(seed, k=V - 1)
    got, got_grad = value_and_grad(lambda x: call_topk(kind, x, ids, lp, 0.4), s, w)
    want, want_grad = value_and_grad(lambda x: call_full(kind, x, t_full, 0.4), s, w)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["fkl", "jsd"])
def test_topk_with_negligible_teacher_tail_matches_full_vocab_forward_kl_and_jsd(seed, kind):
    # The teacher puts ~all mass (tail ~1e-13) on K tokens; the student is spread out.
    s, ids, _, w, _ = make_topk(seed, random_ids=False)
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.full((B, T, V), -30.0, dtype=F64)
    t_logits.scatter_(-1, ids, torch.randn(B, T, K, generator=g, dtype=F64))
    t_full = torch.log_softmax(t_logits, -1)
    lp = t_full.gather(-1, ids)
    want, want_grad = value_and_grad(lambda x: call_full(kind, x, t_full, 0.6), s, w)
    # exact tail (no floor): agrees to ~1e-11
    got, got_grad = value_and_grad(
        lambda x: call_topk(kind, x, ids, lp, 0.6, min_teacher_tail_logprob=None), s, w)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-10)
    # default floor (teacher tail raised from ~e^-28 to e^-20): still agrees to ~1e-7
    got, got_grad = value_and_grad(lambda x: call_topk(kind, x, ids, lp, 0.6), s, w)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=2e-7)


def test_topk_reverse_kl_is_a_lower_bound_of_full_vocab_reverse_kl():
    for seed in SEEDS:
        s, ids, lp, _, t_full = make_topk(seed)
        assert (topk_reverse_kl(s, ids, lp) <= reverse_kl(s, t_full) + 1e-12).all()
        assert (topk_forward_kl(s, ids, lp) <= forward_kl(s, t_full) + 1e-12).all()


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_topk_with_k_equal_vocab_has_empty_tail_finite_gradients_and_matches_full_vocab(kind):
    s, ids, lp, w, t_full = make_topk(3, k=V)
    s_b, t_b = topk_bucket_logprobs(s, ids, lp)
    assert s_b[..., -1].eq(float("-inf")).all() and t_b[..., -1].eq(float("-inf")).all()
    got, got_grad = value_and_grad(lambda x: call_topk(kind, x, ids, lp), s, w)
    want, want_grad = value_and_grad(lambda x: call_full(kind, x, t_full), s, w)
    assert torch.isfinite(got_grad).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-11)


def test_topk_student_tail_log_mass_is_accurate_when_the_tail_is_tiny():
    # Student mass outside the top-k is ~e^-80: 1 - sum(top-k) would round to 0.
    s = torch.zeros(1, 1, V, dtype=F64)
    s[..., K:] = -80.0
    ids = torch.arange(K).reshape(1, 1, K)
    lp = torch.full((1, 1, K), -math.log(K + 1), dtype=F64)
    s_b, _ = topk_bucket_logprobs(s, ids, lp)
    want = math.log((V - K) * math.exp(-80.0)) - math.log(K + (V - K) * math.exp(-80.0))
    assert abs(float(s_b[0, 0, -1]) - want) < 1e-9


def test_topk_teacher_tail_floor_keeps_reverse_kl_finite_when_teacher_topk_mass_rounds_to_one():
    s, ids, _, w, _ = make_topk(4)
    lp = torch.full((B, T, K), -math.log(K), dtype=F64)  # top-k mass exactly 1: tail 0
    with_floor, grad = value_and_grad(lambda x: topk_reverse_kl(x, ids, lp), s, w)
    assert torch.isfinite(with_floor).all() and torch.isfinite(grad).all()
    no_floor = topk_reverse_kl(s, ids, lp, min_teacher_tail_logprob=None)
    assert torch.isinf(no_floor).all()  # the exact value: student has tail mass, teacher none
    _, t_b = topk_bucket_logprobs(s, ids, lp)
    assert torch.allclose(t_b[..., -1], torch.full((B, T), -20.0, dtype=F64))
    # the forward KL barely notices the floor
    torch.testing.assert_close(
        topk_forward_kl(s, ids, lp), topk_forward_kl(s, ids, lp, min_teacher_tail_logprob=None),
        rtol=0, atol=1e-6,
    )


# ----------------------------------------------------------------------------
# extreme logits


def test_all_losses_are_finite_with_gradients_for_logits_of_magnitude_1e4():
    g = torch.Generator().manual_seed(11)
    s = torch.randn(B, T, V, generator=g)
    s[0, :, 0] = 1e4
    s[1, :, 1] = -1e4
    s[1, 0, 2] = 1e4
    t_logits = torch.randn(B, T, V, generator=g)
    t_logits[0, :, 3] = 1e4
    t_logits[1, :, 0] = -1e4
    t = torch.log_softmax(t_logits, -1)
    ids = t.topk(K, -1).indices
    lp = t.gather(-1, ids)
    sampled = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    for dtype in (torch.float32, F64):
        x = s.to(dtype).requires_grad_(True)
        td, lpd = t.to(dtype), lp.to(dtype)
        losses = [call_full(k, x, td, 0.5) for k in ("fkl", "rkl", "jsd")]
        losses += [call_topk(k, x, ids, lpd, 0.5) for k in TOPK]
        losses.append(sampled_token_loss(token_logprobs(x, sampled), td.gather(-1, sampled[..., None])[..., 0]))
        for loss in losses:
            assert torch.isfinite(loss).all()
            (grad,) = torch.autograd.grad(loss.sum(), x)
            assert torch.isfinite(grad).all()
        for kind in KINDS:
            kw = (
                {"sampled_ids": sampled, "teacher_sampled_logprobs": td.gather(-1, sampled[..., None])[..., 0]}
                if kind == "sampled"
                else {"teacher_topk_ids": ids, "teacher_topk_logprobs": lpd}
            )
            assert torch.isfinite(distillation_loss(kind, x, mask, **kw))
    # float32 agrees with float64 on the same extreme inputs
    torch.testing.assert_close(reverse_kl(s, t).double(), reverse_kl(s.double(), t.double()), rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------
# sampled token


@pytest.mark.parametrize("seed", SEEDS)
def test_sampled_token_loss_gradient_is_minus_advantage_times_grad_log_prob(seed):
    s, t, w = make_full(seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (B, T), generator=g)
    t_y = t.gather(-1, y[..., None])[..., 0]
    # direct: d loss / d log p_s = -A
    s_lp = token_logprobs(s, y).detach().requires_grad_(True)
    loss = sampled_token_loss(s_lp, t_y)
    adv = t_y - s_lp.detach()
    torch.testing.assert_close(loss.detach(), -(adv * s_lp.detach()))
    (loss * w).sum().backward()
    torch.testing.assert_close(s_lp.grad, -adv * w)
    # through the logits: d log p_s(y) / d logits = onehot(y) - softmax(logits)
    x = s.clone().requires_grad_(True)
    (sampled_token_loss(token_logprobs(x, y), t_y) * w).sum().backward()
    dlogp = torch.nn.functional.one_hot(y, V).to(F64) - ref_probs(s)
    torch.testing.assert_close(x.grad, (-adv * w)[..., None] * dlogp, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# reducer


def test_masked_token_mean_ignores_masked_positions_in_value_and_gradient():
    g = torch.Generator().manual_seed(12)
    loss_clean = torch.rand(B, T, generator=g, dtype=F64)
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    garbage = loss_clean.clone()
    garbage[mask == 0] = torch.tensor([1e30, -1e30, float("nan")], dtype=F64)
    outs = []
    for base in (loss_clean, garbage):
        x = base.clone().requires_grad_(True)
        out = masked_token_mean(x, mask)
        out.backward()
        outs.append((out.detach(), x.grad))
    (v0, g0), (v1, g1) = outs
    assert torch.equal(v0, v1)
    assert torch.equal(g0, g1)
    torch.testing.assert_close(v0, loss_clean[mask == 1].mean())
    assert torch.equal(g0, mask.to(F64) / 3)
    # bool mask gives the same
    assert torch.equal(masked_token_mean(garbage, mask.bool()), v0)


def test_masked_token_mean_clip_caps_each_token_loss_and_stops_its_gradient():
    x = torch.tensor([[0.5, 3.0, 10.0]], dtype=F64, requires_grad=True)
    mask = torch.ones(1, 3)
    out = masked_token_mean(x, mask, clip_max=2.0)
    out.backward()
    torch.testing.assert_close(out.detach(), torch.tensor((0.5 + 2.0 + 2.0) / 3, dtype=F64))
    torch.testing.assert_close(x.grad, torch.tensor([[1 / 3, 0.0, 0.0]], dtype=F64))


def test_masked_token_mean_raises_on_all_zero_mask_instead_of_returning_nan():
    with pytest.raises(ValueError, match="counts no tokens"):
        masked_token_mean(torch.rand(B, T), torch.zeros(B, T))
    with pytest.raises(ValueError, match="counts no tokens"):
        distillation_loss("fkl", torch.randn(B, T, V), torch.zeros(B, T),
                          teacher_logprobs=torch.log_softmax(torch.randn(B, T, V), -1))


def test_masked_token_mean_rejects_non_binary_mask_and_wrong_shape():
    with pytest.raises(ValueError, match="only 0 and 1"):
        masked_token_mean(torch.rand(B, T), torch.full((B, T), 0.5))
    with pytest.raises(ValueError, match="mask shape"):
        masked_token_mean(torch.rand(B, T), torch.ones(B, T + 1))


# ----------------------------------------------------------------------------
# dispatch


def _dispatch_inputs(seed: int):
    s, ids, lp, w, t_full = make_topk(seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (B, T), generator=g)
    return s, ids, lp, t_full, y, t_full.gather(-1, y[..., None])[..., 0]


def _kind_kwargs(kind, teacher, ids, lp, t_full, y, t_y):
    if kind == "sampled":
        return {"sampled_ids": y, "teacher_sampled_logprobs": t_y}
    if teacher == "full":
        return {"teacher_logprobs": t_full}
    return {"teacher_topk_ids": ids, "teacher_topk_logprobs": lp}


CASES = [("fkl", "full"), ("rkl", "full"), ("jsd", "full"),
         ("fkl", "topk"), ("rkl", "topk"), ("jsd", "topk"), ("sampled", None)]


@pytest.mark.parametrize("kind,teacher", CASES)
def test_distillation_loss_equals_masked_mean_of_the_direct_per_token_loss(kind, teacher):
    s, ids, lp, t_full, y, t_y = _dispatch_inputs(2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    got = distillation_loss(kind, s, mask, beta=0.3, clip_max=5.0,
                            **_kind_kwargs(kind, teacher, ids, lp, t_full, y, t_y))
    if kind == "sampled":
        per_token = sampled_token_loss(token_logprobs(s, y), t_y)
    elif teacher == "full":
        per_token = call_full(kind, s, t_full, 0.3)
    else:
        per_token = call_topk(kind, s, ids, lp, 0.3)
    torch.testing.assert_close(got, per_token.clamp(max=5.0)[mask == 1].mean(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind,teacher", CASES)
def test_distillation_loss_ignores_nan_and_inf_garbage_at_masked_positions(kind, teacher):
    s, ids, lp, t_full, y, t_y = _dispatch_inputs(3)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    off = mask == 0
    dirty = dict(s=s.clone(), ids=ids.clone(), lp=lp.clone(), t_full=t_full.clone(), y=y.clone(), t_y=t_y.clone())
    dirty["s"][off] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, 0, 0, 0], dtype=F64)
    dirty["ids"][off] = torch.tensor([-1, V + 5, V + 5])  # out of range and repeated
    dirty["lp"][off] = float("nan")
    dirty["t_full"][off] = float("nan")
    dirty["y"][off] = -7
    dirty["t_y"][off] = float("inf")
    results = []
    for d in ({"s": s, "ids": ids, "lp": lp, "t_full": t_full, "y": y, "t_y": t_y}, dirty):
        x = d["s"].clone().requires_grad_(True)
        out = distillation_loss(kind, x, mask, beta=0.5,
                                **_kind_kwargs(kind, teacher, d["ids"], d["lp"], d["t_full"], d["y"], d["t_y"]))
        out.backward()
        results.append((out.detach(), x.grad))
    (v_clean, g_clean), (v_dirty, g_dirty) = results
    assert torch.isfinite(v_dirty) and torch.isfinite(g_dirty).all()
    torch.testing.assert_close(v_dirty, v_clean, rtol=0, atol=0)
    torch.testing.assert_close(g_dirty, g_clean, rtol=0, atol=0)
    assert g_dirty[off].eq(0).all()


def test_distillation_loss_rejects_unknown_kind_naming_the_allowed_kinds():
    s, ids, lp, t_full, *_ = _dispatch_inputs(0)
    with pytest.raises(ValueError, match="unknown distillation loss kind 'kl'.*fkl, rkl, jsd, sampled"):
        distillation_loss("kl", s, torch.ones(B, T), teacher_logprobs=t_full)


def test_distillation_loss_rejects_missing_conflicting_or_wrong_teacher_inputs():
    s, ids, lp, t_full, y, t_y = _dispatch_inputs(0)
    mask = torch.ones(B, T)
    with pytest.raises(ValueError, match="exactly one teacher"):
        distillation_loss("fkl", s, mask)
    with pytest.raises(ValueError, match="exactly one teacher"):
        distillation_loss("rkl", s, mask, teacher_logprobs=t_full, teacher_topk_ids=ids, teacher_topk_logprobs=lp)
    with pytest.raises(ValueError, match="needs both"):
        distillation_loss("fkl", s, mask, teacher_topk_ids=ids)
    with pytest.raises(ValueError, match="needs both sampled_ids"):
        distillation_loss("sampled", s, mask, sampled_ids=y)
    with pytest.raises(ValueError, match="not full or top-k"):
        distillation_loss("sampled", s, mask, sampled_ids=y, teacher_sampled_logprobs=t_y, teacher_logprobs=t_full)
    with pytest.raises(ValueError, match="does not use sampled_ids"):
        distillation_loss("fkl", s, mask, teacher_logprobs=t_full, sampled_ids=y)
    with pytest.raises(ValueError, match="not log-probabilities"):
        distillation_loss("fkl", s, mask, teacher_logprobs=t_full + 1.0)  # logits, not log-probs
    dup = ids.clone()
    dup[0, 0, 1] = dup[0, 0, 0]
    with pytest.raises(ValueError, match="distinct"):
        distillation_loss("fkl", s, mask, teacher_topk_ids=dup, teacher_topk_logprobs=lp)
    bad = ids.clone()
    bad[1, 2, 0] = V
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        distillation_loss("fkl", s, mask, teacher_topk_ids=bad, teacher_topk_logprobs=lp)
    with pytest.raises(ValueError, match="sum to"):
        distillation_loss("fkl", s, mask, teacher_topk_ids=ids, teacher_topk_logprobs=lp + 1.0)


@pytest.mark.parametrize("beta,hint", [(0.0, "fkl"), (1.0, "rkl")])
def test_distillation_loss_rejects_jsd_at_beta_endpoints_where_it_is_identically_zero(beta, hint):
    s, ids, lp, t_full, *_ = _dispatch_inputs(0)
    with pytest.raises(ValueError, match=f"identically zero.*kind='{hint}'"):
        distillation_loss("jsd", s, torch.ones(B, T), teacher_logprobs=t_full, beta=beta)


def test_vocab_size_mismatch_raises_a_clear_value_error():
    check_vocab_match(V, V)
    with pytest.raises(ValueError, match="vocabulary sizes differ: student has 7 tokens, teacher has 8"):
        check_vocab_match(7, 8)
    s = torch.randn(B, T, V, dtype=F64)
    t8 = torch.log_softmax(torch.randn(B, T, V + 1, dtype=F64), -1)
    for fn in (forward_kl, reverse_kl, generalized_jsd):
        with pytest.raises(ValueError, match="vocabulary sizes differ"):
            fn(s, t8)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        distillation_loss("fkl", s, torch.ones(B, T), teacher_logprobs=t8)


@pytest.mark.parametrize("kind, teacher", [(k, t) for k in ("fkl", "rkl", "jsd") for t in ("full", "topk")]
                         + [("sampled", "full")])
def test_the_dead_zone_drops_positions_below_it_from_value_and_gradient_but_not_from_the_count(kind, teacher):
    s, ids, lp, t_full, y, t_y = _dispatch_inputs(21)
    kwargs = _kind_kwargs(kind, teacher, ids, lp, t_full, y, t_y)
    mask = torch.ones(B, T)
    x = s.clone().requires_grad_(True)
    per_token = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": generalized_jsd}
    if kind == "sampled":
        s_y = token_logprobs(x, y)
        ref = sampled_token_loss(s_y, t_y)
        gap = (t_y - s_y).detach().abs()
    elif teacher == "full":
        ref = per_token[kind](x, t_full)
        gap = ref.detach()
    else:
        ref = {"fkl": topk_forward_kl, "rkl": topk_reverse_kl, "jsd": topk_generalized_jsd}[kind](x, ids, lp)
        gap = ref.detach()
    threshold = float(gap.flatten().sort().values[gap.numel() // 2])  # about half the positions below it
    keep = gap >= threshold
    assert 0 < int(keep.sum()) < keep.numel()
    want = torch.where(keep, ref, torch.zeros_like(ref)).sum() / keep.numel()
    want.backward()
    want_grad = x.grad.clone()
    x.grad = None
    got = distillation_loss(kind, x, mask, skip_below=threshold, **kwargs)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-10, atol=1e-12)
