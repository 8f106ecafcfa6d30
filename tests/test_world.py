"""The tiny world's content, generators and verifiers."""
from __future__ import annotations

import itertools
import random

import pytest

from simulators.tinyworld import corpus
from simulators.tinyworld import world as W
from simulators.tinyworld.skills import BASE_SKILLS, NEW_SKILLS, base_item, new_item
from simulators.tinyworld.tools_env import ToolsEnv, solve


@pytest.mark.parametrize("skill", BASE_SKILLS)
def test_base_skill_verifier_accepts_the_answer_and_rejects_others(skill):
    rng = random.Random(1)
    for _ in range(50):
        item = base_item(skill, rng)
        assert item.verify(item.answer)
        assert item.verify("  " + item.answer.replace(" ", "  ") + " ")  # whitespace is not an error
        assert not item.verify(item.answer + " x")
        assert not item.verify("")


def test_add_reverse_sort_answers_are_correct():
    rng = random.Random(2)
    add = base_item("add", rng)
    a, b = add.prompt[-1]["content"].removeprefix("add : ").split(" + ")
    assert int(add.answer.replace(" ", "")) == int(a.replace(" ", "")) + int(b.replace(" ", ""))
    rev = base_item("reverse", rng)
    assert rev.answer.split() == rev.prompt[-1]["content"].split()[2:][::-1]
    srt = base_item("sort", rng)
    assert srt.answer.split() == sorted(srt.prompt[-1]["content"].split()[2:])


def test_format_rule_applies_only_to_the_task_it_names():
    rng = random.Random(3)
    seen = {True: 0, False: 0}
    for _ in range(300):
        item = base_item("format", rng)
        rule, task = item.prompt[0]["content"], item.prompt[1]["content"]
        applies = task.split(" :")[0] == rule.split("when asked to ")[1].split(" ,")[0]
        plain = {"[": False, "*": False}.get(item.answer[0], True) and not item.answer.endswith(" .") and not item.answer.startswith("ok ")
        seen[applies] += 1
        assert plain != applies or item.answer.split()[0] == "ok" and not applies
    assert seen[True] > 100 and seen[False] > 50


def test_teacher_view_carries_the_privileged_context_and_student_view_does_not():
    rng = random.Random(4)
    for skill in NEW_SKILLS:
        t = new_item(skill, "teacher", rng)
        s = new_item(skill, "student", rng)
        assert t.prompt[0]["role"] == "system" and len(t.prompt) == 2
        assert [m["role"] for m in s.prompt] == ["user"]
    fact_item = new_item("facts", "teacher", random.Random(5))
    assert fact_item.answer in fact_item.prompt[0]["content"]


def test_new_skill_content_never_occurs_in_pretraining_data():
    w = W.world()
    new_words = {f.ent for f in w.new_facts} | {f.val for f in w.new_facts} | {w.new_tool}
    rule = W.rule_text(*W.NEW_RULE)
    seen_words: set[str] = set()
    for conv in itertools.islice(corpus.conversations(0), 20000):
        for m in conv:
            text = m["content"]
            assert w.new_tool not in text.split()
            seen_words.update(text.split())
    assert not (seen_words & new_words)
    assert not (seen_words & set(w.heldout_words))


def test_tooluse_items_are_states_of_pretraining_tool_episodes_never_about_costs_with_the_experts_next_action():
    """The base skill the new tool must not take away: any other tool is used as pretraining taught it."""
    from simulators.tinyworld.text import undigits

    rng = random.Random(6)
    kinds = set()
    for _ in range(300):
        item = base_item("tooluse", rng)
        assert W.NEW_TOOL_ATTRIBUTE not in item.asked.split()  # costs are what the new skill changes
        demo = item.prompt[0]["role"] == "system"
        said = [m["content"] for m in item.prompt if m["role"] == "tool"]
        kind = "help" if item.answer == "call help" else item.answer.split()[0]
        kinds.add((demo, kind))
        if kind == "help":
            assert [m["role"] for m in item.prompt] == ["user"]
        elif kind == "call":  # the tool the example or the help reply named
            tool = item.answer.split()[1]
            assert (f"call {tool} " in item.prompt[0]["content"]) if demo else (said[0] == f"tools : {tool}")
            assert item.answer.split()[2] in item.asked.split()
        else:  # the sum of the two values the episode looked up
            assert kind == "answer" and undigits(item.answer.split()[1:]) == sum(undigits(v.split()) for v in said[-2:])
    assert kinds == {(False, "help"), (False, "call"), (False, "answer"), (True, "call"), (True, "answer")}


def test_world_is_the_same_every_time():
    W.world.cache_clear()
    a = W.world()
    W.world.cache_clear()
    assert W.world() == a
    assert len(a.new_facts) >= 50 and len({f.ent for f in a.new_facts}) == len(a.new_facts)


def test_tools_env_rewards_the_direct_solution_within_the_eval_budget():
    rng = random.Random(6)
    task = new_item("tools", "student", rng).task
    env = ToolsEnv(task)
    assert env.reset() == task.question
    (a, va), (b, vb) = task.values
    r1 = env.step(f"call {task.tool} {a}")
    assert not r1.done and r1.observation == " ".join(str(va))
    r2 = env.step(f"call   {task.tool} {b} ")
    assert r2.observation == " ".join(str(vb))
    r3 = env.step("answer " + " ".join(str(va + vb)))
    assert r3.done and r3.reward == 1.0


def test_tools_env_errors_say_what_was_wrong_and_the_budget_ends_the_episode():
    task = new_item("tools", "student", random.Random(7)).task
    env = ToolsEnv(task, max_turns=3)
    env.reset()
    assert "unknown tool" in env.step("call nosuch x").observation
    assert env.step("call help").observation == f"tools : {task.tool}"
    last = env.step(f"call {task.tool} {task.values[0][0]}")
    assert last.done and last.reward == 0.0  # three turns used, no answer


def test_wrong_answer_gets_no_reward_and_expert_solutions_succeed():
    rng = random.Random(8)
    task = new_item("tools", "student", rng).task
    env = ToolsEnv(task)
    env.reset()
    assert env.step("answer 1").reward == 0.0
    for help_first in (False, True):
        transcript = solve(task, ask_help=help_first)
        env = ToolsEnv(task, max_turns=4)
        env.reset()
        results = [env.step(m["content"]) for m in transcript if m["role"] == "assistant"]
        assert results[-1].done and results[-1].reward == 1.0


@pytest.mark.parametrize("skill", NEW_SKILLS)
def test_student_and_teacher_views_of_a_pair_are_the_same_task(skill):
    from simulators.tinyworld.skills import new_pair

    rng = random.Random(9)
    for _ in range(20):
        student, teacher = new_pair(skill, rng)
        assert student.prompt[-1] == teacher.prompt[-1]
        assert student.answer == teacher.answer and student.task == teacher.task
        assert teacher.prompt[0]["role"] == "system" and student.prompt[0]["role"] == "user"
