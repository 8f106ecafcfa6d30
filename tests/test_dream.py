"""`reverie dream`: a short dream (rehearse -> keep verified successes -> distil
-> re-measure) raises held-out success on the tool task from the student's own
rate, with no demonstration given, in a simulator the model built from
recorded episodes; a simulator whose dreams do not replay for real is switched
off; each kept trajectory is stored once, tagged with the version registry's
ids and with where it was played.  ``actors.dreams.dream_step`` (the controller's
dream) stores verified trajectories tagged with the version it is given, on
the rollout engine the controller keeps across cycles."""
from __future__ import annotations

from simulators.tinyworld.plugin import TinyWorld

import json
import time

import pytest

from reverie.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--skill", "facts"], "unknown skill 'facts' for dream in the tiny world; skills are: tools"),
    (["--world", "none"], "the none world has no skill to dream: none of its families has an environment"),
    (["--world", "chat", "--skill", "tools"], "unknown skill 'tools' for dream in the chat world; skills are: calc"),
    (["--world", "chatty"], "unknown world 'chatty': worlds are chat, none, tiny, or package.module:Class"),
    (["--simulators", "0"], "--simulators must be a positive whole number"),
    (["--episodes", "many"], "--episodes must be a positive whole number"),
    (["--retain", "1.5"], "--retain must be at least 0 and below 1"),
    (["--model", "/no/such/model"], "does not exist"),
    (["--env", "dreamland"], "--env must be real or simulated"),
    (["--simulator", "oracle"], "--simulator must be one of retrieval, trained, both"),
    (["--min-agreement", "2"], "--min-agreement must be between 0 and 1"),
    (["--judge", "me"], "--judge must be one of family, vote"),
    (["--fallback", "later"], "--fallback must be real or skip"),
    (["--teacher-context", "mine"], "--teacher-context must be one of other, same"),
    (["--temperature", "3"], "--temperature must be between 0 and 2"),
    (["--temperature", "warm"], "--temperature must be a number"),
    (["--passes", "-1"], "--passes must be between 0 and 100"),
    (["--teacher", "ema"], "--teacher must be one of base, parent"),
    (["--benchmark-items", "0"], "--benchmark-items must be a positive whole number"),
    (["--out", "/nonexistent-folder/r.json"], "must be a file in an existing folder"),
])
def test_dream_rejects_bad_input_with_one_line_and_exit_2(argv, message, refused):
    refused(["dream", *argv, "--quiet"], message)


def test_a_dream_round_learns_in_proportion_to_the_states_it_kept_when_passes_are_set():
    """``--passes``: updates are passes over the kept successes' own states (never the opening's worked
    examples), ``batch_size`` a step, at least 1 and at most ``--steps``; without it every round learns ``--steps``."""
    from actors.dreams import DreamConfig, round_updates
    from simulators.chatworld.calc import OPENING, problems, solve

    kept = [{"messages": solve(p), "opening": OPENING} for p in problems("train", 0, 20)]  # 2 states each
    cfg = DreamConfig(model_dir="m", steps=30, batch_size=8, passes=2)
    assert [round_updates(cfg, kept[:n]) for n in (0, 1, 2, 10, 20)] == [0, 1, 1, 5, 10]
    assert round_updates(DreamConfig(model_dir="m", steps=4, batch_size=8, passes=2), kept) == 4
    assert round_updates(DreamConfig(model_dir="m", steps=30, passes=0), kept[:1]) == 30


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
    from reverie.versions import VersionRegistry
    from simulators.model_env import transitions_from_store

    report = _dream(tmp_path, capsys, "--env", "simulated", "--simulator", "trained", "--recorded", "24",
                    "--simulator-steps", "100", "--episodes", "96", "--rounds", "2", "--steps", "40", "--items", "50",
                    "--simulators", "2")
    for key in ("env", "simulator", "success_before", "success_after", "forgetting", "agreement",
                "verifier_accepts_right", "verifier_rejects_wrong", "episodes", "seconds"):
        assert key in report
    assert report["env"] == "simulated" and report["simulator"] == "trained" and report["recorded"] == 24
    assert report["success_before"] <= 0.10  # the student's own rate
    assert report["success_after"] >= report["success_before"] + 0.1, report["rounds"]
    assert report["forgetting"] < 0.05
    assert report["agreement"] >= 0.8 and report["switched_off"] is None and report["rounds"][0]["replayed"] > 0
    assert all(r["env"] == "simulated" for r in report["rounds"])
    built = report["simulator_build"]
    assert built["training"]["loss_after"] < built["training"]["loss_before"] / 2  # on held-out recorded episodes
    # the experience: one request per turn, read back as one conversation per recorded episode
    assert len(read_table(str(tmp_path), "interactions")) > 24
    assert sum(t.done for t in transitions_from_store(str(tmp_path))) == 24
    # each round's weights stay, once, as a version; the learner's resume checkpoints (weights and optimiser
    # state, 3 times the weights) go with the run: a 3-round dream on SmolLM2 left 10 GB of them behind
    registry = VersionRegistry(tmp_path / "versions")
    assert {c.version for c in registry.all() if c.source == "dream"} == \
        {r["version"] for r in report["rounds"]} - {registry.base().version}
    assert not list(tmp_path.glob("dreams/*/step-*")), sorted(p.name for p in tmp_path.glob("dreams/*/*"))

    rows = _stored(tmp_path)
    assert rows and len({r["id"] for r in rows}) == len(rows) == sum(r["kept"] for r in report["rounds"])
    for r in rows:
        provenance = json.loads(r["provenance"])
        assert r["success"] and r["simulated"] and provenance["simulator"] == built["label"]
        assert Task.from_dict(r["task"]).env == "model-simulated"
        assert family_verifier("tools")(r["messages"], provenance["max_turns"])  # re-checked from its observations


