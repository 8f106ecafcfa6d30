"""One OPSD step checked against an independent computation: every sequence run
alone, unpadded, in float64, its per-token divergence written out from the
definitions.  The loss value and the gradient of every parameter must agree,
for every loss and every option that changes the target."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from learner.distill import on_teacher_path, opsd_loss, sample
from learner.scoring import TorchScorer
from learner.tokenizer import ChatEncoder
from simulators.tinyworld.experiment import lessons


class FixedSampler:
    """Hands out completions drawn once, so both computations see the same batch."""

    def __init__(self, completions):
        self.completions = completions

    def sample(self, prompts, seed=0):
        assert len(prompts) == len(self.completions)
        return [list(c) for c in self.completions]


@pytest.fixture(scope="module")
def batch(base, tokenizer):
    enc = ChatEncoder(tokenizer)
    lessons_ = next(lessons("facts", 3, seed=3)) + next(lessons("rule", 3, seed=3))
    torch.manual_seed(0)
    completions = sample(base, enc, [l.student for l in lessons_])
    return enc, lessons_, completions


@pytest.fixture(scope="module")
def student(base):
    """The base model moved a little, so the student, its teacher and its base all differ."""
    torch.manual_seed(1)
    s = copy.deepcopy(base)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return s


def _positions(model, enc, prompt, completion):
    """Log-probs [n,V] that predict each completion token, the sequence run alone (no batch, no padding)."""
    head = enc.encode(list(prompt), add_generation_prompt=True)[0]
    logits = model(torch.tensor([head + completion])).logits[0]
    return torch.log_softmax(logits[len(head) - 1: len(head) - 1 + len(completion)], -1)


def reference(student, teacher, base, enc, lessons_, completions, *, loss, temperature=1.0, cut_below=None,
              base_kl=0.0, skip_below=None):
    """The loss and the student's gradients, in float64, from the definitions."""
    s64, t64, b64 = (copy.deepcopy(m).double() for m in (student, teacher, base))
    s64.zero_grad()
    terms, counted, regulariser, tokens = [], 0, [], 0
    for lesson, comp in zip(lessons_, completions):
        ls = _positions(s64, enc, lesson.student, comp)
        with torch.no_grad():
            lt = torch.log_softmax(_positions(t64, enc, lesson.teacher, comp) / temperature, -1)
            lb = _positions(b64, enc, lesson.student, comp)
        y = torch.tensor(comp)
        on_path = True
        for j in range(len(comp)):
            if on_path:
                if loss == "fkl":
                    term = (lt[j].exp() * (lt[j] - ls[j])).sum()
                    gap = term.item()
                elif loss == "rkl":
                    term = (ls[j].exp() * (ls[j] - lt[j])).sum()
                    gap = term.item()
                else:  # sampled: -(log p_t(y) - log p_s(y)) * log p_s(y), the advantage a constant
                    advantage = (lt[j, y[j]] - ls[j, y[j]]).detach()
                    term = -advantage * ls[j, y[j]]
                    gap = abs(advantage.item())
                if skip_below is None or gap >= skip_below:  # a dead-zone position adds nothing but still counts
                    terms.append(term)
                counted += 1
            if cut_below is not None and lt[j, y[j]].exp() < cut_below:
                on_path = False  # this token still counted; none after it does
            regulariser.append((ls[j].exp() * (ls[j] - lb[j])).sum())
            tokens += 1
    value = torch.stack(terms).sum() / counted
    if base_kl:
        value = value + base_kl * torch.stack(regulariser).sum() / tokens
    value.backward()
    return value.item(), {n: p.grad.clone() for n, p in s64.named_parameters()}


