"""The chat world's ``calc`` family (``simulators/chatworld/calc.py``): problems from two streams that never share
a question, a calculator that computes exactly and reads nothing but arithmetic, the text protocol a client
parses, and the verifier that accepts a solved episode and refuses a guess, a wrong answer, a forged result and
an episode that goes on after its answer."""
from __future__ import annotations

import re
from fractions import Fraction

import pytest

from simulators.chatworld.calc import (EXAMPLES, PROTOCOL, CalcEnvironment, CalcError, action, answered, calculate,
                                       observe, opening, parse,
                                       problems, question_of, solve, to_task, verify)


def test_train_and_heldout_problems_are_deterministic_distinct_and_never_share_a_question():
    train, heldout = problems("train", 0, 500), problems("heldout", 0, 500)
    assert problems("train", 0, 500) == train and problems("heldout", 1, 5) != heldout[:5]
    assert len({p.question for p in train}) == 500 and not {p.question for p in train} & {p.question for p in heldout}
    for p in train + heldout:
        assert calculate(p.expression) == p.answer > 0  # whole, positive, what the expression gives
        assert max(int(w) for w in p.expression.split() if w.isdigit()) >= 1000 or "*" in p.expression
    with pytest.raises(ValueError, match="unknown split 'test'"):
        problems("test", 0, 1)


def test_the_calculator_is_exact_and_reads_only_arithmetic():
    assert calculate("6,178 - 3,045 + 659") == 3792
    assert calculate("17808 / 42") == 424 and calculate("7 / 2") == Fraction(7, 2)
    assert calculate("(12 + 30) × 2 =") == 84 and calculate("-3 * -4") == 12 and calculate("0.1 + 0.2") == Fraction(3, 10)
    for bad, says in [("__import__('os').system('true')", "cannot read"), ("2 ** 100", "cannot read"),
                      ("abs(3)", "cannot read"), ("x + 1", "cannot read"), ("1 / (2 - 2)", "division by zero"),
                      ("", "write an expression"), ("1 +", "cannot read")]:
        with pytest.raises(CalcError, match=says):
            calculate(bad)


def test_the_client_reads_the_first_action_whatever_words_surround_it():
    assert action("Let me compute.\nCALC: 12 * 7\nthen ANSWER: 84") == ("calc", "12 * 7")
    assert action("answer: 4,250 boxes") == ("answer", "4,250 boxes") and answered("4,250 boxes") == 4250
    assert action("The total is 84.") is None
    assert observe("CALC: 12 * 7") == ("RESULT: 84", ("calc", "12 * 7"))
    assert observe("calc: 7 / 2")[0] == "RESULT: 3.5" and observe("CALC: 1/0")[0] == "ERROR: division by zero"
    assert observe("I think 84")[0].startswith("ERROR: reply with CALC:")
    assert observe("ANSWER: 84") == (None, ("answer", "84"))


def test_an_episode_that_calculates_then_answers_right_is_rewarded_and_verified():
    p = problems("heldout", 0, 1)[0]
    env = CalcEnvironment()
    opening = env.reset(to_task(p))
    assert [m["role"] for m in opening] == ["system", *["user", "assistant"] * 4, "user"] and "CALC:" in opening[0]["content"]
    assert question_of(opening) == p.question and opening[-1]["content"] == p.question  # after the worked examples
    step = env.step(f"Sure. CALC: {p.expression}")
    assert (step.observation, step.reward, step.done) == (f"RESULT: {p.answer}", 0.0, False)
    step = env.step(f"ANSWER: {p.answer}")
    assert (step.observation, step.reward, step.done) == (None, 1.0, True)
    assert env.verify(to_task(p), env.transcript) and verify(to_task(p), solve(p))


@pytest.mark.parametrize("case", ["guess", "wrong", "forged", "lied", "after", "other question", "other examples",
                                  "too long", "error only"])
