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
