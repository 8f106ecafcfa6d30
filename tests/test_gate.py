"""The evaluation gate and the task variations it is judged on, with the real
tiny-world model (torch, greedy), no mocks."""
from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.gate import (EnvTask, Gate, GateInputError, HeldOutTask, RetentionItem, WeightsRejected, check_weights,
                         exceeds, held_out_gain, heldout_tasks, load_retention_suite, matches, refusals,
                         retention_suite, skill_losses, task_from_record, task_record,
                         weight_files)
from learner.templates import render
from reverie.config import GateConfig
from simulators.tinyworld import world as W
from simulators.tinyworld.build import SHIPPED_MODEL
from simulators.tinyworld.plugin import TinyWorld
from simulators.tinyworld.variations import TinyWorldVariations
from simulators.variations import PromptVariations
from simulators.world import NoWorld, load_world

RULE = W.rule_text(*W.NEW_RULE)
FACT = W.world().new_facts[0]
ASKS = {
    "copy": "copy : a b c d",
    "reverse": "reverse : q w e",
    "sort": "sort : z y x w v u",
    "add": "add : 1 2 + 3 4",
    "facts": W.QUESTION_TEMPLATES[0].format(attr=FACT.attr, ent=FACT.ent),
}


def user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


# --------------------------------------------------------------------------- variations


@pytest.mark.parametrize("family", list(ASKS))
def test_a_variation_keeps_the_family_drops_system_messages_and_differs_from_the_ask(family):
    tw = TinyWorldVariations()
    asked = ({"role": "system", "content": "rule : " + RULE}, *user(ASKS[family]))
    assert tw.family(asked) == family
    rng = random.Random(0)
    for _ in range(20):
        varied = tw.vary(asked, rng)
        assert varied is not None and len(varied) == 1 and varied[0]["role"] == "user"
        assert varied[0]["content"] != ASKS[family]
        assert tw.family(varied) == family


def test_a_varied_fact_question_asks_about_the_same_entity_and_attribute_another_way():
    rng = random.Random(1)
    texts = {TinyWorldVariations().vary(user(ASKS["facts"]), rng)[0]["content"] for _ in range(20)}
    assert texts == {t.format(attr=FACT.attr, ent=FACT.ent) for t in W.QUESTION_TEMPLATES[1:]}


def test_a_varied_letters_ask_has_fresh_letters_and_the_same_verb():
    varied = TinyWorldVariations().vary(user("reverse : q w e"), random.Random(2))[0]["content"]
    verb, letters = varied.split(" : ")
    assert verb == "reverse" and 3 <= len(letters.split()) <= 6


def test_an_unknown_ask_has_no_tiny_world_family_and_the_fallback_calls_it_feedback_without_variations():
    ask = user("please write me a poem about the sea")
    assert TinyWorldVariations().family(ask) is None
    assert TinyWorldVariations().vary(ask, random.Random(0)) is None
    assert PromptVariations().family(ask) == "feedback"
    assert PromptVariations().vary(user(ASKS["copy"]), random.Random(0)) is None


def test_the_world_comes_from_the_setting_else_the_model_it_is_never_sniffed_from_files(tmp_path):
    from reverie.config import ServeConfig

    assert isinstance(load_world(ServeConfig(model_dir=SHIPPED_MODEL).world_name()).variations, TinyWorldVariations)
    learnt = tmp_path / "learnt"  # a checkpoint of the tiny model, with the tiny world's build marker in it
    learnt.mkdir()
    shutil.copy(SHIPPED_MODEL / "reverie_build.json", learnt)
    assert ServeConfig(model_dir=learnt).world_name() == "none"  # its files do not choose its world
    assert isinstance(load_world(ServeConfig(model_dir=learnt).world_name()).variations, PromptVariations)
    assert isinstance(load_world(ServeConfig(model_dir=learnt, world="tiny").world_name()), TinyWorld)
    assert ServeConfig(model_dir=SHIPPED_MODEL, world="none").world_name() == "none"
    # a plug-in of the user's, by where it lives
    assert isinstance(load_world("simulators.tinyworld.plugin:TinyWorld"), TinyWorld)


def test_a_world_that_cannot_load_is_one_line_naming_the_worlds():
    from reverie.config import WORLDS
    from simulators.world import WORLDS as LOADED, UnknownWorld

    assert set(LOADED) == set(WORLDS)  # the setting's names are the ones the registry loads
    with pytest.raises(UnknownWorld, match="unknown world 'chatty': worlds are chat, none, tiny, or package.module:Class"):
        load_world("chatty")
    with pytest.raises(UnknownWorld, match="cannot load no.such:World"):
        load_world("no.such:World")


def test_heldout_tasks_are_new_variations_never_lessons_never_repeated():
    context = render("rule", RULE)
    sources = [(user(ASKS["copy"]), context), (user(ASKS["facts"]), "correction : " + FACT.sentence()),
               (user("write a poem"), context)]
    lesson = user(W.QUESTION_TEMPLATES[1].format(attr=FACT.attr, ent=FACT.ent))
    tasks = heldout_tasks(sources, TinyWorldVariations(), 10, random.Random(0), exclude=[lesson])
    by_family = {f: [t for t in tasks if t.family == f] for f in ("copy", "facts")}
    assert len(by_family["copy"]) == 10 and len(tasks) == 11  # one template left for the fact; the poem has no family
    assert by_family["facts"][0].student == user(W.QUESTION_TEMPLATES[2].format(attr=FACT.attr, ent=FACT.ent))
    prompts = [t.student for t in tasks]
    assert len(set(map(json.dumps, prompts))) == len(prompts) and user(ASKS["copy"]) not in prompts
    assert all(t.teacher == ({"role": "system", "content": context}, *t.student) for t in by_family["copy"])
    assert heldout_tasks(sources, PromptVariations(), 10, random.Random(0)) == []


