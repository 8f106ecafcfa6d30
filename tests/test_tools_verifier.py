"""The tools family's verifier judges an episode from its own observations: it accepts right answers and
refuses wrong ones on held-out episodes played in the real environment, and trusts no claim of success."""
from __future__ import annotations

import random

from simulators.tinyworld import world as W
from simulators.tinyworld.skills import new_tools_task
from simulators.tinyworld.text import digits
from simulators.tinyworld.tools_env import ToolsEnv, solve, verify
from simulators.tinyworld.tools_verifier import items_asked, verify_tools_family

MAX_TURNS = 5


def play(task, actions):
    """The transcript of ``actions`` played in the real environment (observations are the world's)."""
    env = ToolsEnv(task, max_turns=MAX_TURNS)
    env.reset()
    for action in actions:
        if env.step(action).done:
            break
    return env.transcript


def wrong_episode(task, rng):
    """A mistake an agent makes; its answer is never the right total (a lucky guess is the next test's)."""
    (a, va), (b, vb) = task.values

    def wrong(n: int) -> str:  # a mistaken total, moved off the right one where the mistake happens to hit it
        return digits(n + 1 if n == task.answer else n)

    other = next(w for w in W.world().heldout_words if w not in (a, b))
    kind = rng.randrange(6)
    if kind == 0:  # both looked up, the sum got wrong
        return play(task, [f"call {task.tool} {a}", f"call {task.tool} {b}",
                           f"answer {wrong(va + vb + rng.choice([-11, -10, -1, 1, 2, 10]))}"])
    if kind == 1:  # answered one value
        return play(task, [f"call {task.tool} {a}", f"call {task.tool} {b}", f"answer {wrong(va)}"])
    if kind == 2:  # looked up the wrong item
        return play(task, [f"call {task.tool} {a}", f"call {task.tool} {other}", f"answer {wrong(va + va)}"])
    if kind == 3:  # the wrong tool
        tool = next(w for w in W.world().item_words if w != task.tool)
        return play(task, [f"call {tool} {a}", f"call {tool} {b}", f"answer {wrong(va + vb + 1)}"])
    if kind == 4:  # one lookup, twice the value
        return play(task, [f"call {task.tool} {a}", f"answer {wrong(2 * va)}"])
    return play(task, ["call help", f"call {task.tool} {b}", f"answer {wrong(vb + 10)}"])


def test_the_verifier_accepts_right_episodes_and_refuses_wrong_ones_at_least_095_each_on_held_out_tasks():
    rng = random.Random("tools-verifier/held-out")
    tasks = [new_tools_task(rng) for _ in range(400)]
    right = [solve(t, ask_help=i % 2 == 0) for i, t in enumerate(tasks[:200])]
    wrong = [wrong_episode(t, rng) for t in tasks[200:]]
    assert all(verify(t, m, MAX_TURNS) for t, m in zip(tasks[:200], right))  # the real environment agrees
    assert not any(verify(t, m, MAX_TURNS) for t, m in zip(tasks[200:], wrong))
    accepts_right = sum(verify_tools_family(m, MAX_TURNS) for m in right) / len(right)
    rejects_wrong = sum(not verify_tools_family(m, MAX_TURNS) for m in wrong) / len(wrong)
    assert accepts_right >= 0.95 and rejects_wrong >= 0.95, (accepts_right, rejects_wrong)


def test_a_right_number_that_was_never_observed_is_refused():
    task = new_tools_task(random.Random(1))
    guess = play(task, [f"answer {digits(task.answer)}"])
    assert verify(task, guess, MAX_TURNS)  # the real environment rewards a lucky guess...
    assert not verify_tools_family(guess, MAX_TURNS)  # ...the verifier wants the lookups behind it


def test_the_verdict_follows_what_the_episode_observed_not_a_claim_of_success():
    task = new_tools_task(random.Random(2))
    (a, va), (b, vb) = task.values
    episode = [{"role": "user", "content": task.question},
               {"role": "assistant", "content": f"call {task.tool} {a}"}, {"role": "tool", "content": digits(va + 1)},
               {"role": "assistant", "content": f"call {task.tool} {b}"}, {"role": "tool", "content": digits(vb)}]
    consistent = episode + [{"role": "assistant", "content": f"answer {digits(va + 1 + vb)}"}]
    true_sum = episode + [{"role": "assistant", "content": f"answer {digits(va + vb)}"}]
    assert verify_tools_family(consistent, MAX_TURNS)  # a simulator's wrong value is for the agreement check
    assert not verify_tools_family(true_sum, MAX_TURNS)  # an answer the observations do not support
    claimed = true_sum + [{"role": "tool", "content": "success : reward 1"}]
    assert not verify_tools_family(claimed, MAX_TURNS)
    assert not verify_tools_family(consistent[:1] + consistent[1:] * 2, MAX_TURNS)  # too many actions


def test_only_a_tool_question_has_items():
    q = W.NEW_TOOL_TEMPLATE.format(a="kibo", b="lamu")
    assert items_asked(q) == ("kibo", "lamu")
    assert items_asked("copy : a b c") is None
    assert not verify_tools_family([{"role": "user", "content": "copy : a b c"},
                                    {"role": "assistant", "content": "answer 1"}], MAX_TURNS)
