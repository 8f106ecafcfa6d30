"""Feedback in the experience store becomes lessons: a rule or a correction is
the teacher's privileged context for the conversation it was about; feedback
that teaches nothing is skipped and counted; the teacher state's own answers
serve as SFT targets for rule-only feedback; the learner steps on them."""
from __future__ import annotations

import copy

import msgpack
import pytest
import torch

from actors.store import ExperienceStoreCore
from learner.experience import lessons_from_store, with_teacher_answers
from learner.loop import LearnConfig, Learner, frozen_teacher
from learner.templates import render
from learner.tokenizer import ChatEncoder
from simulators.tinyworld import world as W
from simulators.tinyworld.evaluate import eval_items

RULE = W.rule_text(*W.NEW_RULE)


def _store(data_dir, interactions, feedback):
    core = ExperienceStoreCore(str(data_dir), wal_dir=str(data_dir / "wal"))
    core.append("interactions", [msgpack.packb(r) for r in interactions])
    core.append("feedback", [msgpack.packb(r) for r in feedback])
    core.close()


def _chat(rid, content):
    return {"id": rid, "kind": "chat", "version": 0, "messages": [{"role": "user", "content": content}],
            "completion": "whatever the model said"}


def test_rules_and_corrections_become_lessons_and_feedback_that_teaches_nothing_is_skipped(tmp_path):
    interactions = [_chat("r1", "copy : mo pi"), _chat("r2", "reverse : a b"), _chat("r3", "sort : c a"),
                    {"id": "c1", "kind": "completion", "version": 0, "prompt": "raw text"}]
    feedback = [
        {"id": "f1", "response_id": "r1", "created": 1.0, "rule": RULE},
        {"id": "f2", "response_id": "r2", "created": 2.0, "correction": "b a", "rating": -1.0},
        {"id": "f3", "response_id": "r3", "created": 3.0, "rule": "be brief", "correction": "a c"},
        {"id": "f4", "response_id": "r3", "created": 4.0, "rating": 1.0, "approved": True},
        {"id": "f5", "response_id": "nope", "created": 5.0, "rule": RULE},
        {"id": "f6", "response_id": "c1", "created": 6.0, "correction": "x"},
    ]
    _store(tmp_path, interactions, feedback)
    got = lessons_from_store(str(tmp_path))
    assert dict(got.skipped) == {"no rule or correction": 1, "unknown response": 1, "not a chat": 1}
    first, second, third = got.lessons
    user = {"role": "user", "content": "copy : mo pi"}
    assert first.student == (user,)
    assert first.teacher == ({"role": "system", "content": render("rule", RULE)}, user)
    assert first.reference is None
    assert second.teacher[0]["content"] == render("correction", "b a") and second.reference == "b a"
    assert third.teacher[0]["content"] == render("rule", "be brief") + "\n" + render("correction", "a c")
    assert third.student == ({"role": "user", "content": "sort : c a"},)


def test_a_rule_is_demonstrated_to_the_teacher_by_the_corrected_exchanges_of_other_feedback_stating_it(tmp_path):
    rule = "Always start your answer with 'Short answer:'"
    asks = ["Name a fruit.", "Name a colour.", "Name a river.", "Name a city."]
    interactions = [_chat(f"r{i}", a) for i, a in enumerate(asks)] + [_chat("r9", "Name a tree.")]
    feedback = [{"id": f"f{i}", "response_id": f"r{i}", "created": float(i), "rule": rule,
                 "correction": f"Short answer: {i}."} for i in range(3)]
    feedback += [{"id": "f3", "response_id": "r3", "created": 3.0, "rule": rule},  # stated, not shown
                 {"id": "f4", "response_id": "r9", "created": 4.0, "rule": "be brief", "correction": "Oak."}]
    _store(tmp_path, interactions, feedback)
    lessons = lessons_from_store(str(tmp_path)).lessons

    def shown(i):
        return ({"role": "user", "content": asks[i]}, {"role": "assistant", "content": f"Short answer: {i}."})

    system = {"role": "system", "content": render("rule", rule)}
    # each lesson is shown the two oldest other corrected exchanges of its rule, never its own
    assert lessons[0].context[1:] == (*shown(1), *shown(2))
    assert lessons[1].context[1:] == (*shown(0), *shown(2))
    assert lessons[3].teacher == (system, *shown(0), *shown(1), {"role": "user", "content": asks[3]})
    assert lessons[4].context == ({"role": "system", "content": render("rule", "be brief") + "\n"
                                   + render("correction", "Oak.")},)  # nothing else states that rule
    # a variation of the ask keeps the whole context in front of the new prompt
    other = ({"role": "user", "content": "Name a mountain."},)
    assert lessons[3].asking(other) == type(lessons[3])(other, (system, *shown(0), *shown(1), *other), None)
    assert lessons_from_store(str(tmp_path)).lessons[3].student == ({"role": "user", "content": asks[3]},)


