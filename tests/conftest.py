"""Shared fixtures: one vLLM engine on the shipped tiny-world model per test session
(an engine takes 30-60 s to start on CPU)."""
from __future__ import annotations

import os

# Two test workers share this machine's cores with every engine, learner and Ray process they start; torch
# would give each process one thread per core, and they would spin against each other.  One thread each
# (docs/design-notes.md, "The suite's time").  Set before torch is imported, and inherited by the Ray each module
# starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import xml.etree.ElementTree as ET  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from simulators.tinyworld.build import SHIPPED_MODEL  # noqa: E402

TESTS = Path(__file__).resolve().parent
# Where the suite's time went in a recorded run (pytest's JUnit file): ``make test`` runs the suite on two
# workers (pytest-xdist), and the modules that took longest there are handed out first, so that no long module
# starts last while the other worker sits idle.
RECORDED_RUN = TESTS.parent / "bench" / "results" / "suite-time" / "2026-12-07-make-test-812b681.junit.xml"


def group_of(nodeid: str) -> str:
    """The unit one worker runs whole: a module (its module fixtures start once), or a folder of modules that
    share a package fixture (``serving_app/``: one served application)."""
    module = nodeid.split("::", 1)[0]
    folder = module.rpartition("/")[0]
    return folder if folder not in ("", "tests") else module


def _recorded_seconds() -> Counter:
    seconds: Counter = Counter()
    if RECORDED_RUN.exists():
        for case in ET.parse(RECORDED_RUN).iter("testcase"):
            module = "/".join(case.get("classname", "").split(".")) + ".py"
            seconds[group_of(module)] += float(case.get("time") or 0)
    return seconds


ORDER_ENV = "REVERIE_TEST_ORDER"  # "reverse": the groups in reverse collection order (each test's order kept)


def pytest_collection_modifyitems(config, items):
    """The groups go longest first by the recorded run (unrecorded ones last, in collection order); with
    ``REVERIE_TEST_ORDER=reverse``, last collected first instead, to show that no module needs another before it."""
    if os.environ.get(ORDER_ENV) == "reverse":
        first = {}
        for i, item in enumerate(items):
            first.setdefault(group_of(item.nodeid), i)
        items.sort(key=lambda item: -first[group_of(item.nodeid)])  # stable: a group keeps its order
        return
    seconds = _recorded_seconds()
    items.sort(key=lambda item: -seconds.get(group_of(item.nodeid), 0.0))  # stable: a group keeps its order


def pytest_xdist_make_scheduler(config, log):
    """Whole groups (``group_of``) to a worker, in collection order.  (xdist's own ``loadgroup`` marks groups by
    rewriting an item's node id, which pytest 9.2 ignores: it split modules across workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


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
