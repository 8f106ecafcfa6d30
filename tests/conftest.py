"""Shared fixtures: one vLLM engine on the shipped tiny-world model per test session
(an engine takes 30-60 s to start on CPU)."""
from __future__ import annotations

import pytest

from simulators.tinyworld.build import SHIPPED_MODEL


@pytest.fixture(scope="session")
def shipped_model():
    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def tokenizer(shipped_model):
    from learner.tokenizer import load_tokenizer

    return load_tokenizer(shipped_model)


@pytest.fixture(scope="module")
def base(shipped_model):
    """The shipped model in torch (one per test module, so a module's changes stay its own)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(shipped_model, dtype=torch.float32).eval()


@pytest.fixture
def refused(capsys):
    """``refused(argv, message)``: ``reverie argv`` exits 2 with ``message`` on one stderr line and nothing on stdout."""
    from reverie.cli import main

    def check(argv: list[str], message: str) -> None:
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and message in err, err

    return check


@pytest.fixture(scope="session")
def llm(shipped_model):
    from reverie.engine import offline_llm

    engine = offline_llm(shipped_model)
    yield engine
    engine.llm_engine.engine_core.shutdown()  # before pytest closes the log streams
