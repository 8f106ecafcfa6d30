"""The learner loop: resume after a crash equals an uninterrupted run, teacher
states follow their schedules, retention replay mixes batches, versions are
never reused, and `reverie learn` refuses bad options."""
from __future__ import annotations

import copy
import itertools
import random
import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.checkpoint import latest_checkpoint
from learner.loop import LearnConfig, learn
from learner.replay import focus_weights, mixed_batches, retention_count
from learner.teacher_state import TeacherConfig, TeacherState
from learner.tokenizer import ChatEncoder, train_tokenizer
from simulators.tinyworld import world as W
from simulators.tinyworld.experiment import lessons, retention_lessons, retention_samples
from simulators.tinyworld.skills import BASE_SKILLS, new_pair


class Crash(Exception):
    pass


def _train(base, tokenizer, shipped_model, root, crash_at=None, teacher=TeacherConfig("ema", ema_rate=0.9)):
    student = copy.deepcopy(base)
    state = TeacherState(teacher, student, tokenizer)
    cfg = LearnConfig(steps=4, batch_size=4, lr=1e-3, retain=0.5, checkpoint_every=2, seed=3)

    def on_step(n):
        if n == crash_at:
            raise Crash

    stats = learn(student, state, ChatEncoder(tokenizer), lessons("facts", 4, 3, 0.5), cfg, progress=False,
                  on_step=on_step, checkpoints=root, tokenizer_dir=shipped_model)
    return student, state, stats


def test_a_run_interrupted_and_resumed_ends_with_the_same_weights_as_an_uninterrupted_one(
        base, tokenizer, shipped_model, tmp_path):
    a, a_teacher, _ = _train(base, tokenizer, shipped_model, tmp_path / "a")
    with pytest.raises(Crash):
        _train(base, tokenizer, shipped_model, tmp_path / "b", crash_at=3)  # step 3 is lost, step 2 was saved
    b, b_teacher, stats = _train(base, tokenizer, shipped_model, tmp_path / "b")
    assert stats["resumed_at"] == 2
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6, rtol=0), name
    for x, y in zip(a_teacher.model.parameters(), b_teacher.model.parameters()):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)  # the EMA teacher resumes too
    assert not torch.equal(a.lm_head.weight, base.lm_head.weight)
    assert [v["version"] for v in stats["versions"]] == [2]  # version 1 was step 2; never reused


def test_every_saved_version_is_a_model_directory_transformers_loads(base, tokenizer, shipped_model, tmp_path):
    student, _, stats = _train(base, tokenizer, shipped_model, tmp_path, teacher=TeacherConfig())
    path = latest_checkpoint(tmp_path)
    assert str(path) == stats["versions"][-1]["path"]
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert torch.equal(loaded.lm_head.weight, student.lm_head.weight)
    assert (path / "tokenizer.json").is_file()


def test_a_lagged_teacher_copies_the_student_every_n_updates_only(base, tokenizer):
    student = copy.deepcopy(base)
    t = TeacherState(TeacherConfig("lagged", lag_every=2), student, tokenizer)
    with torch.no_grad():
        student.lm_head.weight.add_(1.0)
    assert not t.after_update(student, 1) and not torch.equal(t.model.lm_head.weight, student.lm_head.weight)
    assert t.after_update(student, 2) and torch.equal(t.model.lm_head.weight, student.lm_head.weight)


def test_an_ema_teacher_moves_by_one_minus_the_rate_toward_the_student(base, tokenizer):
    student = copy.deepcopy(base)
    t = TeacherState(TeacherConfig("ema", ema_rate=0.75), student, tokenizer)
    before = t.model.lm_head.weight.clone()
    with torch.no_grad():
        student.lm_head.weight.add_(4.0)
    t.after_update(student, 1)
    assert torch.allclose(t.model.lm_head.weight, before + 1.0, atol=1e-6)


def test_a_frozen_teacher_never_changes(base, tokenizer):
    student = copy.deepcopy(base)
    t = TeacherState(TeacherConfig(), student, tokenizer)
    with torch.no_grad():
        student.lm_head.weight.add_(1.0)
    assert not t.after_update(student, 50) and torch.equal(t.model.lm_head.weight, base.lm_head.weight)


def test_a_separate_teacher_with_another_tokenizer_is_refused(base, tokenizer, tmp_path):
    other = train_tokenizer(["completely different text for a tokenizer"] * 50, 300)
    other.save_pretrained(tmp_path)
    base.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizers differ"):
        TeacherState(TeacherConfig("separate", model_dir=str(tmp_path)), base, tokenizer)


@pytest.mark.parametrize("cfg, match", [
    (TeacherConfig("slow"), "unknown teacher"),
    (TeacherConfig("ema", ema_rate=1.0), "ema_rate"),
    (TeacherConfig("lagged", lag_every=0), "lag_every"),
    (TeacherConfig("separate"), "model_dir"),
])
def test_bad_teacher_configurations_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        cfg.check()


def test_retention_replay_puts_the_asked_share_of_base_lessons_in_every_batch():
    assert retention_count(32, 0.5) == 16 and retention_count(32, 0.0) == 0
    batch = next(lessons("facts", 8, 0, retain=0.75))
    retained = [l for l in batch if l.student == l.teacher]  # no privileged context
    assert len(batch) == 8 and len(retained) == 6
    with pytest.raises(ValueError, match="retention fraction"):
        next(mixed_batches(iter(()), iter(()), 8, 1.0))