# --------------------------------------------------------------------------- retention suites


def test_the_retention_suite_file_gives_items_from_prompts_and_messages(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text(
        json.dumps({"skill": "greet", "prompt": "say hi", "answer": "hi"}) + "\n\n"
        + json.dumps({"skill": "capital", "messages": [{"role": "system", "content": "be brief"},
                                                        {"role": "user", "content": "capital of france ?"}],
                      "answer": "Paris", "compare": "contains"}) + "\n")
    items = load_retention_suite(path)
    assert items == [RetentionItem("greet", user("say hi"), "hi"),
                     RetentionItem("capital", ({"role": "system", "content": "be brief"}, *user("capital of france ?")),
                                   "Paris", "contains")]
    assert retention_suite(GateConfig(retention_suite=str(path)), TinyWorld()) == items


GOOD = {"skill": "s", "prompt": "p", "answer": "a"}


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    (json.dumps({**GOOD, "answer": 3}), 'line 2: "answer" must be a string'),
    (json.dumps({"prompt": "p", "answer": "a"}), 'line 2: "skill" must be a non-empty string'),
    (json.dumps({"skill": "s", "answer": "a"}), 'line 2: give exactly one of "prompt" or "messages"'),
    (json.dumps({**GOOD, "messages": [{"role": "user", "content": "p"}]}), 'line 2: give exactly one of'),
    (json.dumps({"skill": "s", "messages": [{"role": "robot", "content": "p"}], "answer": "a"}),
     'line 2: "messages"[0]'),
    (json.dumps({**GOOD, "compare": "fuzzy"}), 'line 2: "compare" must be one of'),
    (json.dumps({**GOOD, "anwser": "a"}), 'line 2: unknown field "anwser"'),
])
def test_the_retention_suite_file_refuses_a_bad_line_in_one_line_naming_line_and_field(tmp_path, line, message):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(GateInputError) as err:
        load_retention_suite(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path} line 2: ") and message in text, text


def test_an_empty_or_missing_retention_suite_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GateInputError, match="empty"):
        load_retention_suite(tmp_path / "empty.jsonl")
    with pytest.raises(GateInputError, match="cannot read"):
        load_retention_suite(tmp_path / "missing.jsonl")


def test_a_world_with_no_retention_suite_of_its_own_needs_a_retention_suite_file(tmp_path):
    with pytest.raises(GateInputError, match="the none world has no retention suite of its own: give a retention_suite"):
        retention_suite(GateConfig(), NoWorld())
    suite = retention_suite(GateConfig(retention_items=3), TinyWorld())
    assert {it.skill for it in suite} == {"add", "reverse", "sort", "lookup", "recall", "format", "tooluse", "copy"}
    assert len(suite) == 24


def test_answers_compare_exactly_normalised_or_by_containment():
    assert matches(" a  b ", "a b") and not matches("A b", "a b")
    assert matches("Paris!", "paris", "normalised") and not matches("in Paris", "paris", "normalised")
    assert matches("It is Paris.", "paris", "contains") and not matches("Parisian", "paris", "contains")


def test_a_skill_the_candidate_is_ahead_on_does_not_pay_for_forgetting_another():
    # measured: 60 OPSD steps at lr 3e-4 on the copy rule took copy 0 -> 0.98 (the rule changed its references)
    # and lost 0.02 on reverse and sort and 0.05 on format; a plain difference of means would call that a gain
    losses = skill_losses({"copy": (0.0, 0.98), "reverse": (1.0, 0.98), "format": (0.99, 0.94), "add": (1.0, 1.0)})
    assert losses == pytest.approx({"copy": 0.0, "reverse": 0.02, "format": 0.05, "add": 0.0})


def test_the_held_out_gain_is_the_share_of_the_parents_failures_fixed_so_a_family_already_learnt_does_not_dilute_it():
    """Measured in a demo run (``bench/results/demo-runs/2026-12-03-b-teachers-from-start.json``, v5): the
    parent already solved the copy rule (47 of 48) and most tools tasks (43 of 48), and the candidate fixed 8 of
    the 14 facts it failed.  The mean of the three differences is 0.056, which refused it; counted against what
    the parent failed, the candidate fixed 6 more of the 20 tasks than it broke."""
    new = {"copy": {"parent": 47 / 48, "candidate": 48 / 48, "n": 48},
           "facts": {"parent": 24 / 38, "candidate": 32 / 38, "n": 38},
           "tools": {"parent": 43 / 48, "candidate": 40 / 48, "n": 48}}
    assert held_out_gain(new) == pytest.approx(6 / 20)


def test_a_candidate_that_breaks_more_held_out_tasks_than_it_fixes_has_a_negative_gain():
    # v6 of bench/results/demo-runs/2026-12-03-a-committed.json: copy 44 -> 47 of 48, facts 42 -> 41, tools 40 -> 34
    new = {"copy": {"parent": 44 / 48, "candidate": 47 / 48, "n": 48},
           "facts": {"parent": 42 / 48, "candidate": 41 / 48, "n": 48},
           "tools": {"parent": 40 / 48, "candidate": 34 / 48, "n": 48}}
    assert held_out_gain(new) == pytest.approx(-4 / 18)


