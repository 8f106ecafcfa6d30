"""The task proposer: new tasks from seeds and recorded asks, deduplicated,
never a held-out task, and a curriculum that moves toward the turn budgets the
policy solves sometimes but not always."""
from __future__ import annotations

import random

from simulators.proposer import Curriculum, TaskProposer, level_key
from simulators.tinyworld import world as W
from simulators.tinyworld.tasks import ToolsTaskSource
from simulators.tinyworld.tools_env import from_task


def test_curriculum_weights_peak_at_intermediate_success():
    c = Curriculum(["never", "half", "always"])
    for _ in range(40):
        c.update("never", False)
        c.update("always", True)
    for i in range(40):
        c.update("half", i % 2 == 0)
    w = c.weights()
    assert w["half"] > 0.7 and w["never"] > 0 and w["always"] > 0  # no level is starved
    assert abs(w["never"] - w["always"]) < 1e-9


def test_proposals_move_toward_the_budget_the_policy_solves_sometimes():
    # A policy that needs four turns: never within 3, half the time within 4,
    # always within 6; later it learns and solves 3 half the time and 4 always.
    proposer = TaskProposer(ToolsTaskSource(), budgets=(3, 4, 6), seed=1)
    rng = random.Random(0)

    def play(rates, n=150):
        props = proposer.propose(n)
        proposer.curriculum.forget(0.25)
        proposer.update((p, rng.random() < rates[p.max_turns]) for p in props)
        return {b: sum(p.max_turns == b for p in props) / n for b in (3, 4, 6)}

    first = play({3: 0.0, 4: 0.5, 6: 1.0})
    assert max(first.values()) < 0.6  # nothing known yet: close to uniform
    for _ in range(3):
        shares = play({3: 0.0, 4: 0.5, 6: 1.0})
    assert shares[4] > 0.6 and shares[4] > 2 * first[4] - 0.05
    for _ in range(3):
        shares = play({3: 0.5, 4: 1.0, 6: 1.0})  # the policy improved: the frontier moves
    assert shares[3] > 0.6
    assert proposer.curriculum.rate(level_key("tools", 4)) > 0.8


def test_proposer_never_repeats_a_task_nor_proposes_a_heldout_one():
    heldout_rng = random.Random(3)
    held = [ToolsTaskSource().seed(heldout_rng).prompt for _ in range(40)]
    # the proposer's own seed stream, replayed, contains exactly the held-out prompts
    proposer = TaskProposer(ToolsTaskSource(), budgets=(4,), seed=0, exclude=held)
    proposer.rng = random.Random(3)
    props = proposer.propose(300)
    prompts = [" ".join(p.task.prompt.split()) for p in props]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & set(held)
    more = proposer.propose(100)
    assert not {p.task.prompt for p in more} & set(prompts)


def test_recorded_asks_become_tasks_and_variations_of_them():
    proposer = TaskProposer(ToolsTaskSource(), budgets=(4,), seed=2, experience_share=1.0)
    asks = ["what is the total cost of bafa and kilo ?", "what is the total cost of bafa and kilo ?",
            "reverse : a b c", "hello there"]
    assert proposer.add_experience(asks) == 1  # one distinct ask of this skill
    props = proposer.propose(20)
    assert props[0].origin == "experience" and props[0].task.prompt == asks[0]
    assert {p.origin for p in props[1:]} == {"variation"}
    for p in props[1:]:
        items = [i for i, _ in from_task(p.task).values]
        assert "bafa" in items or "kilo" in items  # a variation keeps part of what the user asked
        assert from_task(p.task).tool == W.world().new_tool
