"""``standby`` swaps: each replica keeps a second engine; a new version loads there while the active engine goes
on serving, then new requests switch to it and running ones finish on the version they started on.

One application (one replica of the tiny-world model, two engines) is shared by the tests in this module; a test
that needs a known version served publishes it first, so each passes alone and in any order.
"""
from __future__ import annotations

import asyncio

import pytest

from serving import (PROMPT, max_diff, perturbed_state, publish_under_load, served, start_app, torch_logprobs,
                     torch_model)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    for app in start_app(tmp_path_factory, replicas=1, swap_mode="standby"):
        app.started = _status(app)  # the replica as it started, before any test swapped anything
        yield app


def _serving(app, seed: int) -> int:
    """Publish the perturbed state of ``seed`` (so a test does not depend on what ran before it); its version."""
    return asyncio.run(app.dep.broadcaster().publish(perturbed_state(seed=seed)))["version"]


def _status(app) -> dict:
    (replica,) = app.admin("GET", "/admin/versions").json()["replicas"]
    return replica


def test_replica_starts_with_a_standby_engine_on_the_promoted_version(app):
    base = app.dep.registry.summary()["base"]  # promoted when the application started
    assert app.started["version"] == base and app.started["standby_version"] == base


def test_standby_swap_under_load_fails_nothing_mixes_nothing_and_matches_the_learner(app):
    before = _serving(app, seed=10)
    models = {before: torch_model(perturbed_state(seed=10))}
    new_state = perturbed_state(seed=11)
    result, results, errors = publish_under_load(app, new_state)
    (replica,) = result["replicas"]
    assert replica["ok"] and replica["version"] == result["version"] and "load_seconds" in replica
    models[result["version"]] = torch_model(new_state)
    assert errors == []
    assert {r[0] for r in results} == set(models)  # answered by both versions
    for version, prompt_ids, ids, lps in results:  # each answer fits its stamped version's weights
        assert max_diff(lps, torch_logprobs(models[version], prompt_ids, ids)) < 1e-4
    status = _status(app)
    assert status["version"] == result["version"] and status["standby_version"] == before


def test_a_request_running_during_a_standby_swap_finishes_on_the_version_it_started_on(app):
    old = _serving(app, seed=11)
    old_model = torch_model(perturbed_state(seed=11))
    stream = app.client.completions.create(model="reverie", prompt=PROMPT, max_tokens=120, temperature=1.0,
                                           logprobs=0, stream=True, extra_body={"return_token_ids": True,
                                                                                "ignore_eos": True})
    chunks = [next(stream)]
    new_state = perturbed_state(seed=12)
    result = asyncio.run(app.dep.broadcaster().publish(new_state))
    chunks += list(stream)
    assert {c.system_fingerprint for c in chunks} == {f"reverie-v{old}"}
    prompt_ids, ids, lps = None, [], []
    for c in chunks:
        for ch in c.choices:
            extra = ch.model_extra or {}
            prompt_ids = prompt_ids or extra.get("prompt_token_ids")
            ids += extra.get("token_ids") or []
            lps += (ch.logprobs.token_logprobs if ch.logprobs else []) or []
    assert len(ids) == 120
    assert max_diff(lps, torch_logprobs(old_model, prompt_ids, ids)) < 1e-4
    version, prompt_ids, ids, lps = served(app)  # a request after the swap gets the new version
    assert version == result["version"]
    assert max_diff(lps, torch_logprobs(torch_model(new_state), prompt_ids, ids)) < 1e-4


def test_rollback_to_the_version_on_standby_is_a_switch_without_a_reload(app):
    _serving(app, seed=11)
    _serving(app, seed=12)
    summary = app.dep.registry.summary()
    standby = _status(app)["standby_version"]
    assert standby is not None and standby != summary["promoted"]
    result = asyncio.run(app.dep.broadcaster().rollback(standby))
    (replica,) = result["replicas"]
    assert replica["ok"] and replica["version"] == standby and "load_seconds" not in replica
    version, prompt_ids, ids, lps = served(app)
    assert version == standby
    assert max_diff(lps, torch_logprobs(torch_model(perturbed_state(seed=11)), prompt_ids, ids)) < 1e-4


def test_a_standby_swap_that_fails_keeps_the_active_version_and_the_next_one_works(app):
    from serve.broadcaster import SwapError

    before = _serving(app, seed=11)
    model = torch_model(perturbed_state(seed=11))
    with pytest.raises(SwapError, match=f"back on version {before}"):
        asyncio.run(app.dep.broadcaster(timeout_s=0.001).publish(perturbed_state(seed=13)))
    assert _status(app)["version"] == before and app.dep.registry.summary()["promoted"] == before
    version, prompt_ids, ids, lps = served(app)
    assert version == before and max_diff(lps, torch_logprobs(model, prompt_ids, ids)) < 1e-4
    state = perturbed_state(seed=14)
    result = asyncio.run(app.dep.broadcaster().publish(state))
    version, prompt_ids, ids, lps = served(app)
    assert version == result["version"] and max_diff(lps, torch_logprobs(torch_model(state), prompt_ids, ids)) < 1e-4
