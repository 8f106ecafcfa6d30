"""Many lessons in a row (``simulators/chatworld/sequence.py``, ``bench/sequence.py``): the stages' plan, the rules
that must hold together, the loop's mix of new, earlier and replayed lessons, what the gate would say, the summary's
arithmetic, and bad input to ``reverie bench sequence``.  The sequence on the real model is in
``tests/test_model_pull.py``."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.sequence import KEPT, batches, gate, summarise
from learner.distill import Lesson
from simulators.chatworld.plugin import passes
from simulators.chatworld.rules import parse_rules, rule_correction
from simulators.chatworld.sequence import MAX_STAGES, STAGE_RULES, heldout, in_force, plan


@pytest.fixture(scope="module")
def stages():
    return plan(MAX_STAGES)


def test_the_plan_alternates_disjoint_blocks_of_facts_with_one_new_rule_each_taught_on_prompts_no_other_stage_asks(
        stages):
    assert [s.family for s in stages] == ["facts", "rule"] * (MAX_STAGES // 2)
    facts = [t.ask for s in stages for t in s.facts]
    assert len(facts) == len(set(facts)) == 8 * MAX_STAGES // 2
    kinds = [parse_rules(s.rule)[0]["kind"] for s in stages if s.family == "rule"]
    assert kinds == list(STAGE_RULES)
    asked = [p for s in stages for p in (*s.asks, *s.prompts)]
    assert len(asked) == len(set(asked))
    assert [s.name for s in plan(3)] == [s.name for s in stages[:3]]  # a shorter plan is a longer one's start
    with pytest.raises(ValueError, match="1 to 10 stages"):
        plan(MAX_STAGES + 1)


def test_every_rule_in_force_survives_the_correction_that_keeps_them_all(stages):
    """A rule stage's user corrects a reply to keep every rule stated so far: each stage's corrections pass every
    rule in force, on replies that break them all (commas, capitals, no name, many words)."""
    replies = ["Well, Paris is the capital of France, and it has many museums, parks, cafes and old streets to see "
               "on a long walk.", "1. First, Boil Water.\n2. Add Pasta, Salt.", "OK"]
    for i, stage in enumerate(stages):
        rules = in_force(stages[: i + 1])
        for reply in replies:
            fixed = rule_correction("\n".join(rules), reply) if rules else reply
            for rule in rules:
                assert passes(parse_rules(rule)[0], fixed), (stage.name, rule, fixed)


def test_rule_stages_are_judged_on_the_same_heldout_prompts_each_by_its_own_check_and_facts_on_unseen_phrasings(
        stages):
    rules = [heldout(s) for s in stages if s.family == "rule"]
    assert len({tuple(p[0]["content"] for p, _ in h) for h in rules}) == 1
    assert [h[0][1]["kind"] for h in rules] == list(STAGE_RULES)
    first = stages[0]
    asks = heldout(first)
    assert [p[0]["content"] for p, _ in asks] == [q for t in first.facts for q in t.unseen]
    assert all(spec["kind"] == "contains" for _, spec in asks)


def _lessons(tag: str, n: int) -> list[Lesson]:
    return [Lesson(({"role": "user", "content": f"{tag}{i}"},), ({"role": "user", "content": f"{tag}{i}"},))
            for i in range(n)]


@pytest.mark.parametrize("n_new,n_old,relearn,share", [(10, 30, 0.5, 0.5), (30, 10, 0.5, 0.25), (10, 0, 0.5, 0.0),
                                                       (10, 30, 0.0, 0.0)])
def test_a_stages_batches_mix_earlier_lessons_as_the_loop_does_and_replay_takes_its_share(n_new, n_old, relearn,
                                                                                          share):
    new, old = _lessons("new", n_new), _lessons("old", n_old)
    replay = _lessons("replay", 1)[0]
    stream = batches(new, old, lambda rng: replay, 8, 0.5, relearn, seed=3)
    counts = Counter()
    for _ in range(500):
        batch = next(stream)
        assert len(batch) == 8 and batch[4:] == [replay] * 4  # half of each batch replay
        counts.update(l.student[0]["content"].rstrip("0123456789") for l in batch[:4])
    assert counts["old"] / 2000 == pytest.approx(share, abs=0.03)
    again = [batches(new, old, lambda rng: replay, 8, 0.5, relearn, seed=3) for _ in range(2)]
    assert [next(again[0]) for _ in range(3)] == [next(again[1]) for _ in range(3)]  # the same stage, the same batches


def test_the_gate_would_refuse_a_stage_that_gains_too_little_forgets_benchmarks_or_an_earlier_stage():
    base = {"retention_avg": 0.50}
    before = {"accuracy": {"a": 1.0, "b": 0.2}, "retention_avg": 0.49, "taught": ["a"]}
    good = {"accuracy": {"a": 0.95, "b": 0.8}, "retention_avg": 0.495}
    g = gate("b", before, good, base)
    assert g["passes"] and g["gain"] == pytest.approx(0.75) and g["retention_loss"] == pytest.approx(0.005)
    bad = {"accuracy": {"a": 0.85, "b": 0.3}, "retention_avg": 0.48}
    g = gate("b", before, bad, base)
    assert not g["passes"] and len(g["reasons"]) == 3
    assert g["gain"] == pytest.approx(0.125) and g["retention_loss"] == pytest.approx(0.02)
    assert g["family_loss"] == pytest.approx(0.15)


def test_the_gate_compares_a_loss_at_its_bound_as_the_loops_gate_does_not_to_the_last_bit():
    """0.4425 - 0.4325 is 0.010000000000000009 in floating point: the loop's gate (``actors.gate.exceeds``) passes
    a loss at its bound, and so must what the sequence says it would do."""
    base = {"retention_avg": 0.4425}
    before = {"accuracy": {"a": 0.0}, "retention_avg": 0.4425, "taught": []}
    after = {"accuracy": {"a": 0.9}, "retention_avg": 0.4325}
    assert gate("a", before, after, base)["passes"]


def test_the_summary_judges_each_stage_again_from_its_figures_against_the_stage_before():
    from bench.sequence import verdicts

    base = {"accuracy": {"a": 0.0, "b": 0.0}, "retention_avg": 0.4425}
    rs = [{"stage": "a", "accuracy_before": 0.0, "gate": {"passes": False},  # as a file written before the fix says
           "after": {"accuracy": {"a": 0.9, "b": 0.0}, "retention_avg": 0.4325}},
          {"stage": "b", "accuracy_before": 0.0, "gate": {"passes": True},
           "after": {"accuracy": {"a": 0.7, "b": 0.9}, "retention_avg": 0.4325}}]
    got = verdicts(rs, base)
    assert [v["passes"] for v in got] == [True, False]
    assert got[1]["reasons"] == ["an earlier stage lost 0.200 > 0.1"]


def test_the_summary_gives_each_stage_the_share_of_its_accuracy_kept_after_the_last_and_judges_the_targets(stages):
    names = [s.name for s in stages[:3]]

    def report(i, acc, taught, drop):
        return {"stage": names[i], "index": i + 1, "accuracy": acc, "taught": dict(zip(names, taught)),
                "retention_drop": drop, "retention_kl": 0.1, "gate": {"passes": True}, "seconds": 10.0}

    rs = [report(0, 1.0, [1.0], 0.0), report(1, 0.5, [0.9, 0.5], 0.01), report(2, 0.0, [0.75, 0.45, 0.0], 0.015)]
    base = {"accuracy": dict.fromkeys(names, 0.0), "retention_avg": 0.5}
    m = summarise(stages[:3], {"opsd": rs}, base)["methods"]["opsd"]
    assert m["kept"] == {names[0]: 0.75, names[1]: pytest.approx(0.9), names[2]: None}
    assert m["min_kept"] == 0.75 < KEPT and not m["kept_met"]  # and a stage never learnt cannot meet it
    assert m["drop_met"] and m["final_drop"] == 0.015 and m["seconds"] == 30.0


def test_the_benchmarks_page_quotes_the_sequences_summary_file(stages, tmp_path):
    from bench.report import SMOLLM2_SEQUENCE, section_sequence
    from reverie.results import write_result

    names = [s.name for s in stages[:2]]
    rs = [{"stage": names[0], "index": 1, "accuracy": 0.875, "taught": {names[0]: 0.875}, "retention_drop": 0.0125,
           "retention_kl": 0.25, "gate": {"passes": True}, "seconds": 10.0},
          {"stage": names[1], "index": 2, "accuracy": 0.9, "taught": {names[0]: 0.625, names[1]: 0.9},
           "retention_drop": 0.0275, "retention_kl": 0.5, "gate": {"passes": False}, "seconds": 20.0}]
    base = {"accuracy": {names[0]: 0.125, names[1]: 0.0}, "retention_avg": 0.5}
    assert section_sequence(tmp_path) is None  # not measured yet
    write_result(summarise(stages[:2], {"sft": rs}, base), tmp_path / SMOLLM2_SEQUENCE / "summary.json")
    page = "\n".join(section_sequence(tmp_path))
    assert f"| {names[0]} | 0.125 | 0.875 | 0.625 | 0.714 |" in page  # 0.625 of 0.875 kept
    assert f"| {names[1]} | 0.028 | 0.500 | no |" in page  # the drop, KL and the gate after stage 2
    assert "| sft | 0.714 | no | 0.028 | no | 30 |" in page


@pytest.mark.parametrize("argv,message", [
    (["--stages", "11"], "--stages must be"),
    (["--stages", "0"], "--stages must be"),
    (["--methods", "opsd,grpo"], "unknown method 'grpo'"),
    (["--lr", "2"], "--lr must be"),
    (["--relearn", "1.5"], "--relearn"),
    (["--drift-prompts", "17"], "--drift-prompts must be"),
    (["--heldout", "0"], "--heldout must be"),
    (["--benchmarks", "arc_easy,trivia"], "trivia"),
])
def test_bad_sequence_options_are_one_line_and_exit_2(refused, tmp_path, argv, message):
    out = tmp_path / "seq"
    refused(["bench", "sequence", "--out", str(out), *argv], message)
    assert not out.exists()


def test_a_model_that_is_not_one_is_refused_in_one_line_before_anything_is_written(refused, tmp_path):
    out = tmp_path / "seq"
    refused(["bench", "sequence", "--model", str(tmp_path / "nothing-here"), "--out", str(out)], "nothing-here")
    assert not out.exists()


def test_the_tiny_worlds_model_is_refused_in_one_line_the_sequence_is_the_chat_worlds(refused, tmp_path,
                                                                                       shipped_model):
    out = tmp_path / "seq"
    refused(["bench", "sequence", "--model", str(shipped_model), "--out", str(out)], "the chat world's")
    assert not out.exists()
