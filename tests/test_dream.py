"""`reverie dream`: a short dream (rehearse -> keep verified successes -> distil
-> re-measure) raises held-out success on the tool task from the student's own
rate, with no demonstration given, and stores each kept trajectory once, tagged
with the version registry's ids.  ``actors.dreams.dream_step`` (the controller's
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
])
def test_dream_rejects_bad_input_with_one_line_and_exit_2(argv, message, refused):
    refused(["dream", *argv, "--quiet"], message)


def test_short_dream_raises_heldout_success_and_stores_verified_trajectories_once(tmp_path, capsys):
    from actors.store import read_table
    from simulators.env import Task
    from simulators.tinyworld.tools_env import ToolsEnvironment

    code = main(["dream", "--episodes", "64", "--rounds", "1", "--steps", "32", "--lr", "3e-4", "--items", "50",
                       "--simulators", "2", "--data-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    report = json.loads(out)
    for key in ("skill", "simulators", "episodes", "success_before", "success_after", "retention_avg", "forgetting",
                "episodes_per_second", "seconds"):
        assert key in report
    assert report["skill"] == "tools" and report["simulators"] == 2 and report["episodes"] == 64
    assert report["success_before"] <= 0.10  # the student's own rate
    assert report["success_after"] >= report["success_before"] + 0.1
    assert report["forgetting"] < 0.05
    assert set(report["episodes_per_second_by_simulators"]) == {"1", "2"}
    assert "dream" in err  # the progress bar is on stderr

    rows = read_table(str(tmp_path), "trajectories").to_pylist()
    assert rows and len({r["id"] for r in rows}) == len(rows) == report["rounds"][0]["kept"]
    import msgpack

    from reverie.versions import VersionRegistry

    registry = VersionRegistry(tmp_path / "versions")  # one version space: the base is the registry's id
    for r in rows:
        task = Task.from_dict(msgpack.unpackb(r["extra"], raw=False)["task"])
        budget = json.loads(r["provenance"])["max_turns"]
        assert r["success"] and not r["simulated"] and r["policy_version"] == registry.base().version
        assert ToolsEnvironment(max_turns=budget).verify(task, r["messages"])  # re-checked by the verifier


def test_dream_step_stores_verified_trajectories_tagged_with_the_given_version(shipped_model, tmp_path):
    """The controller's dream step: an engine on a registered version's weights (safetensors alone, completed
    with the base's config and tokenizer), the proposer seeded with what users asked, one rehearsal; the kept
    trajectories are in the named store's table, tagged with that version and accepted again by the verifier."""
    ray = pytest.importorskip("ray")
    import msgpack

    from actors.dreams import dream_step
    from actors.store import read_table, start_store
    from reverie.versions import VersionRegistry
    from simulators.env import Task
    from simulators.tinyworld import world as W
    from simulators.tinyworld.tools_env import ToolsEnvironment
    from reverie.ray_start import start_ray

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
        ray.get(store.count.remote("trajectories"))  # registered under its name
        out = dream_step(shipped_model, registry.version_dir(version), version, "test-dream-step-store",
                         tmp_path / "data", asks, episodes=48, seed=0, simulators=1)
    finally:
        ray.shutdown()
    assert set(out) == {"episodes", "kept", "success_rate", "seconds", "trajectory_ids"}
    assert out["episodes"] == 48 and out["seconds"] > 0
    assert 0 < out["kept"] == len(out["trajectory_ids"]) and out["success_rate"] == out["kept"] / 48
    rows = read_table(str(tmp_path / "data"), "trajectories").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(out["trajectory_ids"])  # each kept trajectory, once
    for r in rows:
        task = Task.from_dict(msgpack.unpackb(r["extra"], raw=False)["task"])
        budget = json.loads(r["provenance"])["max_turns"]
        assert r["success"] and not r["simulated"] and r["policy_version"] == version
        assert ToolsEnvironment(max_turns=budget).verify(task, r["messages"])  # re-checked by the verifier


def test_dream_on_a_data_directory_another_store_writes_is_refused_with_one_line(tmp_path, refused):
    from actors.store import ExperienceStoreCore

    serving = ExperienceStoreCore(str(tmp_path))  # the store of a running `reverie serve`, say
    try:
        refused(["dream", "--data-dir", str(tmp_path), "--quiet"], "in use by another experience store")
    finally:
        serving.close()
