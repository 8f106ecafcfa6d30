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
    runs = [{"variant": "sft", "skill": "rule", "lr": 1e-3, "seed": s, "steps": 30, "batch_size": 8,
             "new_skill_acc": a, "retention_avg": r, "forgetting": 1 - r, "retention_kl": k, "seconds": 1.0}
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
    (["--world", "chat", "--benchmarks", "piqa,gpqa"],
     "unknown benchmark 'gpqa'"),
    (["--benchmarks", "piqa"], "--benchmarks is the chat world's"),
])
def test_a_bad_sweep_argument_is_one_line_and_exit_2(flags, says, tmp_path, refused):
    refused(["learn", "--sweep", "--out", str(tmp_path / "o"), *flags], says)
    assert not (tmp_path / "o").exists()


def test_the_summary_and_plot_cover_every_run_in_the_folder_not_only_the_last_grids(tmp_path):
    """Two sweeps into one folder (another lr, another variant, a LoRA one): the second's summary holds the
    first's cells too, and a cell never mixes runs of other lengths."""
    def fake_run(model_dir, cfg, skill, progress=False, **kwargs):
        return {"method": cfg.method, "skill": skill, "lr": cfg.lr, "seed": cfg.seed, "steps": cfg.steps,
                "batch_size": cfg.batch_size, "new_skill_acc": 0.5 + cfg.seed / 10, "retention_avg": 0.4,
                "forgetting": 0.0, "retention_kl": 0.1, "seconds": 1.0,
                "adapter": f"lora-r{cfg.lora_rank}" if cfg.lora_rank else "full"}

    common = {"skills": ("rule",), "batch_size": 4, "progress": lambda line: None, "run": fake_run,
              "world": "chat"}
    sweep("smollm2", tmp_path, variants=("sft",), lrs=(3e-5,), seeds=(0, 1), steps=2, **common)
    (tmp_path / "base-rule-100-items.json").write_text(json.dumps({"new_skill_acc": 0.0}))  # not a run
    summary = sweep("smollm2", tmp_path, variants=("sft-lora16",), lrs=(1e-4,), seeds=(0,), steps=3, **common)
    cells = {(r["variant"], r["lr"], r["steps"]): r["new_skill_acc"] for r in summary["rows"]}
    assert cells.keys() == {("sft", 3e-5, 2), ("sft-lora16", 1e-4, 3)}
    assert cells[("sft", 3e-5, 2)]["n"] == 2 and cells[("sft", 3e-5, 2)]["mean"] == pytest.approx(0.55)
    assert summary["runs"] == 3 == json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert (tmp_path / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_new_variant_is_a_config_the_learner_accepts():
    """The SFT-on-the-teacher's-replies and LoRA variants name fields LearnConfig has, with the values meant."""
    from dataclasses import replace

    from bench.sweep import VARIANTS
    from learner.config import LearnConfig

    for name, fields in VARIANTS.items():
        replace(LearnConfig(), **fields)  # an unknown field raises TypeError
    assert VARIANTS["sft-teacher-t06"] == {"method": "sft", "sft_targets": "teacher", "teacher_temperature": 0.6}
    assert VARIANTS["opsd-fkl-t06-along-lora16"]["lora_rank"] == 16 == VARIANTS["sft-lora16"]["lora_rank"]


def test_a_chat_world_sweep_runs_in_that_world_and_measures_each_skills_base_once(tmp_path):
    """``reverie learn --sweep --world chat``: every run is the chat world's, with the benchmark items asked for,
    and the runs of one skill share one measure of the base (a file in the sweep's folder); the tiny world's
    first-step signal is not computed for it."""
    calls = []

    def fake_run(model_dir, cfg, skill, progress=False, **kwargs):
        calls.append((cfg.method, skill, kwargs))
        return {"method": cfg.method, "skill": skill, "lr": cfg.lr, "seed": cfg.seed, "steps": cfg.steps,
                "batch_size": cfg.batch_size, "new_skill_acc": 0.5, "retention_avg": 0.4, "forgetting": 0.0,
                "retention_kl": 0.1, "seconds": 1.0}

    sweep("smollm2", tmp_path, variants=("sft", "opsd-fkl-along"), skills=("facts", "rule"), lrs=(3e-5,),
          seeds=(0,), steps=2, batch_size=4, progress=lambda line: None, run=fake_run, world="chat",
          benchmark_items=100)
    assert [(m, s) for m, s, _ in calls] == [("sft", "facts"), ("opsd", "facts"), ("sft", "rule"), ("opsd", "rule")]
    assert all(k["world"] == "chat" and k["benchmark_items"] == 100 for _, _, k in calls)
    assert [k["base_measure"].name for _, _, k in calls] == ["base-facts-100-items.json"] * 2 + [
        "base-rule-100-items.json"] * 2
    assert not (tmp_path / "signal.json").exists() and (tmp_path / "summary.json").exists()
    calls.clear()  # another benchmark set is another base measure
    sweep("smollm2", tmp_path, variants=("sft",), skills=("rule",), lrs=(3e-5,), seeds=(1,), steps=2, batch_size=4,
          progress=lambda line: None, run=fake_run, world="chat", benchmark_items=100, benchmarks=("piqa", "boolq"))
    assert calls[0][2]["base_measure"].name == "base-rule-100-items-piqa-boolq.json"
    assert calls[0][2]["benchmarks"] == ("piqa", "boolq")


def test_a_runs_base_measure_is_read_from_its_file_when_there_and_written_when_not(shipped_model, tmp_path,
                                                                                  monkeypatch):
    import bench.experiments as E
    from learner.config import LearnConfig

    measured = []
    real = E.measure
    monkeypatch.setattr(E, "measure", lambda *a, **k: measured.append(k.get("base") is None) or real(*a, **k))
    cfg = LearnConfig(steps=1, batch_size=4, retain=0.0)
    path = tmp_path / "base-facts.json"
    first = E.run(shipped_model, cfg, "facts", progress=False, base_measure=path)
    assert measured == [True, False] and json.loads(path.read_text())["new_skill_acc"] == first[
        "new_skill_acc_before"]
    measured.clear()
    again = E.run(shipped_model, cfg, "facts", progress=False, base_measure=path)
    assert measured == [False] and again["new_skill_acc_before"] == first["new_skill_acc_before"]


def test_a_trl_variant_runs_through_trls_runner_with_the_worlds_arguments_and_joins_the_summary(tmp_path):
    """``--variants trl-sdft-fkl`` beside reverie's: TRL's run (``bench.trl_sdft.run_one`` in a fresh process by
    default) gets the same skill, lr, seed, steps, batch size, world and shared base measure, and its report is a
    run of the folder like the others."""
    calls = []

    def report(variant, skill, lr, seed, steps, batch):
        return {"skill": skill, "lr": lr, "seed": seed, "steps": steps, "batch_size": batch, "new_skill_acc": 0.5,
                "retention_avg": 0.4, "forgetting": 0.0, "retention_kl": 0.1, "seconds": 1.0}

    def fake_trl(variant, skill, lr, seed, steps, batch_size, model_dir, **where):
        calls.append((variant, where))
        return {"method": variant, **report(variant, skill, lr, seed, steps, batch_size)}

    def fake_run(model_dir, cfg, skill, progress=False, **where):
        return {"method": cfg.method, **report(None, skill, cfg.lr, cfg.seed, cfg.steps, cfg.batch_size)}

    summary = sweep("smollm2", tmp_path, variants=("sft", "trl-sdft-fkl"), skills=("rule",), lrs=(3e-4,),
                    seeds=(0,), steps=2, batch_size=4, progress=lambda line: None, run=fake_run, trl=fake_trl,
                    world="chat", benchmark_items=50)
    assert [v for v, _ in calls] == ["trl-sdft-fkl"]
    assert calls[0][1] == {"world": "chat", "benchmark_items": 50,
                           "base_measure": tmp_path / "base-rule-50-items.json"}
    assert json.loads((tmp_path / "trl-sdft-fkl-rule-lr0.0003-seed0.json").read_text())["variant"] == "trl-sdft-fkl"
    assert {r["variant"] for r in summary["rows"]} == {"sft", "trl-sdft-fkl"}


def test_each_variant_is_judged_against_sft_in_its_own_cell_at_equal_accuracy():
    """Issue 38's comparison, cell by cell: accuracies equal within 0.02, SFT forgetting more than 0.01 there,
    the variant's mean benchmark drop below SFT's and its gold log-probability shift above SFT's."""
    def run(variant, seed, acc, drop, shift, lr=3e-4):
        return {"variant": variant, "skill": "rule", "lr": lr, "seed": seed, "steps": 30, "batch_size": 8,
                "new_skill_acc": acc, "retention_avg": 0.45 - drop, "forgetting": drop, "retention_kl": 0.5,
                "seconds": 1.0, "retention_gold_logprob_shift_avg": shift}

    runs = [run("sft", 0, 1.0, 0.03, -0.05), run("sft", 1, 1.0, 0.01, -0.03),
            run("opsd-fkl-t06-along", 0, 0.99, 0.01, -0.01), run("opsd-fkl-t06-along", 1, 0.97, 0.0, -0.01),
            run("sft-lora16", 0, 0.9, 0.0, 0.0), run("opsd-fkl-t06-along", 0, 1.0, 0.0, 0.0, lr=1e-4)]
    verdicts = {v["variant"]: v for v in summarise(runs)["versus_sft"]}
    assert set(verdicts) == {"opsd-fkl-t06-along", "sft-lora16"}  # the 1e-4 cell has no SFT to compare with
    opsd = verdicts["opsd-fkl-t06-along"]
    assert opsd["equal_accuracy"] and opsd["sft_forgets"] and opsd["forgets_less"] and opsd["shift_less"]
    assert "margin" not in opsd  # the runs did not measure it
    with_margin = summarise([*runs, {**run("sft", 2, 1.0, 0.02, -0.04), "retention_norm_margin_shift_avg": -0.01}])
    sft_row = next(r for r in with_margin["rows"] if r["variant"] == "sft")
    assert sft_row["retention_norm_margin_shift_avg"] == {"mean": -0.01, "sd": 0.0, "n": 1}  # only the run with it
    assert opsd["drop"] == pytest.approx(0.005) and opsd["sft_drop"] == pytest.approx(0.02)
    assert opsd["seeds"] == 2 == opsd["sft_seeds"]
    assert not verdicts["sft-lora16"]["equal_accuracy"]  # it learnt less: no verdict on forgetting holds
