"""`reverie dream`: a short dream (rehearse -> keep verified successes -> distil
-> re-measure) raises held-out success on the tool task from the student's own
rate, with no demonstration given, and stores each kept trajectory once."""
from __future__ import annotations

import json

import pytest

from reverie.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--skill", "facts"], "unknown skill 'facts' for dream"),
    (["--simulators", "0"], "--simulators must be a positive whole number"),
    (["--episodes", "many"], "--episodes must be a positive whole number"),
    (["--retain", "1.5"], "--retain must be at least 0 and below 1"),
    (["--model", "/no/such/model"], "does not exist"),
])
def test_dream_rejects_bad_input_with_one_line_and_exit_2(argv, message, refused):
    refused(["dream", *argv, "--quiet"], message)


def test_short_dream_raises_heldout_success_and_stores_verified_trajectories_once(tmp_path, capsys):
    from actors.store import read_table
    from simulators.env import Task
    from simulators.tinyworld.tools_env import ToolsEnvironment

    code = main(["dream", "--episodes", "64", "--rounds", "1", "--steps", "32", "--lr", "3e-4", "--items", "50",
                       "--simulators", "2", "--data-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    report = json.loads(out)
    for key in ("skill", "simulators", "episodes", "success_before", "success_after", "retention_avg", "forgetting",
                "episodes_per_second", "seconds"):
        assert key in report
    assert report["skill"] == "tools" and report["simulators"] == 2 and report["episodes"] == 64
    assert report["success_before"] <= 0.10  # the student's own rate
    assert report["success_after"] >= report["success_before"] + 0.1
    assert report["forgetting"] < 0.05
    assert set(report["episodes_per_second_by_simulators"]) == {"1", "2"}
    assert "dream" in err  # the progress bar is on stderr

    rows = read_table(str(tmp_path), "trajectories").to_pylist()
    assert rows and len({r["id"] for r in rows}) == len(rows) == report["rounds"][0]["kept"]
    import msgpack

    for r in rows:
        task = Task.from_dict(msgpack.unpackb(r["extra"], raw=False)["task"])
        budget = json.loads(r["provenance"])["max_turns"]
        assert r["success"] and not r["simulated"] and r["policy_version"] == 0
        assert ToolsEnvironment(max_turns=budget).verify(task, r["messages"])  # re-checked by the verifier