def test_with_a_parent_that_fails_nothing_there_is_no_gain_to_show_only_a_loss():
    assert held_out_gain({"copy": {"parent": 1.0, "candidate": 1.0, "n": 48}}) == 0.0
    assert held_out_gain({"copy": {"parent": 1.0, "candidate": 0.5, "n": 48}}) == pytest.approx(-0.5)
    assert held_out_gain({}) == 0.0


def test_from_a_parent_that_fails_everything_the_gain_is_the_candidates_accuracy():
    new = {"copy": {"parent": 0.0, "candidate": 0.75, "n": 48}, "facts": {"parent": 0.0, "candidate": 0.25, "n": 48}}
    assert held_out_gain(new) == pytest.approx(0.5)


def _counts(**families: tuple[int, int, int]) -> dict:
    return {f: {"parent": p / n, "candidate": c / n, "n": n} for f, (p, c, n) in families.items()}


def test_a_family_that_loses_more_than_max_family_loss_is_refused_though_the_others_pay_for_it_in_the_gain():
    """v5 of ``bench/results/demo-runs/2026-12-03-d-committed-new-gain.json``: held-out copy 37 -> 45 and
    facts 23 -> 38 of 48 paid, in the pooled gain (13 of 47), for tools 37 -> 27; the candidate passed and was
    served (tools 0.76 -> 0.70 through the API)."""
    new = _counts(copy=(37, 45, 48), facts=(23, 38, 48), tools=(37, 27, 48))
    assert held_out_gain(new) == pytest.approx(13 / 47)
    reasons = refusals(GateConfig(min_gain=0.1), {"new": new})
    assert reasons == ["held-out tasks lost more than max_family_loss 0.10: tools 0.77 -> 0.56 of 48"]


def test_a_family_that_loses_a_few_tasks_within_max_family_loss_is_not_refused_for_it():
    # v6 of demo-runs/2026-12-03-d-committed-new-gain.json: facts 41 -> 40 of 48 (refused only for its gain, 0.087)
    new = _counts(copy=(47, 48, 48), facts=(41, 40, 48), tools=(33, 35, 48))
    assert refusals(GateConfig(min_gain=0.1), {"new": new}) == ["held-out gain 0.087 is below min_gain 0.100"]
    assert refusals(GateConfig(min_gain=0.05), {"new": new}) == []
    # v5 of bench/results/demo-runs/2026-12-03-f-family-and-learnt-0.05.json: refused under a bound of 0.05 for
    # tools 41 -> 38 of 48 (apart from the family traded away above, candidates of the day's runs lost at most 5
    # of 48 on a family), and its 63 corrections (facts 30 -> 42 of 48) went with it
    new = _counts(copy=(41, 42, 48), facts=(30, 42, 48), tools=(41, 38, 48))
    assert refusals(GateConfig(min_gain=0.1), {"new": new}) == []


def test_a_gain_exactly_at_min_gain_passes_whatever_the_floating_point_sum_says():
    """v7 of ``bench/results/demo-runs/2026-12-03-k-tooluse-lr5e-5.json``: copy 46 -> 44 of 48, facts 15 -> 17 of
    22, tools 47 -> 48 of 48 fix 3 of the parent's 10 failures and break 2: a gain of 0.1, summed to
    0.09999999999999991, and the candidate was refused with "held-out gain 0.100 is below min_gain 0.100"."""
    new = _counts(copy=(46, 44, 48), facts=(15, 17, 22), tools=(47, 48, 48))
    assert held_out_gain(new) == pytest.approx(0.1)
    assert refusals(GateConfig(min_gain=0.1), {"new": new}) == []
    assert refusals(GateConfig(min_gain=0.11), {"new": new}) == ["held-out gain 0.100 is below min_gain 0.110"]


def test_a_gain_of_nothing_is_said_as_zero_not_minus_zero():
    """v7 of ``bench/results/demo-runs/2026-12-03-m-committed-lr5e-5-repeat.json``: facts 22 -> 23 of 28 and tools
    45 -> 44 of 48 sum to -2.2e-16, and the refusal said "held-out gain -0.000"."""
    new = _counts(copy=(47, 47, 48), facts=(22, 23, 28), tools=(45, 44, 48))
    assert refusals(GateConfig(min_gain=0.1), {"new": new}) == ["held-out gain 0.000 is below min_gain 0.100"]


def test_what_earlier_versions_learnt_is_held_per_family_and_a_gain_elsewhere_does_not_pay_for_forgetting_it():
    # v7 of demo-runs/2026-12-03-d-committed-new-gain.json
    new = _counts(copy=(41, 47, 48), facts=(2, 2, 4), tools=(36, 36, 48))
    cfg = GateConfig(min_gain=0.1)
    assert refusals(cfg, {"new": new}) == []  # what the gate saw: it passed, and facts fell 0.93 -> 0.70
    learnt = _counts(facts=(90, 68, 96), copy=(95, 96, 96))
    assert refusals(cfg, {"new": new, "learnt": learnt}) == [
        "what earlier versions learnt lost more than max_family_loss 0.10: facts 0.94 -> 0.71 of 96"]
    assert refusals(cfg, {"new": new, "learnt": _counts(facts=(90, 87, 96))}) == []