def _recorded_requests(n: int, seed: int = 0) -> list[bytes]:
    """What users' agents sent while they played the tool task (help, both items, the total; every third total
    wrong), as the store records them: one request per turn, the conversation so far and the model's reply;
    the last one carries the episode's reward."""
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
            row = {"id": f"chatcmpl-{e}-{len(rows)}", "kind": "chat", "messages": list(env.transcript),
                   "completion": action}
            result = env.step(action)
            if result.done:
                row["reward"] = result.reward  # the user's rating of the answer, as the recorder adds it
            rows.append(msgpack.packb(row, use_bin_type=True))
    return rows


def test_a_dream_step_whose_simulator_disagrees_with_reality_switches_it_off_and_learns_only_real_dreams(
        shipped_model, tmp_path):
    """The controller's dream step with ``loop.dream_env: simulated`` (the loop config read as the controller
    reads it) on a registered version's weights (safetensors alone, completed with the base's config and
    tokenizer).  The simulator is the model as it is, shown the nearest recorded transitions: it never learnt
    to write a tool message, and with the neighbour vote judging (as for a family with no verifier) it calls
    guesses successes.  Replayed for real they fail: the simulator is switched off, its dreams stay stored
    and marked but are not returned to learn from, and the step rehearses again in the real environment,
    whose verified successes are returned, stored once, tagged with that version."""
    ray = pytest.importorskip("ray")
    import msgpack

    from actors.dreams import dream_step, simulated_dream
    from actors.store import read_table, start_store
    from reverie.config import LoopConfig
    from reverie.ray_start import start_ray
    from reverie.versions import VersionRegistry
    from simulators.env import Task
    from simulators.tinyworld import world as W
    from simulators.tinyworld.tools_env import ToolsEnvironment

    registry = VersionRegistry(tmp_path / "versions")
    base = registry.ensure_base(shipped_model).version
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").symlink_to(shipped_model / "model.safetensors")
    version = registry.register(weights, source="test", parent=base).version  # an id that is not the base's
    assert version != base
    words = W.world().heldout_words
    asks = [W.NEW_TOOL_TEMPLATE.format(a=words[i], b=words[i + 1]) for i in range(4)] + ["hello there"]
    simulated = dict(simulated_dream(LoopConfig(dream_env="simulated", simulator="retrieval")), judge="vote")

    start_ray(num_cpus=4)
    try:
        store = start_store(str(tmp_path / "data"), name="test-dream-step-store")
        ray.get(store.append.remote("interactions", _recorded_requests(12)))
        out = dream_step(shipped_model, registry.version_dir(version), version, "test-dream-step-store",
                         tmp_path / "data", asks, episodes=48, seed=0, simulators=1, simulated=simulated,
                         family=TinyWorld().dream_families["tools"])
    finally:
        ray.shutdown()
    assert {"episodes", "kept", "success_rate", "seconds", "trajectory_ids", "env", "agreement"} <= set(out)
    off = out["switched_off"]
    assert off is not None and off["agreement"] < 0.8 and off["fallback"] == "real" and out["replayed"] > 0, out
    assert out["env"] == "real" and out["simulator"]["episodes"] == 12
    assert out["episodes"] == 48 and 0 < out["kept"] == len(out["trajectory_ids"])
    assert out["success_rate"] == out["kept"] / 48

    rows = read_table(str(tmp_path / "data"), "trajectories").to_pylist()
    dreamt = [r for r in rows if r["simulated"]]
    real = [r for r in rows if not r["simulated"]]
    assert dreamt and sorted(r["id"] for r in real) == sorted(out["trajectory_ids"])  # each, once; dreams kept out
    for r in dreamt:
        assert json.loads(r["provenance"])["simulator"] == out["simulator"]["label"]
    for r in real:
        task = Task.from_dict(msgpack.unpackb(r["extra"], raw=False)["task"])
        budget = json.loads(r["provenance"])["max_turns"]
        assert r["success"] and r["policy_version"] == version
        assert ToolsEnvironment(max_turns=budget).verify(task, r["messages"])  # re-checked by the real verifier


