"""The controller's bookkeeping of feedback across cycles, on its durable state file (no Ray: ending a cycle
touches only the controller's own state; the loop end to end is in ``tests/test_loop.py``)."""
from __future__ import annotations

import json

from actors.controller import Controller, Cycle
from reverie.config import ServeConfig
from simulators.tinyworld.build import SHIPPED_MODEL


def _controller(tmp_path) -> Controller:
    return Controller(ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data")))


def _feedback(ctl: Controller, *ids: str) -> None:
    """Feedback records as the idle look holds them after reading the store (not yet claimed by a cycle)."""
    ctl._feedback.update({i: {"id": i, "correction": "the pet of sofa is fuga ."} for i in ids})


def _end(ctl: Controller, cycle: int, ids: list[str], state: str, rejected_by: str = "") -> None:
    c = Cycle(cycle=cycle, state=state, parent=1, feedback_ids=sorted(ids), seed=cycle, started=0.0,
              rejected_by=rejected_by, error="held-out tasks lost more than max_family_loss 0.10: tools")
    ctl.current = c
    ctl._end(c)


def test_the_feedback_of_a_cycle_the_gate_refused_is_taught_once_more_then_dropped(tmp_path):
    """Measured in a demo run (``demo-runs/2026-12-03-f-family-and-learnt-0.05.json``, v5): a cycle of 63
    corrections was refused for the tools family, which the corrections were not about, and the users'
    corrections were lost with it.  They are left for the next cycle, once."""
    ctl = _controller(tmp_path)
    _feedback(ctl, "fb-1", "fb-2")
    _end(ctl, 1, ["fb-1", "fb-2"], "rejected", "gate")
    assert not ctl.processed & {"fb-1", "fb-2"}
    assert set(ctl._feedback) == {"fb-1", "fb-2"}  # the next look offers them to the next cycle

    again = _controller(tmp_path)  # durable: a restarted controller knows they were retried
    assert again.retried == {"fb-1", "fb-2"} and not again.processed & {"fb-1", "fb-2"}

    _feedback(ctl, "fb-3")
    _end(ctl, 2, ["fb-1", "fb-2", "fb-3"], "rejected", "gate")
    assert {"fb-1", "fb-2"} <= ctl.processed and "fb-3" not in ctl.processed  # once only
    assert set(ctl._feedback) == {"fb-3"}
    state = json.loads(ctl.path.read_text())
    assert "fb-3" in state["retried"] and "fb-1" in state["processed"]


def test_the_feedback_of_a_candidate_a_person_rejected_or_a_cycle_that_ended_is_not_taught_again(tmp_path):
    ctl = _controller(tmp_path)
    _feedback(ctl, "fb-1", "fb-2")
    _end(ctl, 1, ["fb-1"], "rejected", "person")
    _end(ctl, 2, ["fb-2"], "done")
    assert {"fb-1", "fb-2"} <= ctl.processed and not ctl._feedback and not ctl.retried


def _judged(ctl: Controller, cycle: int, state: str, *, learnt: int = 150, forgot: bool = False) -> None:
    """A cycle that ended ``state`` after ``learnt`` learner updates (0: a submitted candidate)."""
    c = Cycle(cycle=cycle, state=state, parent=1, feedback_ids=[], seed=cycle, started=0.0, done=learnt,
              total=learnt, rejected_by="gate" if state == "rejected" else "", forgot=forgot,
              retain=ctl._retain())
    ctl.current = c
    ctl._end(c)


def test_after_refusals_for_forgetting_the_next_cycles_replay_more_until_a_candidate_passes(tmp_path):
    """Measured in demo run n (``demo-runs/2026-12-03-n-kept-dream-engine.json``): the gate refused three of five
    learnt candidates for retention since the base (0.011 to 0.013 against 0.010), and each retry learnt by the
    same recipe.  After such a refusal the next cycle halves the new lessons' share of each batch (twice at most);
    a cycle that learnt nothing (the injected candidate, a failed step) is passed over; any other ends the run."""
    from reverie.config import LoopConfig

    def controller() -> Controller:
        return Controller(ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"),
                                      loop=LoopConfig(retain=0.75)))

    ctl = controller()
    assert ctl._retain() == 0.75
    _judged(ctl, 1, "rejected", learnt=0, forgot=True)  # a submitted candidate: nothing was learnt
    assert ctl._retain() == 0.75
    _judged(ctl, 2, "rejected", forgot=True)
    assert ctl._retain() == 0.875
    _judged(ctl, 3, "failed", learnt=40)
    assert ctl._retain() == 0.875
    _judged(ctl, 4, "rejected", forgot=True)
    _judged(ctl, 5, "rejected", forgot=True)
    assert ctl._retain() == 0.9375 and controller()._retain() == 0.9375  # at most twice; durable
    assert [h["retain"] for h in ctl.history] == [0.75, 0.75, 0.875, 0.875, 0.9375]
    _judged(ctl, 6, "rejected")  # refused for something else (no gain)
    assert ctl._retain() == 0.75
    _judged(ctl, 7, "rejected", forgot=True)
    _judged(ctl, 8, "done")
    assert ctl._retain() == 0.75


