"""``reverie bench rerun`` reads a run's own settings (bench/rerun.py); the rerun end to end is in test_demo.py."""
from __future__ import annotations

import json
from pathlib import Path

from bench.rerun import _demo_settings

RUNS = Path(__file__).resolve().parents[1] / "bench" / "results" / "demo-runs"


def test_a_run_recorded_before_loop_mix_is_rerun_with_the_turns_it_took_and_a_newer_one_with_its_own_mix():
    """Runs before ``loop.mix`` (2026-12-04 ab and earlier) gave feedback and dreams half the slots each; with
    today's default a plain rerun of them would silently learn by records, which they never did."""
    before = json.loads((RUNS / "2026-12-04-ab-no-spin.json").read_text())
    assert "mix" not in before["settings"]["loop"]
    loop, _ = _demo_settings(before)
    assert loop.mix == "turns" and loop.steps == before["settings"]["loop"]["steps"]
    after = json.loads((RUNS / "2026-12-04-ah-mix-by-records-repeat.json").read_text())
    assert _demo_settings(after)[0].mix == after["settings"]["loop"]["mix"] == "records"
