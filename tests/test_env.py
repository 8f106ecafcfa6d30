"""The dream environment interface, its registry, and the tiny world's tool
environment behind it (its verifier decides success, nothing else)."""
from __future__ import annotations

import random
import textwrap

import pytest

from simulators import env as E
from simulators.tinyworld.skills import new_tools_task
from simulators.tinyworld.text import digits
from simulators.tinyworld.tools_env import EVAL_MAX_TURNS, ToolsEnvironment, from_task, solve, to_task


@pytest.fixture
def task():
    return to_task(new_tools_task(random.Random(7)))


def play(env, task, actions):
    env.reset(task)
    steps = [env.step(a) for a in actions]
    return steps


def test_tools_env_is_found_by_name_and_implements_the_interface(task):
    env = E.make("tinyworld-tools", max_turns=5)
    assert isinstance(env, E.Environment)
    assert env.name == "tinyworld-tools" and env.simulated is False and env.max_turns == 5
    assert env.reset(task) == [{"role": "user", "content": task.prompt}]


def test_tools_env_steps_follow_the_protocol_and_reward_only_the_right_sum(task):
    t = from_task(task)
    env = E.make("tinyworld-tools", max_turns=5)
    (a_item, a_val), (b_item, b_val) = t.values
    s = play(env, task, ["call help", f"call {t.tool} {a_item}", f"call {t.tool} {b_item}", f"answer {digits(a_val + b_val)}"])
    assert s[0] == E.Step(f"tools : {t.tool}", 0.0, False)
    assert s[1].observation == digits(a_val) and s[2].observation == digits(b_val)
    assert s[3].done and s[3].reward == 1.0 and s[3].observation is None
    assert env.verify(task, env.transcript)
    wrong = play(env, task, [f"answer {digits(a_val + b_val + 1)}"])
    assert wrong[0].done and wrong[0].reward == 0.0 and not env.verify(task, env.transcript)


def test_tools_env_ends_the_episode_at_its_turn_budget(task):
    env = E.make("tinyworld-tools", max_turns=2)
    s = play(env, task, ["call help", "call help"])
    assert not s[0].done and s[1].done and s[1].reward == 0.0


def test_tools_verifier_replays_the_actions_against_the_real_environment(task):
    t = from_task(task)
    with_help = solve(t, ask_help=True)  # four assistant turns
    assert ToolsEnvironment(max_turns=4).verify(task, with_help)
    assert not ToolsEnvironment(max_turns=EVAL_MAX_TURNS).verify(task, with_help)  # over the eval budget
    assert ToolsEnvironment(max_turns=EVAL_MAX_TURNS).verify(task, solve(t, ask_help=False))
    forged = [dict(m) for m in with_help]
    forged[-1]["content"] = "answer " + digits(t.answer + 1)
    assert not ToolsEnvironment(max_turns=6).verify(task, forged)
    other = to_task(new_tools_task(random.Random(8)))
    assert not ToolsEnvironment(max_turns=6).verify(other, with_help)  # another task's transcript
    trailing = with_help + [{"role": "assistant", "content": "call help"}]
    assert not ToolsEnvironment(max_turns=6).verify(task, trailing)  # nothing may follow the answer


def test_task_ids_are_content_hashes_so_duplicates_collide(task):
    again = E.Task(task.env, "  " + task.prompt, dict(task.spec), "another family")
    assert again.id == task.id
    assert E.Task.from_dict(task.to_dict()) == task
    assert to_task(new_tools_task(random.Random(9))).id != task.id


def test_user_environment_registers_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_countdown_env.py").write_text(textwrap.dedent('''
        from simulators.env import Step

        class Countdown:
            """Say the number one below the one shown; done at zero."""
            name = "countdown"
            simulated = False

            def __init__(self, max_turns=5):
                self.max_turns = max_turns
                self._t = []

            def reset(self, task):
                self._n = int(task.spec["start"])
                self._t = [{"role": "user", "content": str(self._n)}]
                return list(self._t)

            def step(self, action):
                self._t.append({"role": "assistant", "content": action})
                ok = action.strip() == str(self._n - 1)
                self._n -= 1
                done = not ok or self._n == 0 or len(self._t) // 2 >= self.max_turns
                if not done:
                    self._t.append({"role": "user", "content": str(self._n)})
                return Step(None if done else str(self._n), 1.0 if ok and self._n == 0 else 0.0, done)

            @property
            def transcript(self):
                return list(self._t)

            def verify(self, task, messages):
                said = [m["content"].strip() for m in messages if m["role"] == "assistant"]
                return said == [str(i) for i in range(int(task.spec["start"]) - 1, -1, -1)]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = E.make("my_countdown_env:Countdown", max_turns=5)
    task = E.Task("my_countdown_env:Countdown", "count down", {"start": 2})
    env.reset(task)
    assert env.step("1") == E.Step("1", 0.0, False)
    assert env.step("0").reward == 1.0
    assert env.verify(task, env.transcript)
    assert "my_countdown_env:Countdown" in E.available()


def test_user_environment_registers_by_entry_point(tmp_path, monkeypatch):
    (tmp_path / "ep_env_mod.py").write_text("from simulators.tinyworld.tools_env import ToolsEnvironment as Env\n")
    dist = tmp_path / "ep_env_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-env-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{E.ENTRY_POINT_GROUP}]\nmy-tools = ep_env_mod:Env\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "my-tools" in E.available()
    assert E.make("my-tools", max_turns=4).max_turns == 4


def test_unknown_environment_says_which_ones_exist():
    with pytest.raises(E.UnknownEnvironment, match="tinyworld-tools"):
        E.make("no-such-env")
    with pytest.raises(E.UnknownEnvironment, match="import"):
        E.make("no_such_module_xyz:Env")
