"""One serving application for the modules of this folder (an engine takes a minute to start here): two
replicas of the tiny-world model, the loop off, feedback text redacted in what people are shown.  Each test
that needs a known version publishes it first, so each passes alone and in any order."""
from __future__ import annotations

import pytest

from serving import start_app


@pytest.fixture(scope="package")
def app(tmp_path_factory):
    yield from start_app(tmp_path_factory, replicas=2, redact_feedback=True)