def test_the_gate_step_tells_a_refusal_for_forgetting_from_one_for_no_gain(tmp_path):
    """``Cycle.forgot`` is set when either retention loss (against the parent, or since the base) is over the
    gate's bound, compared as the gate compares it; a refusal for no gain or for a held-out family is not."""
    ctl = _controller(tmp_path)
    bound = ctl.cfg.gate.max_retention_loss
    for losses, forgot in [((0.0, 0.011), True), ((0.0125, 0.0), True), ((0.01, 0.01), False), ((0.0, 0.0), False)]:
        report = {"passed": False, "reason": "held-out gain 0.000 is below min_gain 0.100",
                  "retention_loss": losses[0], "base_retention_loss": losses[1]}
        ctl.judge = lambda version, heldout, env_tasks=(), r=report: r  # the gate's verdict, as judge returns it
        ctl._env_heldout = lambda c: []
        c = Cycle(cycle=1, state="gate", parent=1, feedback_ids=[], seed=1, started=0.0, candidate=2)
        ctl._gate(c)
        assert c.state == "rejected" and c.forgot is forgot, (losses, bound)
    weights = {"passed": False, "reason": "weights rejected before evaluation: bad shapes"}
    ctl.judge = lambda version, heldout, env_tasks=(): weights
    c = Cycle(cycle=1, state="gate", parent=1, feedback_ids=[], seed=1, started=0.0, candidate=2)
    ctl._gate(c)
    assert c.state == "rejected" and not c.forgot


def test_a_cycle_of_fact_corrections_replays_the_recall_skill_most_and_records_the_shares(tmp_path):
    """Measured on demo run s's cycle 3 (its learn and gate steps rerun on its recorded lessons): with an even
    replay the candidate lost recall 1.00 -> 0.97 since the base and was refused (0.011 > 0.010); with half the
    replay focused on the skills most like the lessons, recall stayed 1.00 and it passed."""
    import itertools
    import random

    from learner.distill import Lesson
    from simulators.tinyworld import world as W
    from simulators.tinyworld.skills import new_pair

    ctl = _controller(tmp_path)
    rng = random.Random(0)
    lessons = [Lesson(s.prompt, t.prompt, None) for s, t in (new_pair("facts", rng) for _ in range(40))]
    c = Cycle(cycle=1, state="learn", parent=1, feedback_ids=[], seed=1, started=0.0, retain=0.75)
    batches = ctl._batches(c, lessons, [], set())
    shares = c.lessons["replay"]
    assert max(shares, key=shares.get) == "recall" and shares["recall"] > 2 / len(shares)
    sentences = {f.sentence() for f in W.world().encyclopedia}
    replayed = [l for batch in itertools.islice(batches, 20) for l in batch[8:]]  # 24 of each 32 replay
    assert len(replayed) == 480 and all(l.student == l.teacher for l in replayed)
    recall = sum(l.reference in sentences for l in replayed) / len(replayed)
    assert abs(recall - shares["recall"]) < 0.06  # an even replay gives it 1/7


