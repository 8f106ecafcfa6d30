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


@pytest.fixture(scope="session")
def llm(shipped_model):
    from reverie.engine import offline_llm

    engine = offline_llm(shipped_model)
    yield engine
    engine.llm_engine.engine_core.shutdown()  # before pytest closes the log streams
