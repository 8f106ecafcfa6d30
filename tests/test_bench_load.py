"""``reverie bench load``, briefly: clients through the real API while versions are swapped; the command prints
one JSON object with every field the issue asks for, writes it to its result file, and on this machine no
request fails, no answered interaction is missing from the store or stored twice, and every completion's
log-probs fit the weights of the version stamped on it.  (The full run's numbers come from the command.)"""
from __future__ import annotations

import json

from reverie.cli import main


def test_bench_load_loses_nothing_duplicates_nothing_mixes_nothing_and_writes_its_result(tmp_path, capsys):
    out = tmp_path / "load.json"
    # --swaps: on a slow machine a swap takes longer than the pause between swaps; the load goes on until two
    # swaps are done (with "--seconds 20 --swap-every 6" alone, a CI machine once got one swap in).
    assert main(["bench", "load", "--concurrency", "8", "--seconds", "8", "--swap-every", "3", "--swaps", "2",
                 "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == report
    for key in ("requests", "failed", "p50_ms", "p99_ms", "swaps", "acknowledged", "recorded", "lost_records",
                "duplicate_records", "mixed_version_responses", "checked_responses"):
        assert key in report, key
    assert report["swaps"] >= 2 and report["swap_failures"] == 0, report.get("first_swap_errors")
    assert report["failed"] == 0, report.get("first_errors")
    assert report["acknowledged"] == report["requests"] > 0
    assert report["lost_records"] == 0 and report["duplicate_records"] == 0
    assert report["recorded"] == report["acknowledged"]
    assert report["checked_responses"] > 0 and report["mixed_version_responses"] == 0
    assert 0 < report["p50_ms"] <= report["p99_ms"]


def test_bench_load_refuses_bad_numbers_with_one_line(refused):
    refused(["bench", "load", "--concurrency", "0"], "--concurrency")
    refused(["bench", "load", "--seconds", "soon"], "--seconds")
    refused(["bench", "load", "--swaps", "-1"], "--swaps")