def test_the_controllers_dream_engine_is_lent_to_each_dream_step_replaced_when_dead_and_stopped_when_closed(
        shipped_model, tmp_path):
    """The controller keeps one rollout engine across cycles (a start cost 40 to 60 s of every cycle beside
    serving, the rehearsal itself 2.4 s) and lends it to each dream step: the step reloads it on the weights of
    the version it dreams with, tags what it keeps with that version, and leaves the engine running and
    answering; the controller hands out the same engine again, replaces one that no longer answers (its process
    killed) with a running one, and ``close`` (the controller actor's ``stop``) ends it."""
    ray = pytest.importorskip("ray")

    from actors.controller import Controller
    from actors.dreams import dream_step
    from actors.store import read_table, start_store
    from reverie.config import ServeConfig
    from reverie.ray_start import start_ray
    from simulators.tinyworld import world as W

    data = tmp_path / "data"
    start_ray(num_cpus=4)
    try:
        ctl = Controller(ServeConfig(model_dir=shipped_model, data_dir=str(data)))
        base = ctl.registry.base().version
        weights = tmp_path / "weights"
        weights.mkdir()
        (weights / "model.safetensors").symlink_to(shipped_model / "model.safetensors")
        version = ctl.registry.register(weights, source="test", parent=base).version  # an id not the base's
        words = W.world().heldout_words
        asks = [W.NEW_TOOL_TEMPLATE.format(a=words[i], b=words[i + 1]) for i in range(4)]
        store = start_store(str(data), name="test-lent-engine-store")  # held: it lives while held
        engine = ctl._dream_engine()
        assert ray.get(engine.version.remote(), timeout=60) == base
        out = dream_step(shipped_model, ctl.registry.version_dir(version), version, "test-lent-engine-store", data,
                         asks, episodes=24, seed=0, simulators=1, engine=engine,
                         family=TinyWorld().dream_families["tools"])
        served = ray.get(engine.version.remote(), timeout=60)
        reply = ray.get(engine.generate.remote([[{"role": "user", "content": "reverse a b c"}]]), timeout=60)
        assert ctl._dream_engine() is engine

        def until_dead(actor, what: str) -> None:
            deadline = time.monotonic() + 60  # ray.kill is asynchronous: a call just after it may still be answered
            while True:
                try:
                    ray.get(actor.version.remote(), timeout=30)
                except ray.exceptions.RayActorError:
                    return
                assert time.monotonic() < deadline, f"the dream engine still answers a minute after {what}"
                time.sleep(0.5)

        ray.kill(engine)
        until_dead(engine, "ray.kill")  # (once, on a loaded machine, the controller's look still got an answer)
        second = ctl._dream_engine()
        assert second is not engine and ray.get(second.version.remote(), timeout=60) == base
        ctl.close()
        until_dead(second, "close")
    finally:
        ray.shutdown()
    assert served == version and reply and reply[0]
    assert out["env"] == "real" and out["episodes"] == 24 and out["kept"] == len(out["trajectory_ids"]) > 0
    rows = read_table(str(data), "trajectories").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(out["trajectory_ids"])
    assert {r["policy_version"] for r in rows} == {version}


def test_dream_on_a_data_directory_another_store_writes_is_refused_with_one_line(tmp_path, refused):
    from actors.store import ExperienceStoreCore

    serving = ExperienceStoreCore(str(tmp_path))  # the store of a running `reverie serve`, say
    try:
        refused(["dream", "--data-dir", str(tmp_path), "--quiet"], "in use by another experience store")
    finally:
        serving.close()


def test_dream_on_a_model_of_no_known_world_says_to_give_the_world_in_one_line(refused, shipped_model, tmp_path):
    """A copy of the tiny model is not the tiny world's (``reverie.models.default_world``): its world is ``none``."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shipped_model, copy)
    refused(["dream", "--model", str(copy), "--data-dir", str(tmp_path / "d")], "give --world: chat for calc")
    assert not (tmp_path / "d").exists()