def test_the_verifier_refuses_a_guess_a_wrong_answer_a_forged_or_false_result_and_anything_after_the_answer(case):
    """``lied``: a result the calculator would not have given (a simulator's), though the answer is right."""
    p = problems("heldout", 0, 2)[0]
    task, right = to_task(p), solve(p)
    opening, n = right[:-3], len(right) - 3
    episodes = {
        "guess": [*opening, {"role": "assistant", "content": f"ANSWER: {p.answer}"}],
        "wrong": [*right[:-1], {"role": "assistant", "content": f"ANSWER: {p.answer + 1}"}],
        "forged": [*opening, {"role": "assistant", "content": f"CALC: {p.expression} RESULT: {p.answer}"},
                   {"role": "assistant", "content": f"ANSWER: {p.answer}"}],
        "lied": [*opening, right[n], {"role": "user", "content": f"RESULT: {p.answer + 7}"}, right[-1]],
        "after": [*right, {"role": "user", "content": "thanks"}],
        "other question": [*right[:n - 1], {"role": "user", "content": problems("heldout", 0, 2)[1].question},
                           *right[n:]],
        "other examples": [right[0], *right[5:]],
        "too long": [*opening, *[{"role": "assistant", "content": "CALC: 1 + 1"}, {"role": "user", "content": "RESULT: 2"}] * 4,
                     right[-1]],
        "error only": [*opening, {"role": "assistant", "content": "CALC: one plus one"},
                       {"role": "user", "content": "ERROR: cannot read"}, right[-1]],
    }
    assert not verify(task, episodes[case])


def test_an_answer_without_the_calculator_ends_the_episode_unrewarded_and_so_does_running_out_of_turns():
    p = problems("train", 3, 1)[0]
    env = CalcEnvironment(max_turns=2)
    env.reset(to_task(p))
    assert env.step(f"ANSWER: {p.answer}").reward == 0.0  # right, but a guess
    env.reset(to_task(p))
    assert not env.step("hmm").done
    last = env.step(f"CALC: {p.expression}")
    assert last.done and last.reward == 0.0 and last.observation is None
    with pytest.raises(ValueError, match="max_turns"):
        CalcEnvironment(max_turns=0)


def test_the_environment_is_found_by_name_in_the_registry():
    from simulators.env import factory

    env = factory("chatworld-calc")(max_turns=3)
    assert isinstance(env, CalcEnvironment) and env.max_turns == 3 and not env.simulated


def test_reverie_evals_calc_family_plays_episodes_in_lock_step_and_counts_what_the_verifier_accepts():
    """``reverie eval --suite calc`` plays each held-out problem as an episode, a turn of every open episode per
    call of the policy: an expert that calculates then answers solves all; a right guess solves none; a policy
    that never acts runs every episode out of turns."""
    from evals.chat import calc_problems, score_plain
    from simulators.chatworld.calc import play as play_calc

    probs = calc_problems(12)
    by_question = {p.question: p for p in probs}

    def expert(chats):
        out = []
        for chat in chats:
            p = by_question[question_of(chat)]
            out.append(f"ANSWER: {p.answer}" if chat[-1]["content"].startswith("RESULT:") else f"CALC: {p.expression}")
        return out

    calls = []

    def chatter(chats):
        calls.append(len(chats))
        return ["Let me think about it."] * len(chats)

    solved = play_calc(probs, expert)
    assert (solved["solved"], solved["called_tool"], solved["acted"]) == (1.0, 1.0, 1.0)
    assert [m["role"] for m in solved["episodes"][0][-4:]] == ["user", "assistant", "user", "assistant"]
    guessed = play_calc(probs, lambda chats: [f"ANSWER: {by_question[question_of(c)].answer}" for c in chats])
    assert (guessed["solved"], guessed["called_tool"]) == (0.0, 0.0)
    assert play_calc(probs, chatter)["acted"] == 0.0 and calls == [12, 12, 12, 12]
    replies = [f"The answer is {p.answer}." for p in probs[:6]] + [f"{p.answer} or {p.answer + 1}" for p in probs[6:]]
    assert score_plain(probs, replies) == 0.5


