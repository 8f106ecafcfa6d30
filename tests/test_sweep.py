"""``reverie learn --sweep``: one result file per run, a summary over seeds, the plot, and a rerun that
resumes instead of repeating."""
from __future__ import annotations

import json

import pytest

from bench.sweep import summarise, sweep


def test_a_sweep_writes_a_file_per_run_a_summary_and_a_plot_and_a_rerun_repeats_nothing(shipped_model, tmp_path):
    lines = []
    grid = {"variants": ("sft", "opsd"), "skills": ("facts",), "lrs": (1e-3,), "seeds": (1,), "steps": 2,
            "batch_size": 4}
    summary = sweep(shipped_model, tmp_path, progress=lines.append, **grid)
    files = sorted(p.name for p in tmp_path.glob("*-seed*.json"))
    assert files == ["opsd-facts-lr0.001-seed1.json", "sft-facts-lr0.001-seed1.json"]
    assert len(lines) == 2
    run = json.loads((tmp_path / "opsd-facts-lr0.001-seed1.json").read_text())
    assert run["variant"] == "opsd" and run["method"] == "opsd" and run["seed"] == 1 and run["retain"] == 0.0
    assert run["steps"] == 2 and run["retention_kl"] > 0  # two steps at lr 1e-3 move the model
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert {(r["variant"], r["retention_avg"]["n"]) for r in summary["rows"]} == {("sft", 1), ("opsd", 1)}
    assert (tmp_path / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sig = json.loads((tmp_path / "signal.json").read_text())["facts"]
    assert {"reference", "sampled"} <= set(sig) and sig["reference"][0]["completions"] > 0

    def must_not_run(*args, **kwargs):
        pytest.fail("a run whose result file exists was run again")

    assert sweep(shipped_model, tmp_path, progress=lines.append, run=must_not_run, **grid) == summary


def test_the_summary_gives_mean_and_spread_over_seeds():
    runs = [{"variant": "sft", "skill": "rule", "lr": 1e-3, "seed": s, "new_skill_acc": a, "retention_avg": r,
             "forgetting": 1 - r, "retention_kl": k, "seconds": 1.0}
            for s, a, r, k in [(0, 1.0, 0.5, 0.2), (1, 0.9, 0.7, 0.4)]]
    row = summarise(runs)["rows"][0]
    assert row["seeds"] == [0, 1]
    assert row["retention_avg"]["mean"] == pytest.approx(0.6)
    assert row["retention_avg"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert row["new_skill_acc"]["mean"] == pytest.approx(0.95)


@pytest.mark.parametrize("flags, says", [
    (["--variants", "opsd,nope"], "unknown sweep variant 'nope'"),
    (["--skills", "tools"], "unknown skill 'tools'"),
    (["--lrs", "3e-4,fast"], "--lrs must be a number"),
    (["--seeds", ","], "--seeds must list at least one value"),
])
def test_a_bad_sweep_argument_is_one_line_and_exit_2(flags, says, tmp_path, refused):
    refused(["learn", "--sweep", "--out", str(tmp_path / "o"), *flags], says)
    assert not (tmp_path / "o").exists()