def test_a_cycle_gives_its_feedback_and_its_dreams_batch_slots_in_proportion_to_their_records(tmp_path):
    """Measured with `reverie bench rerun` on demo run ab's cycle 3 (102 corrections and 19 rules against 24 kept
    dream trajectories): feedback and dreams taking turns, its held-out facts went 0.00 -> 0.17 and copy ->
    0.56; in proportion to their records, facts -> 0.33 and copy -> 0.79, tools 0.75 -> 0.73, retention the
    same (docs/design-notes.md).  ``loop.mix: turns`` keeps the halves."""
    import dataclasses
    import itertools
    import random

    from learner.distill import Lesson
    from simulators.tinyworld.skills import new_pair

    rng = random.Random(0)
    lessons = [Lesson(s.prompt, t.prompt, None) for s, t in (new_pair("facts", rng) for _ in range(30))]
    state = {"role": "user", "content": "a dreamt state"}
    dream = Lesson((state,), ({"role": "system", "content": "a verified trajectory"}, state), None)

    def share(mix: str) -> tuple[float, float]:
        ctl = _controller(tmp_path / mix)
        ctl.cfg = dataclasses.replace(ctl.cfg, loop=dataclasses.replace(ctl.cfg.loop, mix=mix))
        ctl._dreamt = lambda c: itertools.repeat(dream)  # the kept trajectories' lessons, as read from the store
        c = Cycle(cycle=1, state="learn", parent=1, feedback_ids=[], seed=1, started=0.0, retain=0.75,
                  trajectories=[f"t-{i}" for i in range(10)])
        new = [l for b in itertools.islice(ctl._batches(c, lessons, [], set()), 100) for l in b[:8]]
        return sum(l is not dream for l in new) / len(new), c.lessons["feedback_share"]

    seen, recorded = share("records")
    assert recorded == 0.75 and abs(seen - 0.75) < 0.04  # 30 feedback lessons against 10 trajectories
    seen, recorded = share("turns")
    assert recorded == 0.5 and seen == 0.5


def _told(store, n: int, question: str, sentence: str, t: float) -> str:
    """A recorded ask and the correction a user gave of its answer; the feedback id."""
    import msgpack

    store.append("interactions", [msgpack.packb({"id": f"r-{n}", "created": t, "kind": "chat", "version": 1,
                                                 "messages": [{"role": "user", "content": question}]})])
    store.append("feedback", [msgpack.packb({"id": f"fb-{n}", "response_id": f"r-{n}", "created": t,
                                             "correction": sentence})])
    return f"fb-{n}"


