"""``reverie bench swap`` on the tiny model, briefly: every field the issue asks for is measured and printed, and
a swap under streaming load fails no request and mixes no versions.  (Speed targets are checked by running the
command on the 100M model, not here.)"""
from __future__ import annotations

import math


def test_bench_swap_reports_every_field_with_no_failed_or_mixed_response():
    from bench.swap import run_bench

    report = run_bench(params="tiny", replicas=1, concurrency=4, swaps=2, max_tokens=8, steady_seconds=3.0,
                       swap_interval=0.5, progress=lambda m: None)
    for key, kind in [("params", int), ("replicas", int), ("swaps", int), ("swap_seconds_median", float),
                      ("swap_seconds_max", float), ("requests", int), ("failed", int),
                      ("mixed_version_responses", int), ("tokens_per_second", float),
                      ("raw_vllm_tokens_per_second", float), ("serve_to_raw_ratio", float)]:
        assert isinstance(report[key], kind), (key, report[key])
    assert report["swaps"] == 2 and report["replicas"] == 1 and report["params"] > 1_000_000
    assert report["failed"] == 0 and report["steady_failed"] == 0, report.get("first_errors")
    assert report["mixed_version_responses"] == 0, report.get("first_mixed")
    assert report["checked_responses"] > 0  # every answered completion recomputed with its version's weights
    assert report["versions_seen"] >= 2 and report["requests"] > 0
    assert 0 < report["swap_seconds_median"] <= report["swap_seconds_max"]
    assert all(math.isfinite(report[k]) and report[k] > 0 for k in
               ("tokens_per_second", "raw_vllm_tokens_per_second", "serve_tokens_per_second_steady"))
    assert report["first_token_seconds_max"] >= report["first_token_seconds_median"] > 0
