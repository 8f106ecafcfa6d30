"""`reverie dream`: a short dream (rehearse -> keep verified successes -> distil
-> re-measure) raises held-out success on the tool task from the student's own
rate, with no demonstration given, in a simulator the model built from
recorded episodes; a simulator whose dreams do not replay for real is switched
off; each kept trajectory is stored once, tagged with the version registry's
ids and with where it was played.  ``actors.dreams.dream_step`` (the controller's
dream) stores verified trajectories tagged with the version it is given."""
from __future__ import annotations

import json

import pytest

from reverie.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--skill", "facts"], "unknown skill 'facts' for dream"),
    (["--simulators", "0"], "--simulators must be a positive whole number"),
    (["--episodes", "many"], "--episodes must be a positive whole number"),
    (["--retain", "1.5"], "--retain must be at least 0 and below 1"),
    (["--model", "/no/such/model"], "does not exist"),
    (["--env", "dreamland"], "--env must be real or simulated"),
    (["--simulator", "oracle"], "--simulator must be one of retrieval, trained, both"),
    (["--min-agreement", "2"], "--min-agreement must be between 0 and 1"),
    (["--judge", "me"], "--judge must be one of family, vote"),
    (["--fallback", "later"], "--fallback must be real or skip"),
])
def test_dream_rejects_bad_input_with_one_line_and_exit_2(argv, message, refused):
    refused(["dream", *argv, "--quiet"], message)