def test_a_cycle_teaches_again_what_its_lineage_was_taught_newest_first_never_a_held_out_ask(tmp_path):
    """Measured in demo run v: users correct a fact only while the served version gets it wrong in their own
    words, so its last cycle had 11 corrections while facts asked in other words stayed at 0.83; what earlier
    cycles were taught was never taught again.  A cycle now relearns its lineage's lessons (the newest feedback
    on an ask, never one a gate held out) with up to ``loop.relearn`` of the feedback lessons."""
    import itertools
    from collections import Counter

    from actors.store import ExperienceStoreCore
    from reverie.config import LoopConfig
    from simulators.tinyworld import world as W
    from simulators.tinyworld.users import fact_question

    facts = W.world().new_facts[:12]
    store = ExperienceStoreCore(str(tmp_path / "data"))
    first = [_told(store, i, fact_question(f), f.sentence(), 100.0 + i) for i, f in enumerate(facts[:10])]
    again = _told(store, 10, fact_question(facts[0]), facts[0].sentence(), 200.0)  # the same ask, told again
    now = [again, *(_told(store, 11 + i, fact_question(f), f.sentence(), 300.0 + i) for i, f in enumerate(facts[10:]))]
    store.close()

    def controller(relearn: float) -> Controller:
        return Controller(ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"),
                                      versions_dir=str(tmp_path / "versions"), loop=LoopConfig(relearn=relearn)))

    ctl = controller(0.5)
    v2 = ctl.registry.register(SHIPPED_MODEL, source="learner", parent=1, lessons={"ids": first}).version
    held = {"family": "facts", "student": [{"role": "user", "content": fact_question(facts[1])}],
            "reference": facts[1].sentence()}  # the gate judged v2 on this ask: never a lesson after
    ctl.registry.save_learnt(v2, [held])
    c = Cycle(cycle=2, state="learn", parent=v2, feedback_ids=sorted(now), seed=2, started=0.0)
    lessons, heldout, varied = ctl._split(c, ctl._lessons(c)[0])
    old, old_varied = ctl._earlier(c, lessons, heldout)
    asked = {l.student[-1]["content"] for l in old}
    assert asked == {fact_question(f) for f in facts[2:10]}  # facts[0] is this cycle's, facts[1] held out
    assert old_varied == set(range(len(old)))  # a correction of a fact may be asked in other words
    assert all(l.teacher[0]["content"].endswith(l.reference) for l in old)

    def taught(batches) -> Counter:
        """Where the feedback lessons of the first 50 batches came from (asked or varied): now, or earlier."""
        now_asked = {(f.attr, f.ent) for f in (facts[0], *facts[10:])}
        fact_of = {t.format(attr=f.attr, ent=f.ent): (f.attr, f.ent) for t in W.QUESTION_TEMPLATES for f in facts}
        return Counter("now" if fact_of[l.student[-1]["content"]] in now_asked else "earlier"
                       for b in itertools.islice(batches, 50) for l in b if l.teacher != l.student)

    count = taught(ctl._batches(c, lessons, heldout, varied, (old, old_varied)))
    share = count["earlier"] / sum(count.values())
    assert abs(share - 0.5) < 0.06, count  # 8 earlier lessons, 3 new ones: capped at relearn 0.5
    off = controller(0.0)
    assert off._earlier(c, lessons, heldout) == ([], set())
    assert taught(off._batches(c, lessons, heldout, varied)) == Counter({"now": sum(count.values())})


def test_a_candidate_submitted_while_the_loop_looks_for_new_experience_is_judged_not_dropped(tmp_path):
    """Measured in demo run y: the demo submitted its damaged candidate (v2, cycle 1) while the loop's own look
    for new experience was reading the store; that look then started cycle 2 over it, and v2 was never judged
    (left as a ``candidate``, no cycle 1 in the history).  A look that finds a cycle running starts none, and its
    feedback waits for the next."""
    ctl = _controller(tmp_path)
    ctl._read_new = lambda table, columns=None: []  # nothing new in the store: the records below were read before
    _feedback(ctl, "fb-1", "fb-2")
    look, submitted = ctl._new_feedback, []

    def look_while_a_candidate_is_submitted():
        found = look()
        submitted.append(ctl.submit(str(SHIPPED_MODEL), "an operator's fine-tune"))
        return found

    ctl._new_feedback = look_while_a_candidate_is_submitted
    ctl._maybe_start()
    assert ctl.current is not None and ctl.current.cycle == submitted[0]["cycle"]
    assert ctl.current.state == "gate" and ctl.current.candidate == submitted[0]["version"]
    assert ctl.next_cycle == submitted[0]["cycle"] + 1

    ctl._new_feedback = look
    ctl.current.state = "done"
    ctl._end(ctl.current)
    ctl._maybe_start()
    assert ctl.current.cycle == submitted[0]["cycle"] + 1 and ctl.current.feedback_ids == ["fb-1", "fb-2"]


