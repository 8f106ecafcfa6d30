"""The model-simulated environment: from recorded real transitions of a task
family, it answers actions with model-predicted observations and
neighbour-voted rewards, every step marked simulated and traceable to the
recorded transitions it was conditioned on."""
from __future__ import annotations

import random

import msgpack
import pytest

from actors.store import ExperienceStoreCore
from simulators.env import make
from simulators.model_env import ModelSimulatedEnv, Transition, transitions_from, transitions_from_store
from simulators.rollout import RolloutEngine
from simulators.model_env import engine_predictor
from simulators.success import SuccessFilter, lessons
from simulators.tinyworld.skills import new_tools_task
from simulators.tinyworld.text import digits
from simulators.tinyworld.tools_env import ToolsEnv, to_task


def recorded(n: int = 6, seed: int = 0) -> list[tuple[str, list[dict], float]]:
    """Real episodes of the tool environment (help first, then both items; every
    third one answers wrong), as a recorder would have stored them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = new_tools_task(rng)
        env = ToolsEnv(task, max_turns=6)
        env.reset()
        env.step("call help")
        for item, _ in task.values:
            env.step(f"call {task.tool} {item}")
        result = env.step(f"answer {digits(task.answer + (1 if i % 3 == 2 else 0))}")
        out.append((f"rec-{i}", env.transcript, result.reward))
    return out


@pytest.fixture(scope="module")
def predictor(llm, shipped_model):
    return engine_predictor(RolloutEngine.from_llm(llm, shipped_model))


def test_recorded_conversations_become_transitions_with_observations_and_endings():
    ts = transitions_from(recorded(3))
    assert len(ts) == 3 * 4
    help_t = ts[0]
    assert help_t.action == "call help" and help_t.observation.startswith("tools : ") and not help_t.done
    ends = [t for t in ts if t.done]
    assert len(ends) == 3 and all(t.observation is None for t in ends)
    assert [t.reward for t in ends] == [1.0, 1.0, 0.0]


def test_transitions_are_read_from_recorded_interactions_in_the_store(tmp_path):
    core = ExperienceStoreCore(str(tmp_path))
    recs = []
    for cid, messages, reward in recorded(2):
        recs.append(msgpack.packb({"id": cid, "kind": "chat", "messages": messages[:-1],
                                   "completion": messages[-1]["content"], "reward": reward}, use_bin_type=True))
    core.append("interactions", recs)
    core.flush()
    ts = transitions_from_store(str(tmp_path))
    assert len(ts) == 8 and sum(t.done for t in ts) == 2
    assert {t.id.split("#")[0] for t in ts} == {"rec-0", "rec-1"}


def test_model_simulated_steps_are_marked_and_conditioned_on_the_nearest_recorded_transitions(predictor):
    ts = transitions_from(recorded(6))
    env = make("model-simulated", max_turns=6, transitions=ts, predict=predictor, k=3)
    assert env.simulated is True
    task = to_task(new_tools_task(random.Random(42)))
    assert env.reset(task) == [{"role": "user", "content": task.prompt}]
    step = env.step("call help")
    assert not step.done and step.reward == 0.0 and isinstance(step.observation, str)
    assert step.info["simulated"] is True
    ids = {t.id for t in ts}
    near = step.info["neighbours"]
    assert len(near) == 3 and set(near) <= ids
    assert all(next(t for t in ts if t.id == n).action == "call help" for n in near)  # the most similar ones
    assert env.transcript[-1] == {"role": "tool", "content": step.observation}
    end = env.step("answer 5 0")
    assert end.done and end.info["simulated"] is True
    assert all(next(t for t in ts if t.id == n).done for n in end.info["neighbours"])


def test_simulated_successes_are_stored_marked_and_not_trusted_alone(predictor):
    ts = transitions_from(recorded(6))
    env = ModelSimulatedEnv(max_turns=6, transitions=ts, predict=predictor)
    task = to_task(new_tools_task(random.Random(43)), family="recorded tool asks")  # a family with no verifier
    env.reset(task)
    env.step("call help")
    env.step("answer 7 7")
    verdict = env.verify(task, env.transcript)
    # a neighbour-voted reward: the recorded endings that look most like this one were mostly rewarded
    assert verdict is True
    assert ModelSimulatedEnv(transitions=[Transition("x", (), "answer 1", None, 0.0, True)]).verify(
        task, [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": "answer 1"}]) is False

    class ListStore:
        def __init__(self):
            self.rows = []

        def append(self, table, records):
            self.rows += [msgpack.unpackb(r, raw=False) for r in records]
            return len(records)

    store = ListStore()
    record = {"id": "ep-1", "task_id": task.id, "env": env.name, "policy_version": 0, "reward": 1.0,
              "success": verdict, "simulated": env.simulated, "messages": env.transcript, "started": 0.0,
              "seconds": 0.0, "provenance": "{}"}
    SuccessFilter(store).keep([record])
    assert store.rows[0]["simulated"] is True
    with pytest.raises(ValueError, match="no kept trajectory"):
        next(lessons(store.rows, random.Random(0)))  # the learner does not take simulated successes alone
    assert next(lessons(store.rows, random.Random(0), trusted_only=False)).teacher[0]["role"] == "system"


def test_a_family_with_a_verifier_is_judged_by_it_not_by_the_simulators_neighbour_vote():
    """The vote above accepts a guess after `call help`; the tools family's verifier wants the answer to be the
    sum of the values the episode observed for both asked items."""
    ts = transitions_from(recorded(6))
    env = ModelSimulatedEnv(max_turns=6, transitions=ts)
    tools = new_tools_task(random.Random(43))
    task = to_task(tools)  # family "tools"
    guess = [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": "call help"},
             {"role": "tool", "content": f"tools : {tools.tool}"}, {"role": "assistant", "content": "answer 7 7"}]
    done, reward, _ = env._vote(guess[:3], "answer 7 7")
    assert done and reward >= 0.5  # the neighbours would call it a success
    assert env.verify(task, guess) is False
    (a, va), (b, vb) = tools.values
    looked_up = [*guess[:3], {"role": "assistant", "content": f"call {tools.tool} {a}"},
                 {"role": "tool", "content": digits(va)}, {"role": "assistant", "content": f"call {tools.tool} {b}"},
                 {"role": "tool", "content": digits(vb)}, {"role": "assistant", "content": f"answer {digits(va + vb)}"}]
    assert env.verify(task, looked_up) is True


def test_an_episode_recorded_as_one_request_per_turn_is_read_as_one_conversation(tmp_path):
    """A tool-using client sends the growing conversation once per turn: the store holds one row per request.
    Only the last row ends the episode; the earlier rows' replies were answered by the tool, not ended."""
    core = ExperienceStoreCore(str(tmp_path))
    (cid, messages, reward), = recorded(1)
    rows = []
    for n, i in enumerate(i for i, m in enumerate(messages) if m["role"] == "assistant"):
        rows.append(msgpack.packb({"id": f"{cid}-turn{n}", "kind": "chat", "messages": messages[:i],
                                   "completion": messages[i]["content"]}, use_bin_type=True))
    core.append("interactions", rows)
    core.flush()
    ts = transitions_from_store(str(tmp_path))
    assert [t.action for t in ts] == [m["content"] for m in messages if m["role"] == "assistant"]
    assert [t.done for t in ts] == [False, False, False, True]
    assert ts[0].observation.startswith("tools : ")
