"""The benchmark report: every figure on docs/benchmarks.md comes from a result file, with where it was measured."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import report as bench_report
from bench.trl_sdft import summarise
from reverie.results import environment, write_result


def _run(method: str, skill: str, acc: float, retention: float, s_per_step: float, framework: str = "reverie") -> dict:
    return {"method": method, "framework": framework, "skill": skill, "lr": 1e-3, "seed": 0, "steps": 300,
            "batch_size": 32, "new_skill_acc": acc, "retention_avg": retention, "forgetting": 0.998 - retention,
            "retention_kl": 0.25, "seconds_per_step": s_per_step, "peak_rss_bytes": 3 * 2**29}


def _fixture_results(root: Path) -> Path:
    results = root / "bench" / "results"
    runs = [_run("reverie-opsd", "rule", 0.987, 0.731, 0.101), _run("trl-sdft-fkl", "rule", 0.912, 0.702, 0.404, "trl")]
    write_result(summarise(runs), results / "trl" / "summary.json")
    write_result({"params": 101_000_000, "swap_mode": "standby", "swap_seconds_median": 1.234, "swap_seconds_max": 1.5,
                  "failed": 0, "mixed_version_responses": 0, "requests": 4321, "copy_seconds_median": 0.0456,
                  "raw_vllm_tokens_per_second": 200.0, "serve_tokens_per_second_steady": 150.0,
                  "serve_to_raw_ratio": 0.75, "concurrency": 32}, results / "swap-100M-standby.json")
    write_result({"kind": "restart", "params": 101_000_000, "seconds_without_service_median": 41.5,
                  "seconds_without_service_max": 44.0, "failed": 77, "requests": 900, "copy_seconds_median": 0.0457},
                 results / "swap-100M-restart.json")
    write_result({"method": "opsd", "skill": "facts", "steps": 300, "tokens_per_second": 3987.6, "device": "cpu",
                  "new_skill_acc": 1.0, "retention_avg": 0.99}, results / "learn-cpu.json")
    return results


def test_a_result_file_is_stamped_with_the_machine_the_libraries_and_the_commit(tmp_path):
    written = write_result({"x": 1}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == written
    stamp = written["machine"]
    assert stamp["cores"] >= 1 and stamp["memory_bytes"] > 2**30 and stamp["cpu"]
    assert {"torch", "ray", "transformers"} <= set(stamp["libraries"])
    assert re.fullmatch(r"[0-9a-f]{40}", stamp["commit"])
    assert stamp == {**environment(), "commit": stamp["commit"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # written whole, no temporary left


def test_the_report_quotes_each_figure_from_its_file_with_where_it_was_measured(tmp_path):
    results = _fixture_results(tmp_path)
    page = bench_report.render(results, tmp_path / "docs" / "benchmarks.md")
    trl = page.split("## reverie beside TRL")[1].split("\n## ")[0]
    assert "| rule | 0.001 | reverie-opsd | 0 | 0.987 | 0.731 | 0.267 | 0.2500 | 0.101 | 1.50 |" in trl
    assert "| rule | 0.001 | trl-sdft-fkl | 0 | 0.912 | 0.702 |" in trl
    assert "| rule | 0.001 | yes | yes | 0.25 | yes |" in trl  # more accurate, forgets less, a quarter of the time
    assert "From `bench/results/trl/summary.json`; " in trl and f"commit {environment()['commit'][:10]}" in trl
    swap = page.split("## Hot swap")[1].split("\n## ")[0]
    assert "| swap-100M-standby | 101,000,000 | standby | 1.234 | 1.500 | 0 | 0 | 4,321 | 0.0456 |" in swap
    assert "| swap-100M-restart | 101,000,000 | restart engine | 41.500 | 44.000 | 77 | - | 900 | 0.0457 |" in swap
    assert "| learn-cpu | cpu | opsd | facts | 300 | 3988 |" in page
    # what was not measured says how to measure it; nothing is invented
    assert page.split("## Dreams")[1].split("\n## ")[0].strip() == \
        "Not measured yet: run `reverie dream --json` (or `reverie bench all`)."
    assert "## The demo\n\nNot measured yet: run `reverie demo --json`" in page


def test_a_file_from_before_the_stamp_says_its_machine_was_not_recorded(tmp_path):
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "load.json").write_text(json.dumps({"requests": 10, "failed": 0}))
    page = bench_report.render(results, tmp_path / "benchmarks.md")
    assert "From `bench/results/load.json`; the machine was not recorded" in page


def test_the_committed_benchmarks_page_is_what_the_committed_results_generate():
    """docs/benchmarks.md is never edited by hand: regenerate it with `reverie bench report`."""
    assert bench_report.DOC.read_text() == bench_report.render(bench_report.RESULTS, bench_report.DOC)


def test_the_trl_verdicts_compare_reverie_with_trls_matched_run_in_the_same_cell():
    runs = [_run("reverie-opsd", "facts", 0.9, 0.80, 0.3), _run("trl-sdft-fkl", "facts", 1.0, 0.85, 0.4, "trl"),
            _run("reverie-opsd", "rule", 1.0, 0.80, 0.1)]  # no TRL run for rule: no verdict
    (v,) = summarise(runs)["verdicts"]
    assert v["skill"] == "facts"
    assert v["accuracy_at_least_trl"] is False and v["forgetting_at_most_trl"] is False
    assert v["step_time_ratio"] == pytest.approx(0.75) and v["at_most_half_the_step_time"] is False


@pytest.mark.parametrize("argv, message", [
    (["bench", "all", "--only", "nope"], "unknown benchmark 'nope'"),
    (["bench", "all", "--only", ","], "--only must list at least one value"),
    (["bench", "report", "--results", "/nonexistent/results"], "is not a directory of result files"),
    (["bench", "trl", "--methods", "trl-sdft-magic"], "unknown method 'trl-sdft-magic'"),
    (["bench", "trl", "--skills", "juggling"], "unknown skill 'juggling'"),
    (["bench", "trl", "--lrs", "2"], "--lrs must be between 0 and 1"),
    (["bench", "trl", "--steps", "0"], "--steps must be a positive whole number"),
    (["bench", "swap", "--swap-mode", "reboot"], "--swap-mode must be one of"),
])
def test_bad_benchmark_input_is_one_line_and_exit_2(argv, message, refused):
    refused(argv, message)


def test_the_readmes_demo_table_is_what_the_latest_demo_result_generates():
    """The README's table of the latest `make demo` run is never typed: `reverie bench report` writes it from
    bench/results/demo.json."""
    readme = bench_report.README.read_text()
    assert readme.count(bench_report.README_BEGIN) == 1 and readme.count(bench_report.README_END) == 1
    assert bench_report.with_demo(readme) == readme, "regenerate it: reverie bench report"


def test_the_report_quotes_the_calc_offer_and_each_smollm2_dream_round_by_round_from_their_files(tmp_path):
    results = tmp_path / "bench" / "results"
    write_result({"items": 40, "samples": 4, "openai_tools_rendered_by_chat_template": False,
                  "variants": {"protocol": {"solved": 0.0, "solved_in_4_samples": 0.025, "called_tool": 0.05},
                               "2 examples as turns": {"solved": 0.275, "solved_in_4_samples": 0.45,
                                                       "called_tool": 1.0}}},
                 results / "eval" / "x-calc-offer.json")
    write_result({"env": "real", "success_before": 0.275, "forgetting": 0.0042, "verifier_accepts_right": 1.0,
                  "verifier_rejects_wrong": 0.97, "seconds": 1234.5,
                  "config": {"teacher_context": "same", "temperature": 0.4, "episodes": 256},
                  "rounds": [{"success": 0.5, "kept": 31, "updates": 8}, {"success": 0.625, "kept": 77, "updates": 20}]},
                 results / "dream-smollm2" / "run.json")
    page = bench_report.render(results, tmp_path / "benchmarks.md")
    offer = page.split("## How the calculator is offered")[1].split("\n## ")[0]
    assert "| 2 examples as turns | 0.275 | 0.450 | 1.00 |" in offer and "| protocol | 0.000 | 0.025 | 0.05 |" in offer
    assert "From `bench/results/eval/x-calc-offer.json`; " in offer
    dreams = page.split("## Dreams on SmolLM2")[1].split("\n## ")[0]
    assert ("| run | real | same | 0.4 | 256 | 0.275 -> 0.500 -> 0.625 | 31, 77 | 8, 20 | 0.0042 | 1.00 / 0.97 | 1234 |"
            in dreams), dreams
    assert f"commit {environment()['commit'][:10]}" in dreams