def test_teacher_generated_answers_follow_the_rule_the_user_gave(base, tokenizer, tmp_path):
    items = eval_items("rule", "student", 5)
    _store(tmp_path, [{"id": f"r{i}", "kind": "chat", "version": 0, "messages": list(it.prompt)}
                      for i, it in enumerate(items)],
           [{"id": f"f{i}", "response_id": f"r{i}", "created": float(i), "rule": RULE} for i in range(len(items))])
    lessons = with_teacher_answers(base, ChatEncoder(tokenizer), lessons_from_store(str(tmp_path)).lessons)
    # The base model follows the rule whenever it is in context (teacher accuracy 1.0 on `rule`) and never
    # without it (student 0.0): the SFT targets are the rule-following answers.
    assert [l.reference for l in lessons] == [it.answer for it in items]


@pytest.mark.parametrize("method", ["opsd", "sft"])
def test_the_learner_steps_on_feedback_lessons(method, base, tokenizer, tmp_path):
    items = eval_items("rule", "student", 4)
    _store(tmp_path, [{"id": f"r{i}", "kind": "chat", "version": 0, "messages": list(it.prompt)}
                      for i, it in enumerate(items)],
           [{"id": f"f{i}", "response_id": f"r{i}", "created": float(i), "rule": RULE,
             "correction": it.answer} for i, it in enumerate(items)])
    batch = lessons_from_store(str(tmp_path)).lessons
    student = copy.deepcopy(base)
    before = [p.detach().clone() for p in student.parameters()]
    learner = Learner(student, ChatEncoder(tokenizer), LearnConfig(method=method, lr=1e-3, seed=0),
                      teacher=frozen_teacher(student, tokenizer) if method == "opsd" else None)
    stats = learner.step(batch)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_a_world_that_shows_corrections_gets_a_corrections_own_exchange_in_front_of_the_ask_and_its_variations():
    """Told a fact's correction in the system message, SmolLM2-135M-Instruct's teacher state answers 0.675 of
    the chat world's facts right in other words; shown the corrected exchange too, 0.81 (bench/results/
    chatworld/2026-12-07-teacher-state.json, ``facts.teacher_shown``).  A world that says so (``show_corrections``) gets a correction without a
    rule shown as its own exchange; a rule's lessons keep their demonstrations, and other worlds are only told."""
    from learner.experience import feedback_lessons

    ask = {"role": "user", "content": "Who founded Veltrana?"}
    interactions = [{"id": "r1", "messages": [ask]}, _chat("r2", "Name a tree.")]
    feedback = [{"id": "f1", "response_id": "r1", "created": 1.0, "correction": "Veltrana was founded by Ilse Marrow."},
                {"id": "f2", "response_id": "r2", "created": 2.0, "rule": "be brief", "correction": "Oak."}]
    told = feedback_lessons(interactions, feedback).lessons
    fact, rule = feedback_lessons(interactions, feedback, show_corrections=True).lessons
    system = {"role": "system", "content": render("correction", "Veltrana was founded by Ilse Marrow.")}
    answer = {"role": "assistant", "content": "Veltrana was founded by Ilse Marrow."}
    assert told[0].teacher == (system, ask)
    assert fact.student == (ask,) and fact.teacher == (system, ask, answer, ask)
    assert fact.reference == answer["content"]
    other = ({"role": "user", "content": "Who started Veltrana?"},)
    assert fact.asking(other).teacher == (system, ask, answer, *other)
    assert rule.teacher == told[1].teacher  # a rule's lesson is shown by other feedback stating it, never itself