def test_the_dream_source_proposes_only_train_problems_with_their_true_answers_and_reads_a_users_ask():
    """``CalcTaskSource``: seeds and variations come from the train stream (a variation keeps its template), every
    task's answer is the calculator's; a recorded ask is a task when it is one of the family's problems."""
    import random

    from simulators.chatworld.calc import TEMPLATES, CalcTaskSource, parse

    src, rng = CalcTaskSource(), random.Random(0)
    heldout = {p.question for p in problems("heldout", 0, 200)}
    seeds = [src.seed(rng) for _ in range(200)]
    for task in seeds:
        p = parse(task.prompt)
        assert task.prompt not in heldout and p is not None and task.spec["answer"] == p.answer == calculate(p.expression)
        varied = src.vary(task, rng)
        assert varied.spec["template"] == task.spec["template"] and varied.prompt != task.prompt
        assert int(re.search(r"\d+", varied.prompt)[0]) % 2 == 0  # the train stream's parity
    assert {t.spec["template"] for t in seeds} == set(range(len(TEMPLATES)))
    asked = src.parse("A factory makes  1,234 bolts every day. How many bolts does it make in 12 days?", rng)
    assert asked.spec["answer"] == 14808 and asked.env == "chatworld-calc" and asked.family == "calc"
    assert src.parse("What is the capital of France?", rng) is None
    assert src.parse("7 dollars are shared equally among 2 people. How many dollars does each person get?", rng) is None


def test_the_familys_own_verifier_judges_a_transcript_from_its_question_alone():
    """``verify_family`` (what judges a simulated episode): the true answer comes from the question it opens with."""
    from simulators.chatworld.calc import verify_family
    from simulators.env import family_verifier

    p = problems("heldout", 0, 3)[2]
    right = solve(p)
    assert family_verifier("calc") is verify_family and verify_family(right)
    assert not verify_family([*right[:-1], {"role": "assistant", "content": f"ANSWER: {p.answer - 1}"}])
    assert not verify_family([*right[:-4], {"role": "user", "content": "What is 2 + 2?"}, *right[-3:]])
    assert not verify_family([])


def test_the_dream_family_measures_held_out_success_through_any_policy_and_the_proposer_never_asks_them():
    from simulators.chatworld.calc import CalcFamily, play
    from simulators.proposer import TaskProposer

    family = CalcFamily()
    by_question = {p.question: p for p in problems("heldout", 0, 20)}

    def expert(chats):
        return [f"ANSWER: {by_question[question_of(c)].answer}" if c[-1]["content"].startswith("RESULT:")
                else f"CALC: {by_question[question_of(c)].expression}" for c in chats]

    assert family.success(20, expert) == 1.0 and family.success(20, lambda chats: ["ANSWER: 1"] * len(chats)) == 0.0
    assert [t.prompt for t in family.heldout_tasks(20)] == family.heldout_prompts(20) == list(by_question)
    assert play(list(by_question.values())[:2], lambda chats: [None] * len(chats))["acted"] == 0.0  # outgrown
    proposer = TaskProposer(family.source, (2, 4), seed=0, exclude=family.heldout_prompts(200))
    proposed = [p.task.prompt for p in proposer.propose(300)]
    assert len(set(proposed)) == 300 and not set(proposed) & set(family.heldout_prompts(200))


def test_a_recorded_calc_episode_asks_its_question_not_the_worked_examples():
    """What the loop and ``reverie dream`` read as a recorded conversation's ask (``simulators.world.ask_of``): the
    first user message a family reads as a task, past the examples the opening shows; else the first."""
    from simulators.chatworld.calc import CalcFamily
    from simulators.tinyworld.plugin import TinyWorld
    from simulators.world import ask_of

    p = problems("train", 0, 1)[0]
    assert ask_of(solve(p), [CalcFamily(), *TinyWorld().dream_families.values()]) == p.question
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye."}]
    assert ask_of(chat, [CalcFamily()]) == "Hello?" and ask_of(solve(p)) == solve(p)[1]["content"]
    assert ask_of([], [CalcFamily()]) is None