def test_a_learnt_task_is_kept_as_json_and_read_back_as_the_same_task():
    from simulators.tinyworld.tasks import ToolsTaskSource

    text = HeldOutTask("facts", user("where is the home of tofu ?"), user("x"), "the home of tofu is loma .")
    env = EnvTask("tools", "tinyworld-tools", ToolsTaskSource().seed(random.Random(0)), 3)
    back = [task_from_record(json.loads(json.dumps(task_record(t)))) for t in (text, env)]
    assert back[0].family == "facts" and back[0].student == text.student and back[0].reference == text.reference
    assert back[1] == env and back[1].task.spec == env.task.spec
    checked = HeldOutTask("rule", user("name a colour"), user("x"), "red", {"kind": "ends_with", "text": "Bye."})
    assert task_from_record(json.loads(json.dumps(task_record(checked)))).check == checked.check


def test_a_retention_loss_exactly_at_the_bound_passes_whatever_the_floating_point_sum_says():
    # measured in the demo: four skills lost 0.01, 0.02, 0.02, 0.02 of seven; the mean, 0.07 / 7, came out as
    # 0.010000000000000009 and the candidate was refused against a bound of 0.01
    scores = {"add": (1.0, 1.0), "copy": (0.01, 0.99), "format": (0.99, 0.98), "lookup": (1.0, 0.98),
              "recall": (1.0, 0.98), "reverse": (1.0, 1.0), "sort": (1.0, 0.98)}
    loss = sum(skill_losses(scores).values()) / len(scores)
    assert loss > 0.01  # the float sum is over the bound...
    assert not exceeds(loss, 0.01)  # ...the loss is not
    assert exceeds(0.0101, 0.01)


def test_since_the_base_a_skill_whose_every_reference_a_rule_rewrote_is_not_counted_as_kept():
    """Measured in demo run u (``demo-runs/2026-12-03-u-replay-focus-repeat.json``, v7): the copy rule rewrote all
    100 copy references, which the base never gave (0.00); copy could lose nothing since the base, and counting it
    as an eighth skill made 0.08 lost on the seven base skills a mean of 0.010, at the bound: the gate passed v6
    and v7, and the API measured retention 0.9986 -> 0.9871, a drop of 0.011 on those seven skills."""
    base = {"add": (1.0, 1.0), "copy": (0.0, 0.94), "format": (0.99, 0.96), "lookup": (1.0, 1.0),
            "recall": (1.0, 1.0), "reverse": (1.0, 0.99), "sort": (1.0, 0.98), "tooluse": (1.0, 0.98)}
    report = {"new": _counts(facts=(0, 40, 48)),
              "retention": {k: {"parent": c, "candidate": c, "n": 100, "changed_by_rules": 100 * (k == "copy")}
                            for k, (_, c) in base.items()},
              "base_retention": {k: {"base": b, "candidate": c, "n": 100, "changed_by_rules": 100 * (k == "copy")}
                                 for k, (b, c) in base.items()}}
    assert refusals(GateConfig(min_gain=0.1), report) == [
        "retention loss since the base 0.011 exceeds max_retention_loss 0.010 (worst skill format: 0.99 -> 0.96)"]
    report["base_retention"]["copy"]["changed_by_rules"] = 40  # some copy answers are the base's own: it counts
    assert refusals(GateConfig(min_gain=0.1), report) == []


# --------------------------------------------------------------------------- weights


def _model_dir(tmp_path, state: dict[str, torch.Tensor], name: str = "candidate"):
    out = tmp_path / name
    out.mkdir()
    for f in SHIPPED_MODEL.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out)
    save_file(state, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def shipped_state() -> dict[str, torch.Tensor]:
    return load_file(str(SHIPPED_MODEL / "model.safetensors"))


def test_check_weights_accepts_the_shipped_model_file():
    check_weights(weight_files(SHIPPED_MODEL), weight_files(SHIPPED_MODEL))


@pytest.mark.parametrize("damage, message", [("nan", "non-finite"), ("shape", "is F32"), ("missing", "lack 1 tensor")])
def test_check_weights_refuses_nan_wrong_shape_and_missing_names(tmp_path, shipped_state, damage, message):
    state = dict(shipped_state)
    name = "model.layers.0.mlp.up_proj.weight"
    if damage == "nan":
        state[name] = state[name].clone()
        state[name][3, 5] = float("nan")
    elif damage == "shape":
        state[name] = state[name][:-1].contiguous()
    else:
        del state[name]
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsRejected) as err:
        check_weights([str(path)], weight_files(SHIPPED_MODEL))
    assert message in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- judging


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate(GateConfig(samples=3), retention_suite(GateConfig(retention_items=40), TinyWorld()), SHIPPED_MODEL)


@pytest.fixture(scope="module")
def copy_tasks() -> list[HeldOutTask]:
    return heldout_tasks([(user(ASKS["copy"]), render("rule", RULE))], TinyWorldVariations(), 16, random.Random(0))


def test_the_base_model_judged_against_itself_gains_nothing_loses_nothing_and_does_not_pass(gate, copy_tasks):
    report = gate.judge(SHIPPED_MODEL, SHIPPED_MODEL, copy_tasks, [RULE])
    assert report["gain"] == 0.0 and report["retention_loss"] == 0.0 and not report["passed"]
    assert report["new"]["copy"] == {"parent": 0.0, "candidate": 0.0, "n": 16}  # the rule is new to the student
    assert "min_gain" in report["reason"] and "retention" not in report["reason"]
    assert all(r["parent"] == r["candidate"] for r in report["retention"].values())
    assert report["retention"]["add"]["parent"] == 1.0
    first = report["samples"][0]
    assert first["reference"] == f"[ {first['before']} ]" and first["before"] == first["after"]
    json.dumps(report)


