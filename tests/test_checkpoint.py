"""Learner checkpoints: exact resume, crash safety, retention, HF loadability,
never-reused versions and the refusal of non-finite updates."""
from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner import checkpoint as ckpt
from learner.checkpoint import (
    VersionCounter,
    assert_finite_update,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from learner.model import ModelShape, build_model

VOCAB = 97
SHAPE = ModelShape(hidden=64, layers=2, heads=2, intermediate=128)
DATA = torch.randint(0, VOCAB, (64, 12), generator=torch.Generator().manual_seed(0))


def make(seed: int):
    model = build_model(SHAPE, VOCAB, pad_id=0, eos_id=1, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s))
    return model, opt, sched


def train(model, opt, sched, cursor: int, steps: int, consumed: list[list[int]]) -> int:
    """Batch size from python `random`, token corruption from the torch RNG, data from a cursor."""
    model.train()
    for _ in range(steps):
        bs = random.randint(2, 4)
        idx = list(range(cursor, cursor + bs))
        cursor += bs
        consumed.append(idx)
        batch = DATA[idx].clone()
        noise = torch.randint(0, VOCAB, batch.shape)
        batch = torch.where(torch.rand(batch.shape) < 0.25, noise, batch)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        assert_finite_update(loss, model)
        opt.step()
        sched.step()
    return cursor


def max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def test_resume_from_checkpoint_continues_exactly_like_an_uninterrupted_run(tmp_path):
    model_a, opt_a, sched_a = make(seed=0)
    random.seed(7)
    consumed_a: list[list[int]] = []
    train(model_a, opt_a, sched_a, 0, 6, consumed_a)

    model_b, opt_b, sched_b = make(seed=0)
    random.seed(7)
    consumed_b: list[list[int]] = []
    cursor = train(model_b, opt_b, sched_b, 0, 3, consumed_b)
    path = save_checkpoint(tmp_path, model=model_b, optimizer=opt_b, scheduler=sched_b, step=3, version=11,
                           extra={"cursor": cursor})
    del model_b, opt_b, sched_b

    random.seed(12345)  # scramble both RNGs: only the restored states may drive the rest
    model_c, opt_c, sched_c = make(seed=99)
    assert max_diff(model_a, model_c) > 1e-3
    state = load_checkpoint(path, model=model_c, optimizer=opt_c, scheduler=sched_c)
    assert state == {"step": 3, "version": 11, "extra": {"cursor": cursor}, "tensors": {}}
    train(model_c, opt_c, sched_c, state["extra"]["cursor"], 6 - state["step"], consumed_b)

    assert consumed_b == consumed_a  # no batch repeated or skipped
    flat = [i for idx in consumed_b for i in idx]
    assert flat == list(range(len(flat)))
    assert max_diff(model_a, model_c) < 1e-6
    assert sched_c.last_epoch == sched_a.last_epoch == 6
    assert opt_c.state_dict()["state"][0]["step"] == opt_a.state_dict()["state"][0]["step"]


def test_crash_during_save_leaves_previous_checkpoint_and_no_visible_partial(tmp_path, monkeypatch):
    model, opt, _ = make(seed=0)
    first = save_checkpoint(tmp_path, model=model, optimizer=opt, step=1, version=1)

    def boom(*a, **k):
        raise OSError("simulated crash")

    for target in ("_write_text", "_fsync_tree"):  # the state.json write; the final sync before the rename
        with monkeypatch.context() as m:
            m.setattr(ckpt, target, boom)
            with pytest.raises(OSError, match="simulated crash"):
                save_checkpoint(tmp_path, model=model, optimizer=opt, step=2, version=2)
        assert latest_checkpoint(tmp_path) == first
        assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000001"]
        assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # the failed save cleaned up

    # A hard crash (no cleanup ran) at the rename: the half-written directory stays hidden.
    with monkeypatch.context() as m:
        m.setattr(ckpt.os, "rename", boom)
        m.setattr(ckpt.shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(OSError):
            save_checkpoint(tmp_path, model=model, optimizer=opt, step=2, version=2)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "step-00000001"]
    assert leftovers and all(n.startswith(".") for n in leftovers)
    assert latest_checkpoint(tmp_path) == first

    # Malformed visible directories are ignored too.
    (tmp_path / "step-00000009").mkdir()
    (tmp_path / "step-00000010").mkdir()
    (tmp_path / "step-00000010" / "state.json").write_text("{not json")
    assert latest_checkpoint(tmp_path) == first

    # The next successful save sweeps the stale temporary directory.
    second = save_checkpoint(tmp_path, model=model, optimizer=opt, step=2, version=2)
    assert latest_checkpoint(tmp_path) == second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_only_the_keep_newest_checkpoints_are_retained(tmp_path):
    model, opt, _ = make(seed=0)
    for step in range(1, 6):
        save_checkpoint(tmp_path, model=model, optimizer=opt, step=step, version=step, keep=2)
        assert len(list_checkpoints(tmp_path)) == min(step, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000005"]
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path, model=model, optimizer=opt, step=5, version=6)


def test_checkpoint_directory_loads_with_transformers_and_gives_identical_logits(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "config.json").write_text('{"not": "ours"}')  # model files of the tokenizer dir are not copied
    model, opt, _ = make(seed=3)
    path = save_checkpoint(tmp_path / "ckpts", model=model, optimizer=opt, step=0, version=0, tokenizer_dir=tok)
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
    assert json.loads((path / "config.json").read_text())["vocab_size"] == VOCAB

    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    model.eval()
    ids = DATA[:2]
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6, rtol=0)


def test_loading_into_a_model_of_another_shape_is_refused(tmp_path):
    model, opt, _ = make(seed=0)
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, step=0, version=0)
    other = build_model(ModelShape(hidden=64, layers=1, heads=2, intermediate=128), VOCAB, 0, 1, seed=0)
    with pytest.raises(RuntimeError, match="unexpected"):
        load_checkpoint(path, model=other, optimizer=torch.optim.AdamW(other.parameters()))


def test_version_counter_never_reuses_a_number_across_restarts(tmp_path, monkeypatch):
    path = tmp_path / "versions.json"
    assert VersionCounter(path).next() == 1  # missing file starts at 1
    c = VersionCounter(path)
    assert [c.next(), c.next()] == [2, 3]
    assert VersionCounter(path).next() == 4  # "restart": a new object on the same file

    # A temporary file left by a crash mid-write is ignored.
    (tmp_path / ".versions.json.abc.tmp").write_text("garbage")
    assert VersionCounter(path).next() == 5

    # A failure before the atomic replace hands out nothing and leaves the file intact.
    with monkeypatch.context() as m:
        m.setattr(ckpt.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError):
            c.next()
    assert c.last == 5
    assert c.next() == 6

    c.ensure_above(10)  # e.g. a version found in a checkpoint
    c.ensure_above(3)
    assert c.next() == 11

    path.write_text("{corrupt")
    with pytest.raises(ValueError, match="corrupted"):
        c.next()


def test_non_finite_loss_or_gradient_is_refused_and_named():
    model, _, _ = make(seed=0)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        assert_finite_update(torch.tensor(float("nan")), model)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        assert_finite_update(float("inf"), model)

    loss = model(input_ids=DATA[:2], labels=DATA[:2]).loss
    loss.backward()
    assert_finite_update(loss, model)  # finite: passes
    model.model.layers[1].mlp.down_proj.weight.grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        assert_finite_update(loss, model)