CASES = [
    {"loss": "fkl"},
    {"loss": "rkl"},
    {"loss": "sampled"},
    {"loss": "fkl", "temperature": 0.5},
    {"loss": "fkl", "cut_below": 0.05},
    {"loss": "sampled", "cut_below": 0.05},
    {"loss": "rkl", "base_kl": 0.5},
    {"loss": "fkl", "skip_below": 0.01},
    {"loss": "sampled", "skip_below": 0.01},
    {"loss": "fkl", "temperature": 2.0, "cut_below": 0.05, "base_kl": 1.0},
    {"loss": "fkl", "temperature": 0.5, "cut_below": 0.1, "skip_below": 0.05},
    {"loss": "fkl", "samples": 2},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_an_opsd_step_matches_a_float64_computation_from_the_definitions(base, student, batch, case):
    enc, lessons_, completions = batch
    samples = case.get("samples", 1)
    if samples > 1:  # each lesson sampled again: its second completion is another lesson's, the same for both sides
        completions = [completions[(i + k) % len(completions)] for i in range(len(lessons_)) for k in range(samples)]
    seen = [l for l in lessons_ for _ in range(samples)]
    want, want_grads = reference(student, base, base, enc, seen, completions,
                                 **{k: v for k, v in case.items() if k != "samples"})
    s = copy.deepcopy(student)
    s.zero_grad()
    got, info = opsd_loss(s, FixedSampler(completions), TorchScorer(base, enc), enc, lessons_, case["loss"],
                          teacher_temperature=case.get("temperature", 1.0), cut_below=case.get("cut_below"),
                          base=TorchScorer(base, enc), base_kl=case.get("base_kl", 0.0),
                          skip_below=case.get("skip_below"), samples=samples)
    got.backward()
    assert info["tokens"] == sum(len(c) for c in completions)
    assert math.isclose(got.item(), want, rel_tol=1e-4, abs_tol=1e-6), (got.item(), want)
    worst = max(float((p.grad.double() - want_grads[n]).abs().max()) / (float(want_grads[n].abs().max()) + 1e-12)
                for n, p in s.named_parameters())
    assert worst < 1e-3, worst


def test_the_cut_leaves_some_positions_out_on_this_batch(base, batch):
    """The cut case above would prove nothing if no completion here left the teacher's path."""
    enc, lessons_, completions = batch
    scores = TorchScorer(base, enc).score([l.teacher for l in lessons_], completions)
    mask = torch.zeros(scores.sampled.shape)
    for i, c in enumerate(completions):
        mask[i, : len(c)] = 1
    kept = on_teacher_path(scores.sampled, mask, 0.05) * mask
    assert 0 < kept.sum() < mask.sum()


def test_the_dead_zone_leaves_some_positions_out_on_this_batch(base, student, batch):
    enc, lessons_, completions = batch
    args = (student, FixedSampler(completions), TorchScorer(base, enc), enc, lessons_, "fkl")
    everything, _ = opsd_loss(*args)
    some, _ = opsd_loss(*args, skip_below=0.01)
    assert 0 < some.item() < everything.item()


def test_a_step_with_nothing_left_to_learn_does_not_move_the_weights(base, tokenizer):
    """Adam's momentum would move every weight on a step whose gradient is zero; such a step is skipped."""
    from dataclasses import replace

    from learner.loop import Learner, LearnConfig
    from learner.teacher_state import TeacherConfig, TeacherState

    enc = ChatEncoder(tokenizer)
    student = copy.deepcopy(base)
    cfg = LearnConfig(batch_size=4, lr=1e-3)
    learner = Learner(student, enc, cfg, TeacherState(TeacherConfig(), base, tokenizer))
    batches = lessons("facts", 4, seed=0)
    learner.step(next(batches))  # momentum now
    learner.cfg = replace(cfg, skip_below=1e9)  # every position in the dead zone
    before = {k: v.clone() for k, v in student.state_dict().items()}
    stats = learner.step(next(batches))
    assert stats["loss"] == 0.0 and learner.updates == 2
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_on_teacher_path_keeps_the_first_token_off_the_path_and_none_after():
    lp = torch.log(torch.tensor([[0.9, 0.01, 0.9, 0.9], [0.9, 0.9, 0.9, 0.01], [0.01, 0.9, 0.9, 0.9]]))
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert on_teacher_path(lp, mask, 0.1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5, 2.0])
def test_on_teacher_path_refuses_a_threshold_that_is_not_a_probability(threshold):
    with pytest.raises(ValueError, match="cut-off probability"):
        on_teacher_path(torch.zeros(1, 2), torch.ones(1, 2), threshold)