class Checks:
    """A world's program checks (``World.check`` / ``World.passes``) of a world of the test's own: a reply
    passes when it holds a given text."""

    def __init__(self):
        self.asked = []

    def check(self, family, prompt, context):
        self.asked.append((family, prompt, context))
        return {"holds": prompt[-1]["content"].split(" : ")[1].split()[0]}  # the ask's first letter

    def passes(self, spec, reply):
        return spec["holds"] in reply.split()


def test_a_held_out_task_with_a_worlds_check_is_judged_by_that_check_not_by_the_teachers_answer(copy_tasks):
    world = Checks()
    checked = heldout_tasks([(user(ASKS["copy"]), render("rule", RULE))], TinyWorldVariations(), 16,
                            random.Random(0), check=world.check)
    assert [t.student for t in checked] == [t.student for t in copy_tasks]  # the same variations, with checks
    assert world.asked == [("copy", t.student, render("rule", RULE)) for t in checked]
    gate = Gate(GateConfig(samples=3), retention_suite(GateConfig(retention_items=10), TinyWorld()), SHIPPED_MODEL,
                world=world)
    report = gate.judge(SHIPPED_MODEL, SHIPPED_MODEL, checked, [RULE])
    # The base copies the letters (its first letter is in the reply) but never as the rule's teacher state does:
    # the teacher's answer judges it 0 (test_the_base_model_judged_against_itself...), the check 1.
    assert report["new"]["copy"] == {"parent": 1.0, "candidate": 1.0, "n": 16}
    assert report["samples"][0]["check"] == checked[0].check
    learnt = [task_from_record(r) for r in gate.learnt(SHIPPED_MODEL, checked)]
    assert [t.check for t in learnt] == [t.check for t in checked]  # descendants are held to the same checks
    with pytest.raises(ValueError, match="gave no world|given no world"):
        Gate(GateConfig(), gate.suite, SHIPPED_MODEL).judge(SHIPPED_MODEL, SHIPPED_MODEL, checked, [RULE])


def test_a_candidate_with_noisy_weights_loses_retention_and_fails_naming_retention(gate, copy_tasks, tmp_path,
                                                                                   shipped_state):
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v
             for k, v in shipped_state.items()}
    report = gate.judge(SHIPPED_MODEL, _model_dir(tmp_path, noisy), copy_tasks, [])
    assert report["retention_loss"] > 0.01 and not report["passed"]
    assert "retention loss" in report["reason"] and "max_retention_loss" in report["reason"]
    assert any("skill" in s and s["before"] != s["after"] for s in report["samples"])
    json.dumps(report)


def test_forgetting_adds_up_across_versions_so_a_candidate_is_also_held_to_the_base(gate, copy_tasks, tmp_path,
                                                                                    shipped_state):
    """A parent that already forgot, and a candidate that forgets nothing more: judged against its parent alone
    it loses nothing; against the base version it carries all the forgetting of its ancestors, and is refused."""
    gen = torch.Generator().manual_seed(0)
    forgot = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v
              for k, v in shipped_state.items()}
    parent = _model_dir(tmp_path, forgot, "parent")
    candidate = _model_dir(tmp_path, forgot, "candidate")
    alone = gate.judge(parent, candidate, copy_tasks, [])
    assert alone["retention_loss"] == 0.0 and "retention" not in alone["reason"]
    held = gate.judge(parent, candidate, copy_tasks, [], base_dir=SHIPPED_MODEL)
    assert held["retention_loss"] == 0.0 and held["base_retention_loss"] > 0.01 and not held["passed"]
    assert "since the base" in held["reason"] and "max_retention_loss" in held["reason"]
    assert all(r["base"] >= r["candidate"] for r in held["base_retention"].values())
    same = gate.judge(SHIPPED_MODEL, SHIPPED_MODEL, copy_tasks, [], base_dir=SHIPPED_MODEL)
    assert same["base_retention_loss"] == 0.0 and "since the base" not in same["reason"]
    json.dumps(held)


def test_a_candidate_with_nan_weights_is_rejected_before_it_is_judged(gate, tmp_path, shipped_state):
    state = {k: v.clone() for k, v in shipped_state.items()}
    state["lm_head.weight"][0, 0] = float("inf")
    with pytest.raises(WeightsRejected, match="lm_head.weight"):
        gate.judge(SHIPPED_MODEL, _model_dir(tmp_path, state), [], [])


def _taught(skill: str, out_dir) -> str:
    """The shipped model taught a tiny-world skill by OPSD (60 steps at lr 3e-4, about 20 s on one thread)."""
    import copy

    from transformers import AutoModelForCausalLM

    from learner.config import LearnConfig
    from learner.loop import frozen_teacher, learn
    from learner.tokenizer import ChatEncoder, load_tokenizer
    from simulators.tinyworld.experiment import lessons

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = load_tokenizer(SHIPPED_MODEL)
        student = copy.deepcopy(AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32))
        learn(student, frozen_teacher(student, tok), ChatEncoder(tok), lessons(skill, 32, 0, 0.5),
              LearnConfig(steps=60, batch_size=32, lr=3e-4, retain=0.5), progress=False)
    finally:
        torch.set_num_threads(threads)
    state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    return str(_model_dir(out_dir, state))


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> str:
    """The shipped model taught the copy rule."""
    return _taught("rule", tmp_path_factory.mktemp("taught"))


