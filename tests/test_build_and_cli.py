"""`reverie tinyworld build` on a small budget, and the command line's handling of bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.model import ModelShape
from simulators.tinyworld import build as build_mod

SMALL = ModelShape(hidden=64, layers=2, heads=2, intermediate=128, max_positions=256)


def _build(out: Path, seed: int) -> dict:
    return build_mod.build(out, seed=seed, steps=3, shape=SMALL, progress=False)


def test_build_is_deterministic_for_a_seed_and_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    _build(tmp_path / "a", 7)
    _build(tmp_path / "b", 7)
    _build(tmp_path / "c", 8)
    wa, wb, wc = (load_file(tmp_path / d / "model.safetensors") for d in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert model.config.tie_word_embeddings is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary leftovers


def test_a_failed_build_writes_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    from transformers import PreTrainedTokenizerFast

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", boom)  # after the weights are written
    with pytest.raises(RuntimeError):
        _build(tmp_path / "out", 1)
    assert list(tmp_path.iterdir()) == []


def test_rebuilding_over_an_existing_model_replaces_it_whole(tmp_path):
    _build(tmp_path / "m", 1)
    first = (tmp_path / "m" / "model.safetensors").read_bytes()
    _build(tmp_path / "m", 2)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reverie.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["tinyworld", "eval", "--model", "/nonexistent/model"], "does not exist"),
        (["tinyworld", "eval", "--model", "tests"], "no config.json"),
        (["tinyworld", "eval", "--skill", "juggling"], "unknown skill 'juggling'"),
        (["tinyworld", "eval", "--items", "0"], "positive whole number"),
        (["tinyworld", "build", "--seed", "abc"], "seed must be a whole number"),
        (["tinyworld", "build", "--seed", "-3"], "seed must be a whole number"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_no_traceback(args, message, tmp_path, refused):
    out = tmp_path / "never"
    if args[1] == "build":
        args = [*args, "--out", str(out)]
    refused(args, message)  # in this process: exit status 2, one stderr line, nothing on stdout
    assert not out.exists()


def test_build_refuses_an_output_path_that_is_a_file(tmp_path, refused):
    f = tmp_path / "file"
    f.write_text("keep me")
    refused(["tinyworld", "build", "--out", str(f), "--steps", "1"], "not a directory")
    assert f.read_text() == "keep me"


def test_help_lists_the_commands():
    """As a user runs it: a process of its own."""
    res = _cli("tinyworld", "--help")
    assert res.returncode == 0 and "build" in res.stdout and "eval" in res.stdout