def _topk_scores(logits, ids, k):
    from learner.scoring import TeacherScores

    full = torch.log_softmax(logits, -1)
    top = full.topk(k, dim=-1)
    return full, TeacherScores(sampled=full.gather(-1, ids.unsqueeze(-1)).squeeze(-1), topk_ids=top.indices,
                               topk_logprobs=top.values)


def test_a_tempered_top_k_is_exact_when_the_tail_is_one_token():
    torch.manual_seed(0)
    logits = 3 * torch.randn(2, 5, 12, dtype=torch.float64)
    ids = torch.randint(0, 12, (2, 5))
    full, top = _topk_scores(logits, ids, 11)
    want = torch.log_softmax(logits / 0.5, -1)
    got = top.at_temperature(0.5, ids)
    assert torch.allclose(got.topk_logprobs, want.gather(-1, top.topk_ids), atol=1e-12)
    assert torch.allclose(got.sampled, want.gather(-1, ids.unsqueeze(-1)).squeeze(-1), atol=1e-12)


@pytest.mark.parametrize("temperature", [0.25, 0.5, 0.9])
def test_a_tempered_top_k_never_overstates_the_top_k_and_is_close_when_the_tail_is_small(temperature):
    torch.manual_seed(1)
    logits = 12 * torch.randn(3, 6, 200, dtype=torch.float64)
    ids = torch.randint(0, 200, (3, 6))
    full, top = _topk_scores(logits, ids, 20)
    want = torch.log_softmax(logits / temperature, -1).gather(-1, top.topk_ids)
    got = top.at_temperature(temperature, ids).topk_logprobs
    assert bool((got <= want + 1e-12).all())
    tail = 1 - full.gather(-1, top.topk_ids).exp().sum(-1)
    small = tail < 1e-3
    assert small.any() and torch.allclose(got[small], want[small], atol=2e-3)


def test_a_top_k_teacher_cannot_be_flattened():
    torch.manual_seed(2)
    _, top = _topk_scores(torch.randn(1, 2, 9, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="above 1 needs full-vocabulary"):
        top.at_temperature(2.0, torch.zeros(1, 2, dtype=torch.long))


class CountingSampler(FixedSampler):
    """Hands out completions drawn once, and keeps the prompts it was asked to sample."""

    def __init__(self, completions):
        super().__init__(completions)
        self.asked = []

    def sample(self, prompts, seed=0):
        self.asked.append(list(prompts))
        return [list(c) for c in self.completions[:len(prompts)]]


def test_a_corrected_lesson_scored_along_its_reference_is_the_same_loss_as_that_reply_handed_out_as_a_sample(
        base, student, batch):
    """``along_reference`` scores a lesson that has a reference along that reply instead of a student sample, as
    generalised knowledge distillation mixes in fixed data: the student is not asked to sample it, and the loss is
    exactly the one a sampler handing out the reply would give; a lesson without a reference (a variation) is
    always sampled; a share outside [0, 1] is refused."""
    from learner.distill import Lesson

    enc, lessons_, completions = batch
    corrected = [Lesson(l.student, l.teacher, "b a c") for l in lessons_[:2]]
    varied = [Lesson(l.student, l.teacher, None) for l in lessons_[2:4]]
    mixed = [*corrected, *varied]
    scorer = TorchScorer(base, enc)
    sampler = CountingSampler(completions[2:4])
    along, info = opsd_loss(student, sampler, scorer, enc, mixed, "fkl", along_reference=1.0)
    assert sampler.asked == [[l.student for l in varied]] and info["along_references"] == 2
    handed = [enc.reply_ids("b a c")] * 2 + [list(c) for c in completions[2:4]]
    same, _ = opsd_loss(student, FixedSampler(handed), scorer, enc, mixed, "fkl")
    assert torch.allclose(along, same, atol=1e-6)
    sampled, info = opsd_loss(student, FixedSampler(completions[:4]), scorer, enc, mixed, "fkl")
    assert info["along_references"] == 0 and not torch.allclose(along, sampled, atol=1e-4)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        opsd_loss(student, sampler, scorer, enc, mixed, "fkl", along_reference=1.5)
