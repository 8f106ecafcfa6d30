"""The learner's two options for the forgetting comparison: LoRA adapters (only low-rank matrices learn, each
linear layer computes ``W + (alpha / rank) B A``) and SFT on the teacher state's own sampled replies (the
cross-entropy of exactly what the teacher state samples from the same seed), each against an independent
computation."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from learner.distill import completion_logits, sample
from learner.loop import LearnConfig, Learner, learn
from learner.teacher_state import TeacherConfig, TeacherState
from learner.tokenizer import ChatEncoder
from simulators.tinyworld.experiment import lessons

RANK, ALPHA = 4, 8.0


def _merged_in_float64(lora_student, base):
    """A plain copy of the base whose every adapted layer holds W + (alpha / rank) B A, merged here in float64
    from the adapter's own matrices (not by peft)."""
    merged = copy.deepcopy(base)
    weights = dict(merged.named_parameters())
    seen = 0
    for name, module in lora_student.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.double()
            b = module.lora_B["default"].weight.double()
            w = weights[f"{name}.weight"]
            with torch.no_grad():
                w.copy_((w.double() + (ALPHA / RANK) * b @ a).float())
            seen += 1
    return merged, seen


def test_a_lora_student_starts_as_the_base_and_after_a_step_computes_the_base_plus_its_scaled_low_rank_update(
        base, tokenizer):
    enc = ChatEncoder(tokenizer)
    student = copy.deepcopy(base)
    batch = next(lessons("facts", 4, seed=3))
    torch.manual_seed(0)
    learner = Learner(student, enc, LearnConfig(method="sft", lr=1e-2, lora_rank=RANK, lora_alpha=ALPHA))
    ids = torch.tensor([enc.encode(list(batch[0].student), add_generation_prompt=True)[0]])
    with torch.no_grad():
        assert torch.equal(student(ids).logits, base(ids).logits)  # B starts at zero: nothing changed yet
    learner.step(batch)
    learner.step(batch)

    base_weights = dict(base.named_parameters())
    for name, p in student.named_parameters():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer", "")  # peft keeps the frozen weight under base_layer
        assert torch.equal(p, base_weights[plain]), f"{plain} moved: only the adapters may learn"
    assert any(float(p.detach().abs().sum()) > 0 for n, p in student.named_parameters() if "lora_B" in n)
    assert sum(p.numel() for p in learner.params) < sum(p.numel() for p in base.parameters()) / 10

    merged, adapted = _merged_in_float64(student, base)
    assert adapted == 7 * base.config.num_hidden_layers  # q, k, v, o, gate, up, down in every layer
    with torch.no_grad():
        got, want = student(ids).logits, merged(ids).logits
    assert not torch.allclose(got, base(ids).logits, atol=1e-3)  # the adapters did learn something
    assert torch.allclose(got, want, atol=1e-4)


def test_lora_is_refused_with_checkpoints_a_moving_teacher_or_a_bad_rank(base, tokenizer, tmp_path):
    enc = ChatEncoder(tokenizer)
    with pytest.raises(ValueError, match="cannot be saved as versions yet"):
        learn(copy.deepcopy(base), None, enc, lessons("facts", 4, 0),
              LearnConfig(method="sft", steps=1, batch_size=4, lora_rank=4), progress=False, checkpoints=tmp_path)
    assert not any(tmp_path.iterdir())
    ema = TeacherState(TeacherConfig("ema", ema_rate=0.9), base, tokenizer)
    with pytest.raises(ValueError, match="use a frozen teacher with LoRA"):
        Learner(copy.deepcopy(base), enc, LearnConfig(lora_rank=4), ema)
    with pytest.raises(ValueError, match="rank must be >= 0"):
        Learner(copy.deepcopy(base), enc, LearnConfig(method="sft", lora_rank=-1))


def test_sft_on_the_teacher_states_replies_is_cross_entropy_on_what_it_samples_from_the_same_seed(base, tokenizer):
    enc = ChatEncoder(tokenizer)
    batch = next(lessons("facts", 6, seed=4))
    teacher = TeacherState(TeacherConfig(), base, tokenizer)
    student = copy.deepcopy(base)
    before = copy.deepcopy(base)
    cfg = LearnConfig(method="sft", sft_targets="teacher", teacher_temperature=0.7, lr=1e-3)
    learner = Learner(student, enc, cfg, teacher)

    torch.manual_seed(11)
    loss = learner.step(batch)["loss"]

    torch.manual_seed(11)  # independently: the teacher state's samples (its privileged prompt, T=0.7) ...
    replies = sample(teacher.model, enc, [l.teacher for l in batch], temperature=0.7)
    with torch.no_grad():  # ... and the student's cross-entropy on them given its own prompt, in float64
        logits, ids, mask = completion_logits(before, enc, [l.student for l in batch], replies)
        ce = F.cross_entropy(logits.double().flatten(0, 1), ids.flatten(), reduction="none").view_as(mask)
    assert loss == pytest.approx(float((ce * mask).sum() / mask.sum()), abs=1e-5)
    torch.manual_seed(11)  # the same draw without the privileged context answers otherwise: the target is the
    assert sample(teacher.model, enc, [l.student for l in batch], temperature=0.7) != replies  # teacher state's
    with pytest.raises(ValueError, match="needs a teacher state"):
        Learner(copy.deepcopy(base), enc, cfg)
    with pytest.raises(ValueError, match="unknown SFT targets"):
        Learner(copy.deepcopy(base), enc, LearnConfig(method="sft", sft_targets="gold"))