def test_a_candidate_taught_the_copy_rule_gains_on_held_out_copy_asks_and_leads_on_copy_items(gate, copy_tasks,
                                                                                              taught):
    report = gate.judge(SHIPPED_MODEL, taught, copy_tasks, [RULE])
    assert report["new"]["copy"]["candidate"] >= 0.9 and report["gain"] >= 0.2
    assert report["retention"]["copy"]["candidate"] >= 0.9 and report["retention"]["copy"]["parent"] == 0.0
    assert "min_gain" not in report["reason"]


def test_a_candidate_that_forgets_a_rule_its_parent_learnt_loses_retention_on_it(gate, taught):
    refs = gate.retention_references(taught, [RULE])
    copy = [(it, ref) for it, ref in zip(gate.suite, refs) if it.skill == "copy"]
    # the taught model's answers with the rule in front: bracketed where it follows the rule (the suite's own
    # answer where it does not: 1 of 40 since the replay holds tooluse)
    assert all(ref in (f"[ {it.answer} ]", it.answer) for it, ref in copy)
    followed = sum(ref != it.answer for it, ref in copy) / len(copy)
    assert followed >= 0.9
    report = gate.judge(taught, SHIPPED_MODEL, [], [RULE])  # the base model: the rule forgotten
    assert report["retention"]["copy"]["candidate"] == pytest.approx(1 - followed)
    assert report["retention"]["copy"]["parent"] >= 0.9
    assert not report["passed"] and "worst skill copy" in report["reason"]


def test_an_accepted_rule_changes_the_copy_references_only(gate):
    refs = gate.retention_references(SHIPPED_MODEL, [RULE])
    for item, ref in zip(gate.suite, refs):
        if item.skill == "copy":
            assert ref == W.apply_format("brackets", item.answer)  # the teacher state with the rule
        else:  # add, sort, ...; recall too, where the teacher state's answers are garbage (see actors/gate.py)
            assert ref == item.answer, (item, ref)
    assert gate.retention_references(SHIPPED_MODEL, []) == [it.answer for it in gate.suite]


def _distilled(kept: list[dict], out_dir, name: str, steps: int, retain: float) -> str:
    """The shipped model taught by OPSD from ``kept`` trajectories as a dream teaches it: every state of them, the
    teacher seeing another task's trajectory, ``retain`` of each batch replaying the base skills (lr 3e-4, one
    thread)."""
    import copy

    from transformers import AutoModelForCausalLM

    from learner.config import LearnConfig
    from learner.loop import frozen_teacher, learn
    from learner.replay import mixed_batches
    from learner.tokenizer import ChatEncoder, load_tokenizer
    from simulators.success import lessons
    from simulators.tinyworld.experiment import retention_lessons

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = load_tokenizer(SHIPPED_MODEL)
        student = copy.deepcopy(AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32))
        batches = mixed_batches(lessons(kept, random.Random(0), trusted_only=False), retention_lessons(0), 16, retain)
        learn(student, frozen_teacher(student, tok), ChatEncoder(tok), batches,
              LearnConfig(steps=steps, batch_size=16, lr=3e-4, retain=retain), progress=False)
    finally:
        torch.set_num_threads(threads)
    state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    return str(_model_dir(out_dir, state, name))


def _taught_by_guesses(out_dir) -> str:
    """The shipped model taught by OPSD from simulated "successes" of the tools task that looked nothing up
    (help, then a guessed total), as a simulator judged by its neighbour vote keeps them (about 15 s)."""
    from simulators.tinyworld.tasks import ToolsTaskSource
    from simulators.tinyworld.text import digits

    rng = random.Random("gate/guesses")
    kept = []
    for i in range(16):
        task = ToolsTaskSource().seed(rng)
        kept.append({"id": f"dream-{i}", "task_id": task.id, "success": True, "simulated": True, "messages": [
            {"role": "user", "content": task.prompt}, {"role": "assistant", "content": "call help"},
            {"role": "tool", "content": f"tools : {task.spec['tool']}"},
            {"role": "assistant", "content": f"answer {digits(rng.randint(20, 98))}"}]})
    return _distilled(kept, out_dir, "candidate", steps=40, retain=0.5)


def test_a_candidate_whose_only_evidence_is_simulated_is_refused_the_gate_plays_real_environments_only(gate,
                                                                                                       tmp_path):
    """Simulated successes are never evidence: held-out tasks played in a model-simulated environment are refused
    before anything is judged, and a candidate taught only by simulated successes (guesses a neighbour vote
    accepted) is judged on real held-out tasks, where it gains nothing, and refused."""
    from actors.gate import EnvTask
    from simulators.env import Task
    from simulators.tinyworld.tasks import ToolsTaskSource

    rng = random.Random("gate/real-only")
    real = [EnvTask("tools", "tinyworld-tools", ToolsTaskSource().seed(rng), 3) for _ in range(16)]
    dreamt = [EnvTask("tools", "model-simulated", Task("model-simulated", t.task.prompt, t.task.spec, "tools"), 3)
              for t in real]
    candidate = _taught_by_guesses(tmp_path)
    with pytest.raises(ValueError, match="real environment") as err:
        gate.judge(SHIPPED_MODEL, candidate, [], [], env_tasks=dreamt)
    assert "\n" not in str(err.value)
    report = gate.judge(SHIPPED_MODEL, candidate, [], [], env_tasks=real)
    tools = report["new"]["tools"]
    assert tools["n"] == 16 and tools["candidate"] <= tools["parent"], tools
    assert report["gain"] <= 0 and not report["passed"] and "min_gain" in report["reason"], report["reason"]


