"""The learner on vLLM: the prompt_logprobs teacher scorer agrees with a torch
forward pass, the sampler engine follows the student's weights after each
update, and the Ray learner and teacher-scorer actors step, checkpoint, and
resume after a restart with new, never-reused versions."""
from __future__ import annotations

import copy

import torch

from learner.distill import Lesson
from learner.loop import LearnConfig
from learner.scoring import TorchScorer
from learner.tokenizer import ChatEncoder
from learner.vllm_backend import VllmSampler, VllmScorer
from simulators.tinyworld.experiment import lessons


def _batch(n=6):
    return next(lessons("facts", n, seed=5))


def test_vllm_teacher_scores_match_the_torch_teacher_to_1e_4(llm, base, tokenizer):
    enc = ChatEncoder(tokenizer)
    batch = _batch()
    torch.manual_seed(0)
    completions = [enc.tok.encode(" " + l.reference, add_special_tokens=False) + [enc.end_id] for l in batch]
    completions[0] = completions[0][:3]  # completions of different lengths
    got = VllmScorer(None, enc, topk=20, llm=llm).score([l.teacher for l in batch], completions)
    ref = TorchScorer(base, enc).score([l.teacher for l in batch], completions)
    for i, comp in enumerate(completions):
        n = len(comp)
        assert torch.allclose(got.sampled[i, :n], ref.sampled[i, :n], atol=1e-4)
        top = ref.full[i, :n].topk(20, dim=-1)
        assert torch.allclose(got.topk_logprobs[i, :n], top.values, atol=1e-4)
        gathered = ref.full[i, :n].gather(-1, got.topk_ids[i, :n])
        assert torch.allclose(gathered, got.topk_logprobs[i, :n], atol=1e-4)


def test_the_vllm_sampler_follows_the_student_after_an_update(base, tokenizer, shipped_model, tmp_path):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    enc = ChatEncoder(tokenizer)
    student = copy.deepcopy(base)
    sampler = VllmSampler(student, enc, tmp_path, shipped_model)
    try:
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        sampler.sync(student)
        lesson = _batch(1)[0]
        comp = sampler.sample([lesson.student], seed=1)[0]
        assert comp and len(comp) <= 32
        head = enc.encode(list(lesson.student), add_generation_prompt=True)[0]
        ids = head + comp
        out = sampler.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                   SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
        with torch.no_grad():
            ref = student(torch.tensor([ids])).logits[0].log_softmax(-1)
        for j in range(len(head), len(ids)):
            assert abs(out.prompt_logprobs[j][ids[j]].logprob - ref[j - 1, ids[j]].item()) < 1e-4
    finally:
        sampler.close()


def test_the_ray_learner_steps_with_scorer_actors_resumes_after_a_restart_and_takes_the_cpu_threads_given(
        shipped_model, tmp_path):
    """A learner on a CPU computes with one torch thread on the cores Ray gives it; with ``threads`` (the loop's
    ``learner_threads``) it takes that many, on every core of the machine, niced below the serving path."""
    import ray

    from reverie.cpus import _machine_cpus

    from actors.learner import start_learner
    from reverie.ray_start import start_ray

    start_ray(num_cpus=4)
    try:
        cfg = LearnConfig(steps=10, batch_size=4, topk=20, retain=0.5, checkpoint_every=2)
        batches = lessons("facts", 4, 0, 0.5)
        learner = start_learner(str(shipped_model), cfg, str(tmp_path), None, 1, 20)
        first = ray.get(learner.step.remote(next(batches)), timeout=600)
        second = ray.get(learner.step.remote(next(batches)), timeout=600)
        assert first["tokens"] > 0 and second["saved"]["version"] == 1
        ray.kill(learner)  # a crash: the learner restarts from its newest checkpoint
        again = start_learner(str(shipped_model), cfg, str(tmp_path), None, 0, None)
        assert ray.get(again.updates.remote(), timeout=600) == 2
        ray.get(again.step.remote(next(batches)), timeout=600)  # the third batch, neither repeated nor skipped
        saved = ray.get(again.save.remote(), timeout=600)
        assert saved["version"] == 2 and saved["path"].endswith("step-00000003")
        plain = ray.get(again.placement.remote(), timeout=60)
        assert plain["threads"] == 1
        threaded = start_learner(str(shipped_model), cfg, str(tmp_path / "threaded"), None, 0, None, None, "torch",
                                 None, 2)
        placed = ray.get(threaded.placement.remote(), timeout=600)
        assert placed == {"threads": 2, "nice": min(19, plain["nice"] + 10), "cores": sorted(_machine_cpus())}
        assert ray.get(threaded.step.remote(next(batches)), timeout=600)["tokens"] > 0
    finally:
        ray.shutdown()


def test_new_teacher_weights_reach_every_scorer_actor_and_its_scores_follow_them(base, tokenizer, shipped_model,
                                                                                   tmp_path):
    """A lagged or EMA teacher moves: the pool sends its new weights through the weight-sync interface, each
    scorer's engine reports the checksum of what it loaded, and the scores are the new teacher's to 1e-4."""
    import ray

    from actors.teacher_scorer import ScorerPool
    from reverie.ray_start import start_ray

    enc = ChatEncoder(tokenizer)
    batch = _batch(4)
    completions = [enc.tok.encode(" " + l.reference, add_special_tokens=False) + [enc.end_id] for l in batch]
    teacher = copy.deepcopy(base)
    start_ray(num_cpus=4)
    try:
        pool = ScorerPool(teacher, shipped_model, tmp_path, n=1, topk=20)
        try:
            with torch.no_grad():
                for p in teacher.parameters():
                    p.add_(0.02 * torch.randn_like(p))
            pool.sync(teacher)
            got = pool.score([l.teacher for l in batch], completions)
        finally:
            pool.close()
    finally:
        ray.shutdown()
    ref = TorchScorer(teacher, enc).score([l.teacher for l in batch], completions)
    before = TorchScorer(base, enc).score([l.teacher for l in batch], completions)
    for i, comp in enumerate(completions):
        n = len(comp)
        assert torch.allclose(got.sampled[i, :n], ref.sampled[i, :n], atol=1e-4)
    assert (got.sampled - before.sampled).abs().max() > 1e-3  # the new weights were really installed