def test_a_chat_cycles_replay_never_asks_what_it_teaches_or_holds_out_and_its_teacher_keeps_the_rule(tmp_path):
    """Measured with ``reverie bench cycle`` on SmolLM2-135M-Instruct (2026-12-07, 30 updates, half of each batch
    replay): after the cycle the stated rule held on 1 of 24 held-out asks and the corrected facts on 0 of 8.  A
    chat world has no replay of its own, so the loop replayed what users had asked before under the frozen parent
    with no context: the cycle's own rule asks, the other phrasings of the facts it corrects and general prompts
    the rule applies to, each taught the parent's answer, which is what the feedback corrects.  Replay now leaves
    out every ask the cycle teaches or holds out and every question of a family whose corrections hold in other
    words (a fact) that the cycle corrects, and its teacher is shown the rules in force as the rule lessons show
    them (the rule, and the exchanges that keep it).  The same cycle after the change was promoted, the rule kept
    on 0.825 of 40 unseen prompts through the API (docs/design-notes.md, "Replay that unteaches")."""
    import itertools

    import msgpack

    from actors.store import ExperienceStoreCore
    from learner.templates import render
    from reverie.config import LoopConfig
    from simulators.chatworld.facts import FACTS
    from simulators.chatworld.plugin import ChatWorld
    from simulators.chatworld.prompts import split
    from tests.test_chatworld import ALPACA_LIKE

    pools = split(ALPACA_LIKE)
    store = ExperienceStoreCore(str(tmp_path / "data"))
    rule = "Always start your answer with 'Short answer:'"
    fact, other_fact = FACTS[0], FACTS[7]
    n = 0

    def asked(text: str, **feedback) -> str:
        nonlocal n
        n += 1
        store.append("interactions", [msgpack.packb({"id": f"r-{n}", "created": float(n), "kind": "chat",
                                                     "version": 1, "messages": [{"role": "user", "content": text}]})])
        if feedback:
            store.append("feedback", [msgpack.packb({"id": f"fb-{n}", "response_id": f"r-{n}", "created": float(n),
                                                     **feedback})])
        return f"fb-{n}"

    general = list(pools.heldout[:6])
    for text in [*general, fact.questions[1], fact.questions[2], other_fact.questions[0]]:
        asked(text)  # asked before anything was taught
    taught = [asked(p, rule=rule, correction=f"Short answer: about {p[:12]}") for p in pools.taught[:3]]
    taught.append(asked(fact.questions[0], correction=fact.correction))
    store.close()

    ctl = Controller(ServeConfig(model_dir=SHIPPED_MODEL, world="chat", data_dir=str(tmp_path / "data"),
                                 loop=LoopConfig(batch_size=8)))
    ctl._world = ChatWorld(pools)
    c = Cycle(cycle=1, state="learn", parent=1, feedback_ids=sorted(taught), seed=1, started=0.0, retain=0.5)
    found = ctl._lessons(c)[0]
    lessons, heldout, varied = ctl._split(c, found)
    replayed = [l for b in itertools.islice(ctl._batches(c, lessons, heldout, varied, ruled=ctl._ruled(c, found)),
                                            50) for l in b[4:]]
    never = {tuple(m["content"] for m in l.student) for l in [*lessons, *heldout]}
    never |= {(q,) for q in fact.questions} | {(q,) for q in other_fact.questions}
    asks = {tuple(m["content"] for m in l.student) for l in replayed}
    assert asks and not asks & never, asks & never
    assert asks <= {(p,) for p in general}
    for l in replayed:
        system, *shown = l.context
        assert system == {"role": "system", "content": render("rule", rule)}
        assert len(shown) == 4 and [m["role"] for m in shown] == ["user", "assistant"] * 2
        assert all(m["content"].startswith("Short answer:") for m in shown[1::2])