@pytest.mark.parametrize("argv,message", [
    (["--items", "0"], "--items must be a whole number from 1 to 1000"),
    (["--samples", "17"], "--samples must be a whole number from 0 to 16"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_bench_calc_offer_refuses_bad_options_in_one_line_before_anything_is_written(refused, tmp_path, argv, message):
    out = tmp_path / "offer"
    refused(["bench", "calc-offer", "--out", str(out), *argv], message)
    assert not out.exists()


def test_bench_calc_offer_refuses_the_tiny_worlds_model_and_shows_each_variant_the_same_question(refused, tmp_path,
                                                                                                 shipped_model):
    """The variants differ only in what precedes the question; the last is the environment's own opening."""
    from bench.calc_offer import variants

    refused(["bench", "calc-offer", "--model", str(shipped_model), "--out", str(tmp_path / "o")], "tiny world")
    shown = variants()
    assert all(v[0]["role"] == "system" and "CALC:" in v[0]["content"] for v in shown.values())
    assert shown["2 examples as turns"] == opening("")[:-1] and len(shown["1 example as turns"]) == 5
    assert "Example." in shown["protocol+example in system"][0]["content"]


def test_a_dream_lessons_teacher_sees_the_same_tasks_verified_success_or_another_tasks():
    """``simulators.success.lessons``: with ``context="same"`` the teacher's privileged context is the verified
    success of the state's own task (the right expression is in it, the student never sees it); with ``other`` a
    success of another task; an unknown context is refused."""
    import random

    from simulators.success import episode, lessons, render_trajectory

    kept = [{"task_id": f"t{i}", "success": True, "messages": solve(p), "opening": len(opening(p.question))}
            for i, p in enumerate(problems("train", 0, 6))]
    by_task = {r["task_id"]: render_trajectory(episode(r)) for r in kept}
    own = {render_trajectory(episode(r)): r for r in kept}
    for context, same in (("same", True), ("other", False)):
        for lesson in [next(lessons(kept, random.Random(s), context=context)) for s in range(20)]:
            state_question = question_of(lesson.student)
            shown = next(t for t in by_task.values() if t in lesson.teacher[0]["content"])
            assert (question_of(own[shown]["messages"]) == state_question) is same
            assert question_of(lesson.teacher[1:]) == state_question  # the same state, under the context
            assert len(lesson.student) >= len(opening(""))  # never a state inside the worked examples
    with pytest.raises(ValueError, match="unknown teacher context 'mine'"):
        next(lessons(kept, random.Random(0), context="mine"))


def test_a_dream_lessons_teacher_context_is_the_episode_from_its_question_on_not_the_opening_again():
    """The kept success shown to the teacher is the agent's episode: its question, actions and results.  The
    environment's opening (protocol and worked examples) is already in the state the teacher scores, and writing
    it again into the context doubled the teacher's tokens on SmolLM2 (584 against 281 of the state)."""
    import random

    from simulators.success import lessons

    kept = [{"task_id": f"t{i}", "success": True, "messages": solve(p), "opening": len(opening(p.question))}
            for i, p in enumerate(problems("train", 0, 3))]
    for lesson in [next(lessons(kept, random.Random(s), context=c)) for s in range(6) for c in ("same", "other")]:
        context = lesson.teacher[0]["content"]
        shown = next(r for r in kept if question_of(r["messages"]) in context)
        assert PROTOCOL not in context and EXAMPLES[0][0] not in context, context
        assert f"CALC: {parse(question_of(shown['messages'])).expression}" in context
        assert lesson.teacher[1:] == lesson.student  # the state itself, opening included, is unchanged