def _dream(tmp_path, capsys, *argv: str) -> dict:
    code = main(["dream", *argv, "--data-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "dream" in err  # the progress bar is on stderr
    return json.loads(out)


def _stored(tmp_path) -> list[dict]:
    import msgpack

    from actors.store import read_table

    rows = read_table(str(tmp_path), "trajectories").to_pylist()
    for r in rows:
        r.update(msgpack.unpackb(r.pop("extra"), raw=False))
    return rows


def test_a_short_dream_in_a_simulator_trained_on_recorded_episodes_raises_real_heldout_success(tmp_path, capsys):
    """Recorded episodes only (the base policy's, played for real and stored as an agent's requests), a copy of
    the model fine-tuned on them as the simulator, one round of dreams in it judged by the family's verifier:
    held-out success in the real environment rises, the dreamed successes replay for real, and each stored
    trajectory says it was simulated and by which simulator."""
    from actors.store import read_table
    from simulators.env import Task, family_verifier
    from simulators.model_env import transitions_from_store

    report = _dream(tmp_path, capsys, "--env", "simulated", "--simulator", "trained", "--recorded", "24",
                    "--simulator-steps", "150", "--episodes", "64", "--rounds", "1", "--steps", "32", "--lr", "3e-4",
                    "--items", "50", "--simulators", "2")
    for key in ("env", "simulator", "success_before", "success_after", "forgetting", "agreement",
                "verifier_accepts_right", "verifier_rejects_wrong", "episodes", "seconds"):
        assert key in report
    assert report["env"] == "simulated" and report["simulator"] == "trained" and report["recorded"] == 24
    assert report["success_before"] <= 0.10  # the student's own rate
    assert report["success_after"] >= report["success_before"] + 0.1, report["rounds"]
    assert report["forgetting"] < 0.05
    assert report["agreement"] >= 0.8 and report["switched_off"] is None and report["rounds"][0]["replayed"] > 0
    built = report["simulator_build"]
    assert built["training"]["loss_after"] < built["training"]["loss_before"] / 2  # on held-out recorded episodes
    # the experience: one request per turn, read back as one conversation per recorded episode
    assert len(read_table(str(tmp_path), "interactions")) > 24
    assert sum(t.done for t in transitions_from_store(str(tmp_path))) == 24

    rows = _stored(tmp_path)
    assert rows and len({r["id"] for r in rows}) == len(rows) == report["rounds"][0]["kept"]
    for r in rows:
        provenance = json.loads(r["provenance"])
        assert r["success"] and r["simulated"] and provenance["simulator"] == built["label"]
        assert Task.from_dict(r["task"]).env == "model-simulated"
        assert family_verifier("tools")(r["messages"], provenance["max_turns"])  # re-checked from its observations


def test_a_simulator_whose_dreams_do_not_replay_for_real_is_switched_off_and_the_dream_falls_back(tmp_path, capsys):
    """The model as it is writes no tool message (it never learnt to), and a neighbour vote instead of the
    family's verifier calls a guess a success: the dreamed successes fail when replayed for real, the
    simulator is switched off after its first round, nothing it dreamt is learnt, and the next round rehearses
    in the real environment, whose verified successes are stored unmarked and raise held-out success."""
    from reverie.versions import VersionRegistry
    from simulators.env import Task
    from simulators.tinyworld.tools_env import ToolsEnvironment

    report = _dream(tmp_path, capsys, "--env", "simulated", "--simulator", "retrieval", "--judge", "vote",
                    "--recorded", "16", "--episodes", "32", "--rounds", "2", "--steps", "16", "--lr", "3e-4",
                    "--items", "30", "--simulators", "1")
    first, second = report["rounds"]
    off = report["switched_off"]
    assert off is not None and off["round"] == 1 and off["agreement"] < 0.8 and off["fallback"] == "real", report
    assert first["env"] == "simulated" and first["kept"] == 0 and first["replayed"] > 0
    assert second["env"] == "real" and second["kept"] > 0
    assert report["success_after"] >= report["success_before"] + 0.1

    rows = _stored(tmp_path)
    dreamt = [r for r in rows if r["simulated"]]
    real = [r for r in rows if not r["simulated"]]
    assert dreamt and len(real) == second["kept"]  # stored, marked, and never learnt from
    base = VersionRegistry(tmp_path / "versions").base().version
    for r in real:
        task = Task.from_dict(r["task"])
        budget = json.loads(r["provenance"])["max_turns"]
        assert r["success"] and r["policy_version"] == base
        assert ToolsEnvironment(max_turns=budget).verify(task, r["messages"])  # re-checked by the real verifier


def _recorded_requests(n: int, seed: int = 0) -> list[bytes]:
    """What users' agents sent while they played the tool task (help, both items, the total; every third total
    wrong), as the store records them: one request per turn, the conversation so far and the model's reply."""
    import random

    import msgpack

    from simulators.tinyworld.skills import new_tools_task
    from simulators.tinyworld.text import digits
    from simulators.tinyworld.tools_env import ToolsEnv

    rng, rows = random.Random(seed), []
    for e in range(n):
        task = new_tools_task(rng)
        env = ToolsEnv(task, max_turns=6)
        env.reset()
        for action in ["call help", *(f"call {task.tool} {item}" for item, _ in task.values),
                       f"answer {digits(task.answer + (1 if e % 3 == 2 else 0))}"]:
            rows.append(msgpack.packb({"id": f"chatcmpl-{e}-{len(rows)}", "kind": "chat",
                                       "messages": list(env.transcript), "completion": action}, use_bin_type=True))
            env.step(action)
    return rows


def test_dream_step_in_a_simulator_built_from_recorded_episodes_returns_only_what_may_be_learnt(shipped_model,
                                                                                              tmp_path):
    """The controller's dream step with ``loop.dream_env: simulated`` (the loop config read as the controller
    reads it): on a registered version's weights
    (safetensors alone, completed with the base's config and tokenizer), a simulator fine-tuned on the store's
    recorded tool episodes, one rehearsal in it; its dreamed successes replay for real, so the kept ones are
    returned to learn from, stored once, tagged with that version and the simulator, and accepted again by the
    family's verifier from their own observations."""
    ray = pytest.importorskip("ray")

    from actors.dreams import dream_step, simulated_dream
    from actors.store import read_table, start_store
    from reverie.config import LoopConfig
    from reverie.ray_start import start_ray
    from reverie.versions import VersionRegistry
    from simulators.env import family_verifier
    from simulators.tinyworld import world as W

    registry = VersionRegistry(tmp_path / "versions")
    base = registry.ensure_base(shipped_model).version
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").symlink_to(shipped_model / "model.safetensors")
    version = registry.register(weights, source="test", parent=base).version  # an id that is not the base's
    assert version != base
    words = W.world().heldout_words
    asks = [W.NEW_TOOL_TEMPLATE.format(a=words[i], b=words[i + 1]) for i in range(4)] + ["hello there"]

    start_ray(num_cpus=4)
    try:
        store = start_store(str(tmp_path / "data"), name="test-dream-step-store")
        ray.get(store.append.remote("interactions", _recorded_requests(12)))
        out = dream_step(shipped_model, registry.version_dir(version), version, "test-dream-step-store",
                         tmp_path / "data", asks, episodes=48, seed=0, simulators=1,
                         simulated=simulated_dream(LoopConfig(dream_env="simulated", simulator_steps=150)))
    finally:
        ray.shutdown()
    assert {"episodes", "kept", "success_rate", "seconds", "trajectory_ids", "env", "agreement"} <= set(out)
    assert out["env"] == "simulated" and out["switched_off"] is None and out["agreement"] >= 0.8, out
    assert out["simulator"]["episodes"] == 12 and out["simulator"]["label"].startswith("trained@")
    assert out["episodes"] == 48 and 0 < out["kept"] == len(out["trajectory_ids"])
    rows = read_table(str(tmp_path / "data"), "trajectories").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(out["trajectory_ids"])  # each kept trajectory, once
    for r in rows:
        provenance = json.loads(r["provenance"])
        assert r["success"] and r["simulated"] and r["policy_version"] == version
        assert provenance["simulator"] == out["simulator"]["label"]
        assert family_verifier("tools")(r["messages"], provenance["max_turns"])  # re-checked from its observations


def test_dream_on_a_data_directory_another_store_writes_is_refused_with_one_line(tmp_path, refused):
    from actors.store import ExperienceStoreCore

    serving = ExperienceStoreCore(str(tmp_path))  # the store of a running `reverie serve`, say
    try:
        refused(["dream", "--data-dir", str(tmp_path), "--quiet"], "in use by another experience store")
    finally:
        serving.close()
