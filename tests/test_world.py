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


def test_forced_accuracy_of_a_tool_use_state_counts_its_own_reply_only_as_greedy_decoding_does(shipped_model):
    """A ``tooluse`` item is one state and the next action: greedy decoding answers the state as given, so the
    teacher-forced check must not also ask the model to have written the state's earlier moves (measured: a
    dream reported ``tooluse`` 0.875 where greedy decoding of the same items gave 0.95)."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.tokenizer import ChatEncoder, load_tokenizer
    from simulators.tinyworld.evaluate import forced_accuracy
    from simulators.tinyworld.skills import Item
    from simulators.tinyworld.tools_env import make_task, render_demo

    tok = load_tokenizer(shipped_model)
    enc = ChatEncoder(tok)
    model = AutoModelForCausalLM.from_pretrained(shipped_model, dtype=torch.float32).eval()
    # States where the example shows the tool, yet the episode asked for help first: the model, given the
    # example, would have called the tool at once, so the help call is not its own move; the next one is.
    w = W.world()
    rng = random.Random(7)
    odd = []
    for _ in range(12):
        tool = rng.choice(w.item_words)
        template = W.TOOL_TEMPLATES[1].replace("{attr}", "weight")
        demo = solve(make_task(rng, template, tool, w.item_words), ask_help=False)
        conv = [{"role": "system", "content": render_demo(demo)},
                *solve(make_task(rng, template, tool, w.item_words), ask_help=True)]
        odd.append(Item("tooluse", tuple(conv[:-1]), conv[-1]["content"]))

    def greedy(item) -> bool:
        ids = enc.encode(list(item.prompt), add_generation_prompt=True)[0]
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=enc.end_id,
                             pad_token_id=tok.pad_token_id)
        return item.verify(tok.decode(out[0, len(ids):], skip_special_tokens=True))

    for it in odd:
        assert forced_accuracy(model, enc, [it]) == float(greedy(it)), it
    assert sum(map(greedy, odd)) >= 6  # the check is not vacuous
    helped = [Item("tooluse", it.prompt[:3], it.prompt[3]["content"]) for it in odd]  # the help call itself
    assert not any(map(greedy, helped))  # not the model's own move