@pytest.mark.parametrize("args, message", [
    (["--retain", "1.5"], "--retain must be in [0, 1)"),
    (["--teacher", "slow"], "unknown teacher"),
    (["--teacher", "separate"], "needs model_dir"),
    (["--ema-rate", "x"], "--ema-rate must be a number"),
    (["--backend", "gpu"], "unknown backend"),
    (["--backend", "ray", "--scorers", "2"], "give --topk K"),
    (["--scorers", "-1"], "--scorers must not be negative"),
    (["--checkpoint-every", "z"], "--checkpoint-every must be a whole number"),
    (["--lora-rank", "-2"], "--lora-rank must be"),
    (["--lora-rank", "8", "--checkpoints", "/tmp/x"], "--lora-rank learns on --backend torch without"),
    (["--method", "sft", "--sft-targets", "gold"], "--sft-targets must be"),
])
def test_learn_refuses_bad_options_with_one_line_and_exit_2(args, message, refused):
    refused(["learn", *args], message)


def test_a_learner_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one_and_never_reuses_a_version(
        shipped_model, tmp_path):
    """The learner actor's process gets SIGKILL while a checkpoint is half on disk: the half-written one is
    never loaded, a restarted learner resumes from the last complete checkpoint (its weights, its update
    count) and its next version is above every id handed out before, the killed save's included."""
    import json
    import os
    import signal

    import ray
    from safetensors.torch import load_file

    from actors.learner import start_learner
    from reverie.ray_start import start_ray
    from learner.loop import VERSIONS_FILE

    start_ray(num_cpus=2)
    try:
        cfg = LearnConfig(steps=100, batch_size=4, lr=1e-3, retain=0.5, checkpoint_every=1)
        batches = lessons("facts", 4, 0, 0.5)
        learner = start_learner(str(shipped_model), cfg, str(tmp_path), None, 0, None, sampler="torch")
        pid = ray.get(learner.__ray_call__.remote(lambda self: os.getpid()), timeout=600)
        ray.get(learner.step.remote(next(batches)), timeout=600)  # step 1, saved complete
        half = None
        for _ in range(20):  # every step saves; kill the first save caught with its files half written
            ref = learner.step.remote(next(batches))
            while half is None and not ray.wait([ref], timeout=0)[0]:
                half = next((e for e in os.scandir(tmp_path) if e.name.startswith(".tmp-step-")), None)
            if half is not None:
                os.kill(pid, signal.SIGKILL)
                break
        assert half is not None, "no save was caught half written in 20 steps"
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(ref, timeout=60)
        complete = latest_checkpoint(tmp_path)
        handed_out = json.loads((tmp_path / VERSIONS_FILE).read_text())["last"]
        assert os.path.isdir(half.path) and complete.name < half.name.removeprefix(".tmp-")

        again = start_learner(str(shipped_model), cfg, str(tmp_path), None, 0, None, sampler="torch")
        assert ray.get(again.updates.remote(), timeout=600) == int(complete.name.removeprefix("step-"))
        exported = ray.get(again.export.remote(str(tmp_path / "resumed")), timeout=600)
        resumed, saved = load_file(f"{exported}/model.safetensors"), load_file(complete / "model.safetensors")
        assert resumed.keys() == saved.keys() and all(torch.equal(resumed[k], saved[k]) for k in saved)
        after = ray.get(again.step.remote(next(batches)), timeout=600)["saved"]
        assert after["version"] > handed_out
        assert not os.path.exists(half.path)  # the next save swept the half-written directory away
    finally:
        ray.shutdown()


def _student_prompts(skill: str, n: int, seed: int = 5) -> list:
    rng = random.Random(seed)
    return [new_pair(skill, rng)[0].prompt for _ in range(n)]


@pytest.mark.parametrize("skill, focused", [("facts", {"recall"}), ("rule", {"reverse", "sort"})])
def test_replay_focuses_on_the_base_skills_whose_prompts_look_like_the_new_lessons(skill, focused):
    groups = retention_samples()
    weights = focus_weights([_student_prompts(skill, 48)], groups, 0.5)
    assert abs(sum(weights.values()) - 1.0) < 1e-9
    assert max(weights, key=weights.get) in focused
    assert all(weights[s] > 1.5 / len(groups) for s in focused)  # well above an even share
    assert min(weights.values()) >= 0.5 / len(groups) - 1e-9  # every skill keeps half its even share


def test_replay_focus_zero_is_even_and_out_of_range_is_refused():
    groups = retention_samples()
    assert set(focus_weights([_student_prompts("facts", 8)], groups, 0.0).values()) == {1 / len(groups)}
    assert set(focus_weights([[]], groups, 0.5).values()) == {1 / len(groups)}  # nothing new: even
    with pytest.raises(ValueError, match="replay focus"):
        focus_weights([_student_prompts("facts", 8)], groups, 1.5)


def test_retention_replay_draws_only_the_skills_given_a_share():
    sentences = {f.sentence() for f in W.world().encyclopedia}
    only_recall = {s: float(s == "recall") for s in BASE_SKILLS}
    drawn = list(itertools.islice(retention_lessons(0, only_recall), 200))
    assert all(l.reference in sentences and l.student == l.teacher for l in drawn)
    even = list(itertools.islice(retention_lessons(0), 200))
    assert 10 < sum(l.reference in sentences for l in even) < 60  # about one in seven