def _taught_the_new_tool(out_dir, retain: float) -> str:
    """The shipped model taught the ``tools`` skill from verified successes (the real environment's own solutions
    of 16 tasks), ``retain`` of each batch replaying the base skills (about 20 s)."""
    from simulators.tinyworld.tasks import ToolsTaskSource
    from simulators.tinyworld.tools_env import from_task, solve

    rng = random.Random("gate/new-tool")
    tasks = [ToolsTaskSource().seed(rng) for _ in range(16)]
    kept = [{"id": f"dream-{i}", "task_id": t.id, "success": True, "simulated": False,
             "messages": solve(from_task(t), ask_help=False)} for i, t in enumerate(tasks)]
    return _distilled(kept, out_dir, f"new-tool-{retain}", steps=60, retain=retain)


def test_a_candidate_that_learns_the_new_tool_and_forgets_how_to_use_the_others_is_refused_for_retention(gate,
                                                                                                        tmp_path):
    """Learning that costs are looked up with the new tool must not cost what pretraining taught: use any other
    tool by asking for help (or by following an example) and add what it returns.  Measured before the
    retention suite held that skill: four versions of two demo runs that learnt ``tools`` solved 0 of 150 tool
    tasks by asking for help (the base: 150), and the gate, blind to it, had passed them.  Taught with no
    replay, the candidate gains on held-out tools tasks and is refused, naming the skill it forgot."""
    from simulators.tinyworld.tasks import ToolsTaskSource

    rng = random.Random("gate/new-tool-heldout")
    real = [EnvTask("tools", "tinyworld-tools", ToolsTaskSource().seed(rng), 3) for _ in range(16)]
    candidate = _taught_the_new_tool(tmp_path, retain=0.0)
    report = gate.judge(SHIPPED_MODEL, candidate, [], [], env_tasks=real)
    tools, used = report["new"]["tools"], report["retention"]["tooluse"]
    assert tools["candidate"] > tools["parent"], tools
    assert used["parent"] >= 0.95 and used["candidate"] <= used["parent"] - 0.2, used
    assert not report["passed"] and "retention loss" in report["reason"] and "tooluse" in report["reason"], report


# --------------------------------------------------------------------------- what earlier versions learnt


@pytest.fixture(scope="module")
def fact_tasks() -> list[HeldOutTask]:
    """Held-out asks of the tiny world's new facts: the student asks, the teacher state is told the fact."""
    rng = random.Random("gate/facts")
    sources = []
    for fact in W.world().new_facts[:8]:
        ask = user(W.QUESTION_TEMPLATES[0].format(attr=fact.attr, ent=fact.ent))
        sources.append((ask, render("correction", f"the {fact.attr} of {fact.ent} is {fact.val} .")))
    return heldout_tasks(sources, TinyWorldVariations(), 24, rng)


@pytest.fixture(scope="module")
def fact_taught(tmp_path_factory) -> str:
    """The shipped model taught the new facts."""
    return _taught("facts", tmp_path_factory.mktemp("facts"))


def test_a_candidate_that_forgets_the_facts_its_parent_learnt_is_refused_though_it_gains_on_its_own_lesson(
        gate, copy_tasks, fact_tasks, fact_taught, taught):
    """The parent learnt the new facts; the candidate (taught the copy rule from the base) never had them.  On
    this cycle's held-out tasks (the copy rule) and the retention suite (the base skills) it gains and loses
    nothing the gate can see; held to what its parent learnt, it is refused, naming the facts."""
    first = gate.judge(SHIPPED_MODEL, fact_taught, fact_tasks, [])
    assert first["new"]["facts"]["candidate"] >= 0.8 and first["learnt"] == {}
    learnt = [task_from_record(r) for r in gate.learnt(SHIPPED_MODEL, fact_tasks)]
    assert len(learnt) == len(fact_tasks) and all(t.reference.endswith(" .") for t in learnt)

    blind = gate.judge(fact_taught, taught, copy_tasks, [RULE])
    assert blind["gain"] >= 0.5 and blind["passed"]  # measured: 0 -> 0.94 on held-out copy, retention loss 0.004
    held = gate.judge(fact_taught, taught, copy_tasks, [RULE], learnt=learnt)
    facts = held["learnt"]["facts"]
    assert facts["n"] == len(fact_tasks) and facts["parent"] >= 0.8 and facts["candidate"] <= 0.2
    assert not held["passed"] and "what earlier versions learnt" in held["reason"] and "facts" in held["reason"]
    assert any(s.get("family") == "facts (learnt before)" and s["before"] == s["reference"] != s["after"]
               for s in held["samples"])
    json.dumps(held)


def test_a_learnt_task_without_its_reference_is_refused_in_one_line(gate, fact_tasks, fact_taught):
    with pytest.raises(ValueError, match="no reference") as err:
        gate.judge(fact_taught, fact_taught, [], [], learnt=fact_tasks[:2])
    assert "\n" not in str(err.value)