def test_the_teachers_temperature_is_the_worlds_unless_the_loop_sets_one(tmp_path):
    """The tiny world's sweep chose a teacher at temperature 0.5 (docs/design-notes.md), and the loop used it for
    every world.  Under replay, whose teacher is the frozen parent itself, that target is a sharpened copy of the
    parent: every replayed reply is pulled away from what the model was (on SmolLM2 the 30-update cycle of
    2026-12-07 drifted 0.315 nats per token from the base; 0.129 after this change and the replay's together).  A world states the temperature it was measured with
    (``World.teacher_temperature``); a world that states none gets 1.0, the teacher as it is; ``loop.
    teacher_temperature`` overrides both.  The chat world's is 0.6, measured in the cycle on SmolLM2 once replay
    no longer taught the parent's old answers (``ChatWorld.teacher_temperature``)."""
    from reverie.config import LoopConfig
    from simulators.chatworld.plugin import ChatWorld
    from simulators.world import NoWorld

    c = Cycle(cycle=1, state="learn", parent=1, feedback_ids=[], seed=3, started=0.0, retain=0.25)
    for world, loop, expected in [(None, LoopConfig(), 0.5), (ChatWorld(), LoopConfig(), 0.6),
                                  (NoWorld(), LoopConfig(), 1.0), (ChatWorld(), LoopConfig(teacher_temperature=0.7), 0.7)]:
        ctl = Controller(ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"), loop=loop))
        if world is not None:
            ctl._world = world
        cfg = ctl._learn_config(c)
        assert cfg.teacher_temperature == expected, (world, loop)
        assert (cfg.retain, cfg.seed, cfg.steps, cfg.lr) == (0.25, 3, loop.steps, loop.lr)


def test_the_share_of_corrections_scored_along_the_correction_is_the_worlds_unless_the_loop_sets_one(tmp_path):
    """OPSD on SmolLM2-135M-Instruct's own samples learnt a corrected name's first token and not the rest, and the
    chat world states the share of corrected lessons scored along the correction instead
    (``World.along_reference``: bench/results/chatworld/); a world that states none samples every lesson, as the
    tiny world's runs were measured; ``loop.along_reference`` overrides both, 0 included."""
    from reverie.config import LoopConfig
    from simulators.chatworld.plugin import ChatWorld
    from simulators.world import NoWorld

    c = Cycle(cycle=1, state="learn", parent=1, feedback_ids=[], seed=3, started=0.0, retain=0.25)
    for world, loop, expected in [(None, LoopConfig(), 0.0), (NoWorld(), LoopConfig(), 0.0),
                                  (ChatWorld(), LoopConfig(), ChatWorld.along_reference),
                                  (ChatWorld(), LoopConfig(along_reference=0.0), 0.0),
                                  (NoWorld(), LoopConfig(along_reference=0.5), 0.5)]:
        ctl = Controller(ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"), loop=loop))
        if world is not None:
            ctl._world = world
        assert ctl._learn_config(c).along_reference == expected, (world, loop)
    assert ChatWorld.along_reference > 0


def test_a_corrected_facts_variation_keeps_the_correction_as_its_reference_and_a_rules_variation_has_none(tmp_path):
    """A fact asked another way wants the same answer (``keeps_answer``), so the lesson varied into it keeps the
    correction as its reference and may be scored along it (``along_reference``).  Without it only the corrected ask
    itself could be, a quarter of a fact's lessons at ``loop.variations`` 0.75, and the promoted version of
    ``…-along-reference.json`` (2026-12-07) answered 1 of 4 facts in unseen words.  A rule's variation (another
    general prompt) keeps none: the correction was the reply to a different ask."""
    import itertools

    import msgpack

    from actors.store import ExperienceStoreCore
    from reverie.config import LoopConfig
    from simulators.chatworld.facts import FACTS
    from simulators.chatworld.plugin import ChatWorld
    from simulators.chatworld.prompts import split
    from tests.test_chatworld import ALPACA_LIKE

    pools = split(ALPACA_LIKE)
    store = ExperienceStoreCore(str(tmp_path / "data"))
    fact, rule = FACTS[3], "Always start your answer with 'Short answer:'"
    asks = [(fact.questions[0], {"correction": fact.correction}),
            (pools.taught[0], {"rule": rule, "correction": "Short answer: yes."})]
    for n, (text, feedback) in enumerate(asks):
        store.append("interactions", [msgpack.packb({"id": f"r-{n}", "created": float(n), "kind": "chat", "version": 1,
                                                     "messages": [{"role": "user", "content": text}]})])
        store.append("feedback", [msgpack.packb({"id": f"fb-{n}", "response_id": f"r-{n}", "created": float(n),
                                                 **feedback})])
    store.close()
    ctl = Controller(ServeConfig(model_dir=SHIPPED_MODEL, world="chat", data_dir=str(tmp_path / "data"),
                                 loop=LoopConfig(batch_size=4)))
    ctl._world = ChatWorld(pools)
    c = Cycle(cycle=1, state="learn", parent=1, feedback_ids=["fb-0", "fb-1"], seed=1, started=0.0, retain=0.0)
    found = ctl._lessons(c)[0]
    lessons, heldout, varied = ctl._split(c, found)
    new = [l for b in itertools.islice(ctl._batches(c, lessons, heldout, varied), 40) for l in b]
    facts = [l for l in new if l.student[0]["content"] in fact.questions]
    others = [l for l in new if l.student[0]["content"] not in fact.questions]
    assert {l.student[0]["content"] for l in facts} - {fact.questions[0]}  # varied into other phrasings
    assert all(l.reference == fact.correction for l in facts)
    assert {l.reference for l in others if l.student[0]["content"] != pools.taught[0]} == {None}


def test_while_idle_the_gate_scores_the_served_version_once_and_the_status_says_which(tmp_path):
    """The gate's parent scores (retention suite answers, and for a lineage's base the drift replies) are made
    when the loop has nothing to do, not while a user's lesson waits in the gate step."""
    ctl = _controller(tmp_path)
    ctl._read_new = lambda table, columns=None: []  # nothing new in the store
    ctl._flush = lambda: None
    assert ctl.status()["gate_warm"] == {}
    gate, warmed = ctl._gate_for(), []
    warm = gate.warm
    gate.warm = lambda model_dir, drift=False: warmed.append((str(model_dir), drift)) or warm(model_dir, drift)
    ctl.tick()
    ctl.tick()
    promoted = ctl.registry.promoted()
    assert warmed == [(str(promoted.directory), True)]  # the base: its drift replies too; once
    status = ctl.status()["gate_warm"]
    assert status["version"] == promoted.version and status["seconds"] > 0


def _kept(data_dir, n: int) -> list[str]:
    """``n`` kept dream trajectories of ``n`` tasks in the store's ``trajectories`` table; their ids."""
    import msgpack

    from actors.store import ExperienceStoreCore

    store = ExperienceStoreCore(str(data_dir))
    rows = [{"id": f"dream-{i}", "task_id": f"task-{i}", "env": "tools", "policy_version": 1, "reward": 1.0,
             "success": True, "simulated": False, "started": 0.0, "seconds": 1.0, "provenance": "{}",
             "messages": [{"role": "user", "content": f"task number {i}"},
                          {"role": "assistant", "content": f"call help {i}"},
                          {"role": "tool", "content": f"help {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(n)]
    store.append("trajectories", [msgpack.packb(r, use_bin_type=True) for r in rows])
    store.flush()
    store.close()
    return [r["id"] for r in rows]


def test_a_cycle_dreams_and_learns_its_dreams_with_the_dream_familys_own_settings(tmp_path, monkeypatch):
    """A dream family's own settings (``dream_settings``: calc's, measured with ``reverie dream``) hold in the
    loop too: the rehearsal's sampling temperature, and whose success the teacher is shown (calc: the state's
    own task's).  A family without them keeps temperature 1 and another task's success."""
    import itertools

    import actors.dreams

    ctl = _controller(tmp_path)
    family = ctl.world.dream_families["tools"]
    ids = _kept(ctl.cfg.data_dir, 4)
    asked = {}

    def dream_step(*args, **kwargs):
        asked.update(kwargs)
        return {"episodes": 8, "kept": 4, "success_rate": 0.5, "seconds": 1.0, "trajectory_ids": ids, "env": "real",
                "agreement": None, "replayed": 0, "switched_off": None, "simulator": None}

    monkeypatch.setattr(actors.dreams, "dream_step", dream_step)
    monkeypatch.setattr(ctl, "_dream_engine", lambda: None)

    def taught(settings: dict | None) -> tuple[float, list[bool]]:
        if settings is not None:
            monkeypatch.setattr(type(family), "dream_settings", settings, raising=False)
        c = Cycle(cycle=1, state="dream", parent=1, feedback_ids=[], seed=1, started=0.0)
        ctl._dream(c)
        assert c.state == "learn" and c.trajectories == ids and c.dream["skill"] == "tools"
        own = [lesson.student[0]["content"] in lesson.teacher[0]["content"]
               for lesson in itertools.islice(ctl._dreamt(c), 24)]
        return asked["temperature"], own

    temperature, own = taught(None)
    assert temperature == 1.0 and not any(own)
    temperature, own = taught({"temperature": 0.4, "teacher_context": "same"})
    assert temperature == 0.4 and all(own)