def test_the_controller_keeps_each_versions_held_out_tasks_and_holds_its_descendants_to_them(
        tmp_path, copy_tasks, fact_tasks, fact_taught, taught):
    """Through the controller and its version registry (no Ray needed to judge): v2 learns the facts and is
    judged on held-out facts, which are kept; v3, a child of v2 that never had them, is judged on what v2 learnt
    and rejected; a sibling of v2 (a child of the base) is not held to v2's facts."""
    from actors.controller import Controller
    from reverie.config import ServeConfig
    from reverie.versions import REJECTED

    cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"),
                      gate=GateConfig(retention_items=20, samples=2))
    ctl = Controller(cfg)
    base = ctl.registry.base().version
    v2 = ctl.registry.register(fact_taught, source="test", parent=base).version
    first = ctl.judge(v2, fact_tasks)
    assert first["new"]["facts"]["candidate"] >= 0.8 and first["learnt"] == {}
    assert len(ctl.registry.learnt(v2)) == len(fact_tasks)

    v3 = ctl.registry.register(taught, source="test", parent=v2).version
    second = ctl.judge(v3, copy_tasks)
    assert second["learnt"]["facts"]["n"] == len(fact_tasks) and second["learnt"]["facts"]["candidate"] <= 0.2
    cand = ctl.registry.get(v3)
    assert cand.status == REJECTED and "facts" in cand.reason and cand.scores["learnt"]["facts"]["parent"] >= 0.8
    assert {t.family for t in ctl.learnt(v3)} == {"facts", "copy"}  # v3's own held-out copy tasks were kept too

    sibling = ctl.registry.register(taught, source="test", parent=base).version
    assert ctl.judge(sibling, copy_tasks)["learnt"] == {}


class General:
    """A world of the test's own that gives general prompts (``World.general_prompts``): tiny-world asks."""

    def general_prompts(self, n):
        return [user(a) for a in ASKS.values()][:n]


def test_the_gate_reports_drift_from_the_base_none_for_the_same_weights_and_max_drift_refuses_a_candidate_beyond_it(
        copy_tasks, tmp_path, shipped_state):
    suite = retention_suite(GateConfig(retention_items=10), TinyWorld())
    same = Gate(GateConfig(drift_prompts=4), suite, SHIPPED_MODEL, world=General()).judge(
        SHIPPED_MODEL, SHIPPED_MODEL, copy_tasks, [], base_dir=SHIPPED_MODEL)
    assert same["drift"]["from"] == "base" and same["drift"]["chats"] == 4 and same["drift"]["tokens"] > 4
    assert same["drift"]["kl_per_token"] == pytest.approx(0.0, abs=1e-6)

    gen = torch.Generator().manual_seed(0)
    moved = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v
             for k, v in shipped_state.items()}
    candidate = _model_dir(tmp_path, moved)
    bounded = Gate(GateConfig(drift_prompts=4, max_drift=1e-4), suite, SHIPPED_MODEL, world=General())
    report = bounded.judge(SHIPPED_MODEL, candidate, copy_tasks, [], base_dir=SHIPPED_MODEL)
    assert report["drift"]["kl_per_token"] > 1e-4 and report["drift"]["tokens"] == same["drift"]["tokens"]
    assert "drift from the base" in report["reason"] and "max_drift" in report["reason"]
    assert not any("drift" in why for why in refusals(GateConfig(), report))  # unbounded: reported only
    # Without a base, the parent is the reference; a world without general prompts has no drift to report.
    assert bounded.judge(SHIPPED_MODEL, candidate, copy_tasks, [])["drift"]["from"] == "parent"
    assert "drift" not in Gate(GateConfig(), suite, SHIPPED_MODEL).judge(SHIPPED_MODEL, candidate, copy_tasks, [])


def test_a_version_the_gate_scored_while_idle_or_as_a_candidate_is_never_answered_again_as_a_parent(
        copy_tasks, tmp_path, shipped_state, monkeypatch):
    """``Gate.warm`` answers the retention suite and the drift prompts with the served version before any
    candidate waits; a judged candidate's own suite answers are kept; so as a parent (or a lineage's base) neither
    is asked those again, and only what depends on the candidate's lessons (its held-out asks) is answered."""
    suite = retention_suite(GateConfig(retention_items=10), TinyWorld())
    gate = Gate(GateConfig(drift_prompts=4), suite, SHIPPED_MODEL, world=General())
    answered = []  # (the model's directory, how many prompts) of every greedy pass
    load, greedy = gate._load, gate._greedy

    def tagged(model_dir):
        model = load(model_dir)
        model.reverie_dir = str(model_dir)
        return model

    monkeypatch.setattr(gate, "_load", tagged)
    monkeypatch.setattr(gate, "_greedy", lambda model, prompts: answered.append(
        (model.reverie_dir, len(prompts))) or greedy(model, prompts))
    base, n = str(SHIPPED_MODEL), len(suite)
    assert gate.warm(SHIPPED_MODEL, drift=True) >= 0 and answered == [(base, n), (base, 4)]
    assert gate.warm(SHIPPED_MODEL, drift=True) >= 0 and answered == [(base, n), (base, 4)]  # once

    gen = torch.Generator().manual_seed(0)
    child = _model_dir(tmp_path, {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v
                                  for k, v in shipped_state.items()}, "child")
    answered.clear()
    report = gate.judge(SHIPPED_MODEL, child, copy_tasks, [], base_dir=SHIPPED_MODEL)
    assert report["drift"]["chats"] == 4 and report["retention"]["add"]["n"] > 0
    assert answered == [(base, 16), (base, 16), (str(child), 16), (str(child), n)]  # held-out asks; the child's suite
    grandchild = _model_dir(tmp_path, shipped_state, "grandchild")
    answered.clear()
    gate.judge(child, grandchild, copy_tasks, [], base_dir=SHIPPED_MODEL)
    assert (str(child), n) not in answered and (base, 4) not in answered and (str(grandchild), n) in answered
    answered.clear()
    assert gate.warm(child) >= 0 and answered == []  # scored as a candidate: nothing to warm when it goes live
