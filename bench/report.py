"""``docs/benchmarks.md``, generated from the result files and nothing else (``reverie bench report``).

Every table here is read from a JSON file that a benchmark command wrote under ``bench/results/``; each
section names its files and the machine, libraries and commit they were measured with (the stamp of
``reverie/results.py``; files from before the stamp say so).  A section whose files are missing says how
to make them.  The output depends only on the files: regenerating from the same results gives the same
page, which a test checks against the committed one.  The forgetting plot (every sweep run, with TRL's
runs in their own colour) is drawn into ``bench/results/plots/``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from reverie.files import read_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
PLOTS = "plots"


def _load(path: Path) -> dict | None:
    """A result file's report; None when it is missing or not whole (its section then says so)."""
    try:
        return read_json(path)
    except ValueError:
        return None


def _reports(files: list[Path]) -> list[tuple[Path, dict]]:
    """Each whole result file of ``files`` with its report (a missing or broken one is left out)."""
    return [(f, r) for f in files if (r := _load(f))]


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def stamp(report: dict) -> str:
    """One line: where a result was measured (the ``machine`` stamp), or that it was not recorded."""
    m = report.get("machine")
    if not m:
        return "the machine was not recorded (written before result files were stamped)"
    parts = [f"{m.get('cpu') or 'CPU ?'}, {m.get('cores', '?')} cores"]
    if m.get("memory_bytes"):
        parts.append(f"{m['memory_bytes'] / 2**30:.0f} GiB")
    parts.append(", ".join(m["gpus"]) if m.get("gpus") else "no GPU")
    if m.get("libraries"):
        parts.append(" ".join(f"{k} {v}" for k, v in sorted(m["libraries"].items())))
    if m.get("commit"):
        parts.append(f"commit {m['commit'][:10]}")
    return "; ".join(parts)


def shown(results: Path, f: Path) -> str:
    """How the page names a result file: from the project's root (``bench/results/...``); a folder outside the
    project is shown as ``bench/results``, so the page depends only on the files."""
    try:
        where = results.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        where = "bench/results"
    return f"{where}/{f.relative_to(results).as_posix()}"


def _source(results: Path, files: list[Path], report: dict) -> str:
    """Where a table came from: its files, and the machine they were measured on."""
    return "From " + ", ".join(f"`{shown(results, f)}`" for f in files) + "; " + stamp(report) + "."


# --------------------------------------------------------------------------- sections
# Each takes the results folder and returns its lines (None: its files are missing).


def trl_table(summary: dict) -> str:
    """The side-by-side as a Markdown table (also what ``reverie bench trl`` prints)."""
    rows = [[r["skill"], f"{r['lr']:g}", r["method"], ",".join(map(str, r["seeds"])),
             _f(r["new_skill_acc"]["mean"]), _f(r["retention_avg"]["mean"]), _f(r["forgetting"]["mean"]),
             _f(r["retention_kl"]["mean"], 4), _f(r["seconds_per_step"]["mean"]),
             _f(r["peak_rss_bytes"]["mean"] / 2**30, 2)] for r in summary["rows"]]
    lines = _table(["skill", "lr", "method", "seeds", "new skill", "retention", "forgetting", "KL to base",
                    "s/step", "peak GiB"], rows)
    if summary.get("verdicts"):
        lines += ["", "Against TRL's matched run (`trl-sdft-fkl`), reverie's default OPSD (`reverie-opsd`):", ""]
        lines += _table(["skill", "lr", "accuracy at least TRL's", "forgetting at most TRL's",
                         "step time / TRL's", "at most half"],
                        [[v["skill"], f"{v['lr']:g}", _f(v["accuracy_at_least_trl"]), _f(v["forgetting_at_most_trl"]),
                          _f(v["step_time_ratio"], 2), _f(v["at_most_half_the_step_time"])] for v in summary["verdicts"]])
    return "\n".join(lines)


def section_trl(results: Path) -> list[str] | None:
    f = results / "trl" / "summary.json"
    summary = _load(f)
    if summary is None:
        return None
    steps = {r["steps"] for r in summary["rows"]}
    batch = {r["batch_size"] for r in summary["rows"]}
    return [f"Same shipped model, same lessons in the same order, no replay, {'/'.join(map(str, sorted(steps)))} "
            f"optimiser steps of {'/'.join(map(str, sorted(batch)))} lessons, AdamW at a constant learning rate, "
            f"float32; each run in a fresh process (peak resident memory is the process's). TRL {summary.get('trl_version', '?')}: "
            "`trl-sdft-fkl` is `SDFTTrainer` with `distillation_mode=full_logits`, `distillation_alpha=0` (forward KL), "
            "the frozen `base` teacher, the teacher state's prompt token for token; `trl-sdft-default` keeps TRL's "
            "loss defaults (student top-100, no tail, alpha 0.5: a JSD). `reverie-opsd` is reverie's default (forward "
            "KL, teacher at temperature 0.5); `reverie-opsd-t1` the objective TRL's matched run computes. "
            "Accuracies are teacher-forced on held-out items (`simulators/tinyworld/experiment.py::measure`).",
            "", trl_table(summary), "", _source(results, [f], summary)]


def forgetting_plot(results: Path) -> Path | None:
    """Every sweep run (a colour per variant) and every TRL-bench run (TRL's in their own colours), new-skill
    accuracy against retention, a panel per skill and learning rate; None when there are no runs."""
    from bench.sweep import plot

    runs = [r for p in sorted((results / "forgetting").glob("*-seed*.json")) if (r := _load(p))]
    for p in sorted((results / "trl").glob("*-seed*.json")):
        r = _load(p)
        if r and r.get("framework") == "trl":
            runs.append({**r, "variant": r["method"]})
    if not runs:
        return None
    out = results / PLOTS / "forgetting.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, out)
    return out


def section_forgetting(results: Path) -> list[str] | None:
    f = results / "forgetting" / "summary.json"
    summary = _load(f)
    if summary is None:
        return None
    rows = [[r["skill"], f"{r['lr']:g}", r["variant"], r["seeds"] and len(r["seeds"]),
             f"{_f(r['new_skill_acc']['mean'])}", f"{_f(r['retention_avg']['mean'])} ± {_f(r['retention_avg']['sd'])}",
             _f(r["retention_kl"]["mean"], 4)] for r in summary["rows"]]
    lines = [f"`reverie learn --sweep`: no replay, {summary.get('steps')} steps of {summary.get('batch_size')} "
             f"lessons; mean ± sd over seeds. reverie's OPSD defaults are the variant `{summary.get('defaults')}`.", ""]
    lines += _table(["skill", "lr", "variant", "seeds", "new skill", "retention", "KL to base"], rows)
    lines += ["", _source(results, [f], summary)]
    if (results / PLOTS / "forgetting.png").exists():
        lines += ["", f"![new-skill accuracy against retention]({{results}}/{PLOTS}/forgetting.png)", "",
                  "A point per run: the sweep's variants and, in their own colours, TRL's runs from "
                  "`bench/results/trl/` (same lessons, steps and batch size; seed 0 only)."]
    return lines


SMOLLM2_FORGETTING = "forgetting-smollm2-paired"  # the chat world's grid on SmolLM2, paired benchmark figures


def _ms(cell: dict | None, digits: int = 3, runs: int | None = None) -> str:
    """A summary cell as mean ± sd (the mean alone from one seed), with how many runs measured it where fewer
    than ``runs`` did; - where none did."""
    if cell is None:
        return "-"
    return (_f(cell["mean"], digits) + (f" ± {_f(cell['sd'], digits)}" if cell["n"] > 1 else "")
            + (f" (n={cell['n']})" if runs is not None and cell["n"] < runs else ""))


def section_forgetting_smollm2(results: Path) -> list[str] | None:
    f = results / SMOLLM2_FORGETTING / "summary.json"
    summary = _load(f)
    if summary is None:
        return None
    rows = [[r["skill"], f"{r['lr']:g}", r["variant"], r.get("adapter", "full"), len(r["seeds"]),
             _ms(r["new_skill_acc"]), _ms(r["forgetting"]),
             *(_ms(r.get(k), d, len(r["seeds"])) for k, d in (("retention_norm_margin_shift_avg", 4),
                                                              ("retention_gold_logprob_shift_avg", 3),
                                                              ("retention_choice_kl_avg", 4))),
             _ms(r["retention_kl"]), _ms(r.get("seconds_per_step"), 1, len(r["seeds"]))]
            for r in summary["rows"]]
    lines = ["`reverie learn --model smollm2-135m-instruct --world chat --sweep`: the chat world's `facts` and `rule` "
             "(`simulators/chatworld/experiment.py`), no replay, the steps and batch size of each row, mean ± sd over "
             "seeds. *drop*: the fall of the average acc_norm over ARC-Easy, ARC-Challenge, HellaSwag and PIQA (100 "
             "items each; one item is 0.0025 of the average). *margin shift*: the mean change, item by item, of the "
             "right choice's log-likelihood per character less the best other choice's, which acc_norm counts when "
             "above 0 (below 0: forgetting; the first runs lack it: n counts those with it). *gold shift*: the mean change of the "
             "right choice's log-probability among an item's choices (the softmax of their log-likelihoods), paired "
             "likewise. *choice "
             "KL*: the mean KL(base ‖ tuned) of each item's choice distribution. *KL to base*: per token on greedy "
             "replies to 16 unseen chat prompts. Variants: `bench/sweep.py`.", ""]
    lines += _table(["skill", "lr", "variant", "adapter", "seeds", "held-out", "drop", "margin shift", "gold shift",
                     "choice KL", "KL to base", "s/step"], rows)
    verdicts = summary.get("versus_sft") or []
    if verdicts:
        lines += ["", "Each variant against SFT on the references in its cell (equal accuracy: within 0.02; SFT "
                      "forgets: its drop is above 0.01):", ""]
        lines += _table(["skill", "lr", "variant", "accuracy gap", "SFT forgets", "drop (SFT's)", "forgets less",
                         "margin shift (SFT's)", "gold shift (SFT's)"],
                        [[v["skill"], f"{v['lr']:g}", v["variant"], _f(v["accuracy_gap"]), _f(v["sft_forgets"]),
                          f"{_f(v['drop'])} ({_f(v['sft_drop'])})", _f(v["forgets_less"]),
                          *(f"{_f(v[k], 4)} ({_f(v['sft_' + k], 4)})" if k in v else "-" for k in ("margin", "shift"))]
                         for v in verdicts])
    lines += ["", _source(results, [f], summary)]
    if (results / SMOLLM2_FORGETTING / "forgetting.png").exists():
        lines += ["", f"![held-out accuracy against benchmark retention]({{results}}/{SMOLLM2_FORGETTING}/"
                      "forgetting.png)", "", "A point per run, a colour per variant, a triangle for LoRA."]
    return lines


SMOLLM2_SEQUENCE = "sequence-smollm2"  # the chat world's stages taught in a row on SmolLM2


def section_sequence(results: Path) -> list[str] | None:
    f = results / SMOLLM2_SEQUENCE / "summary.json"
    summary = _load(f)
    if summary is None or not summary.get("methods"):
        return None
    stages, methods = summary["stages"], summary["methods"]
    t = summary["targets"]
    lines = ["`reverie bench sequence`: SmolLM2-135M-Instruct taught the chat world's stages one after another "
             "(`simulators/chatworld/sequence.py`: 8 new facts, then one more rule, alternating; the rules in force "
             "add up), each learnt as the loop learns a cycle (`bench/sequence.py`), from the model the stage "
             "before left. Each stage's held-out accuracy right after it was taught, then after the last stage, "
             "and the share kept (target: every stage at least "
             f"{t['kept']:g}); the base's accuracy on it beside.", ""]
    lines += _table(["stage", "base", *(f"{m}: right after" for m in methods), *(f"{m}: after the last" for m in methods),
                     *(f"{m}: kept" for m in methods)],
                    [[name, _f(summary["base"]["accuracy"].get(name)),
                      *(_f(m["right_after"].get(name)) for m in methods.values()),
                      *(_f(m["after_last"].get(name)) for m in methods.values()),
                      *(_f(m["kept"].get(name)) for m in methods.values())] for name in stages])
    lines += ["", f"The benchmarks' average drop since the base after each stage (target after the last: at most "
                  f"{t['max_drop']:g}), KL(base ‖ tuned) per token on 16 unseen chat prompts, and whether the loop's "
                  "gate would have passed the stage (`bench.sequence.gate`):", ""]
    width = max(m["stages_done"] for m in methods.values())
    lines += _table(["after stage", *(f"{m}: drop" for m in methods), *(f"{m}: KL to base" for m in methods),
                     *(f"{m}: gate" for m in methods)],
                    [[stages[i], *(_f(m["drop_by_stage"][i]) if i < m["stages_done"] else "-" for m in methods.values()),
                      *(_f(m["kl_by_stage"][i]) if i < m["stages_done"] else "-" for m in methods.values()),
                      *(_f(m["gate_passes"][i]) if i < m["stages_done"] else "-" for m in methods.values())]
                     for i in range(width)])
    lines += ["", *_table(["method", "least kept", "kept target met", "final drop", "drop target met", "seconds"],
                          [[k, _f(m["min_kept"]), _f(m["kept_met"]), _f(m["final_drop"]), _f(m["drop_met"]),
                            _f(m["seconds"], 0)] for k, m in methods.items()])]
    lines += ["", _source(results, [f], summary)]
    if (results / SMOLLM2_SEQUENCE / "sequence.png").exists():
        lines += ["", f"![each stage's accuracy after every stage]({{results}}/{SMOLLM2_SEQUENCE}/sequence.png)"]
    return lines


def section_swap(results: Path) -> list[str] | None:
    files = sorted(results.glob("swap*.json"))
    reports = _reports(files)
    if not reports:
        return None
    rows = []
    for f, r in reports:
        if r.get("kind") == "restart":
            failed = _f(r.get("failed")) + (f" ({_f(r['refused'])} refused)" if "refused" in r else "")
            rows.append([f.stem, _f(r.get("params")), "restart engine", _f(r.get("seconds_without_service_median")),
                         _f(r.get("seconds_without_service_max")), failed, "-", _f(r.get("requests")),
                         _f(r.get("copy_seconds_median"), 4)])
        else:
            rows.append([f.stem, _f(r.get("params")), r.get("swap_mode"), _f(r.get("swap_seconds_median")),
                         _f(r.get("swap_seconds_max")), _f(r.get("failed")), _f(r.get("mixed_version_responses")),
                         _f(r.get("requests")), _f(r.get("copy_seconds_median"), 4)])
    lines = _table(["file", "parameters", "swap", "median s", "max s", "failed", "mixed", "requests",
                    "copy once s"], rows)
    lines += ["", "`median s`/`max s`: a hot swap's wall time (or, for a restart, the seconds with no server "
              "answering, from the old server's last token to the new server's first); `copy once s`: copying the same bytes once "
              "in memory, in the same run. A restart's `failed` counts the streams it cut and the attempts refused "
              "while no server listened (each client retries after 1 s)."]
    for f, r in reports:
        lines.append(f"- `{shown(results, f)}`: " + stamp(r) + ".")
    return lines


def section_transport(results: Path) -> list[str] | None:
    f = results / "transport.json"
    r = _load(f)
    if r is None:
        return None
    rows = [[setting.replace("_", " "), transport, _f(x.get("replica_nodes")), _f(x.get("swaps")),
             _f(x.get("swap_seconds_median")), _f(x.get("install_seconds_median")),
             _f(x.get("receive_seconds_median")), _f(x.get("load_seconds_median")), _f(x.get("checksums_match"))]
            for setting in ("one_node", "two_nodes") for transport, x in (r.get(setting) or {}).items()]
    lines = _table(["setting", "transport", "replica nodes", "swaps", "median s", "install s", "receive s",
                    "load s", "checksums match"], rows)
    return lines + ["", f"{_f(r.get('params'))} parameters ({_f(r.get('weight_bytes'))} bytes; copying them once in "
                        f"memory: {_f(r.get('copy_seconds_median'), 4)} s), two replicas, no client load. `receive s`: "
                        "the slowest replica's fetch into its node's shared memory; `load s`: its engine's reload, "
                        "checksum included. Two nodes are simulated on this machine (`ray.cluster_utils.Cluster`).",
                    "", _source(results, [f], r)]


def section_serving(results: Path) -> list[str] | None:
    reports = [(f, r) for f in sorted(results.glob("swap*.json")) if (r := _load(f)) and r.get("raw_vllm_tokens_per_second")]
    if not reports:
        return None
    rows = [[f.stem, _f(r.get("params")), _f(r.get("concurrency")), _f(r["serve_tokens_per_second_steady"], 1),
             _f(r["raw_vllm_tokens_per_second"], 1), _f(r["serve_to_raw_ratio"], 2)] for f, r in reports]
    return _table(["file", "parameters", "clients", "Serve tok/s", "raw vLLM tok/s", "ratio"], rows) + [
        "", "Streaming completions through the whole HTTP API against a bare vLLM engine with the same arguments "
            "in one process, measured in the same run."]


def section_load(results: Path) -> list[str] | None:
    f = results / "load.json"
    r = _load(f)
    if r is None:
        return None
    keys = ("concurrency", "seconds", "requests", "failed", "p50_ms", "p99_ms", "swaps", "swap_failures",
            "acknowledged", "recorded", "lost_records", "duplicate_records", "mixed_version_responses")
    return _table(list(keys), [[_f(r.get(k), 1) for k in keys]]) + ["", _source(results, [f], r)]


def section_cycle(results: Path) -> list[str] | None:
    f = results / "cycle.json"
    r = _load(f)
    if r is None:
        return None
    steps = r.get("steps") or {}
    rows = [["feedback to served (s)", _f(r.get("feedback_to_served_seconds"), 1)],
            *[[f"  {k} (s)", _f(v, 1)] for k, v in steps.items()],
            ["rule accuracy through the API", f"{_f(r.get('api_rule_accuracy_before'))} -> {_f(r.get('api_rule_accuracy_after'))}"],
            ["retention through the API", f"{_f(r.get('api_retention_avg_before'))} -> {_f(r.get('api_retention_avg_after'))}"],
            ["failed requests", _f(r.get("failed_requests"))], ["peak memory (GiB)", _f(r.get("peak_rss_gib"), 2)]]
    return _table(["", "value"], rows) + ["", _source(results, [f], r)]


def section_learner(results: Path) -> list[str] | None:
    files = sorted(results.glob("learn*.json"))
    reports = _reports(files)
    if not reports:
        return None
    rows = [[f.stem, r.get("device", "cpu"), r.get("method"), r.get("skill"), _f(r.get("steps")),
             _f(r.get("tokens_per_second"), 0), _f(r.get("new_skill_acc")), _f(r.get("retention_avg"))]
            for f, r in reports]
    lines = _table(["file", "device", "method", "skill", "steps", "tokens/s", "new skill", "retention"], rows)
    return lines + [""] + [f"- `{shown(results, f)}`: " + stamp(r) + "." for f, r in reports]


def section_dreams(results: Path) -> list[str] | None:
    files = sorted((results / "dream").glob("*.json"))
    reports = _reports(files)
    if not reports:
        return None
    rows = []
    for f, r in reports:
        by = r.get("episodes_per_second_by_simulators") or {}
        rows.append([f.stem, r.get("env"), r.get("simulator") or "-", _f(r.get("simulators")),
                     f"{_f(r.get('success_before'))} -> {_f(r.get('success_after'))}", _f(r.get("forgetting"), 4),
                     _f(r.get("agreement")), ", ".join(f"{n}: {v:.1f}" for n, v in by.items()) or "-",
                     _f(r.get("seconds"), 0)])
    lines = _table(["file", "env", "simulator", "simulators", "held-out success", "forgetting", "agreement",
                    "episodes/s by simulators", "seconds"], rows)
    return lines + [""] + [f"- `{shown(results, f)}`: " + stamp(r) + "." for f, r in reports]


def section_calc_offer(results: Path) -> list[str] | None:
    files = sorted((results / "eval").glob("*calc-offer*.json"))
    reports = _reports(files)
    if not reports:
        return None
    lines = []
    for f, r in reports:
        n = r.get("samples")
        rows = [[name, _f(v.get("solved")), _f(v.get(f"solved_in_{n}_samples")), _f(v.get("called_tool"), 2)]
                for name, v in r["variants"].items()]
        lines += _table(["offered as", "solved, greedy", f"solved in any of {n} samples", "episodes that called it"],
                        rows)
        lines += ["", f"{_f(r.get('items'))} held-out problems; the chat template renders OpenAI `tools`: "
                      f"{_f(r.get('openai_tools_rendered_by_chat_template'))}.", "", _source(results, [f], r), ""]
    return lines[:-1]


def section_dreams_smollm2(results: Path) -> list[str] | None:
    files = sorted((results / "dream-smollm2").glob("*.json"))
    reports = [(f, r) for f, r in _reports(files) if "rounds" in r]
    if not reports:
        return None
    rows = []
    for f, r in reports:
        cfg, rounds = r.get("config", {}), r["rounds"]
        rows.append([f.stem, r.get("env"), cfg.get("teacher_context", "other"), _f(cfg.get("temperature", 1.0), 1),
                     _f(cfg.get("episodes")),
                     " -> ".join([_f(r.get("success_before"))] + [_f(x.get("success")) for x in rounds]),
                     ", ".join(_f(x.get("kept")) for x in rounds),
                     ", ".join(_f(x.get("updates")) if "updates" in x else "-" for x in rounds),
                     _f(r.get("forgetting"), 4),
                     f"{_f(r.get('verifier_accepts_right'), 2)} / {_f(r.get('verifier_rejects_wrong'), 2)}",
                     _f(r.get("seconds"), 0)])
    lines = _table(["file", "env", "teacher shown", "temperature", "episodes a round", "held-out success by round",
                    "kept by round", "updates by round", "forgetting", "verifier: accepts right / rejects wrong",
                    "seconds"], rows)
    return lines + [""] + [f"- `{shown(results, f)}`: " + stamp(r) + "." for f, r in reports]


def section_demo(results: Path) -> list[str] | None:
    f = results / "demo.json"
    r = _load(f)
    if r is None:
        return None
    fams = sorted((r.get("api_after") or {}).get("new_skills", {}))
    rows = [[v["version"], v["status"], *[_f((v.get("new_skills") or {}).get(k)) for k in fams],
             _f(v.get("retention_avg"))] for v in r["versions"]]
    lines = _table(["version", "status", *fams, "retention"], rows)
    lines += ["", f"Swaps {r.get('swaps')}, requests {_f(r.get('requests'))}, failed {_f(r.get('failed_requests'))}, "
                  f"{_f(r.get('seconds'), 0)} s; every target met: {_f(r.get('met'))}.", "",
              _source(results, [f], r)]
    return lines


SECTIONS: list[tuple[str, Callable[[Path], list[str] | None], str]] = [
    ("reverie beside TRL's self-distillation trainer", section_trl, "reverie bench trl"),
    ("Forgetting: OPSD variants, SFT and TRL", section_forgetting, "reverie learn --sweep"),
    ("Forgetting on SmolLM2-135M-Instruct: OPSD, SFT, LoRA and TRL", section_forgetting_smollm2,
     "reverie learn --model smollm2-135m-instruct --world chat --sweep --out bench/results/" + SMOLLM2_FORGETTING),
    ("Many lessons in a row on SmolLM2-135M-Instruct", section_sequence,
     "reverie bench sequence --out bench/results/" + SMOLLM2_SEQUENCE),
    ("Hot swap", section_swap, "reverie bench swap"),
    ("Weight transports, one node and two", section_transport, "reverie bench transport"),
    ("Serving beside raw vLLM", section_serving, "reverie bench swap"),
    ("Many clients while versions are swapped", section_load, "reverie bench load"),
    ("One learning cycle, feedback to served", section_cycle, "reverie bench cycle"),
    ("Learner throughput", section_learner, "reverie learn --json"),
    ("Dreams", section_dreams, "reverie dream --json"),
    ("How the calculator is offered to SmolLM2-135M-Instruct", section_calc_offer,
     "reverie bench calc-offer --out bench/results/eval/<date>-smollm2-135m-instruct-calc-offer.json"),
    ("Dreams on SmolLM2-135M-Instruct: calc in the real environment", section_dreams_smollm2,
     "reverie dream --model smollm2-135m-instruct --world chat --skill calc --out bench/results/dream-smollm2/<name>.json"),
    ("The demo", section_demo, "reverie demo --json"),
]


def render(results: Path = RESULTS, doc: Path = DOC) -> str:
    """The page, from the files under ``results`` alone (``doc``: where it goes, for its links)."""
    lines = ["# Benchmarks", "",
             "Generated by `reverie bench report` (also the last step of `reverie bench all`) from the result files "
             "under `bench/results/`; do not edit by hand. Every figure below is read from the file named under its "
             "table, with the machine it was measured on. The machines here are noisy: compare figures measured in "
             "one run (one file) rather than across files.", ""]
    for title, section, command in SECTIONS:
        lines += [f"## {title}", ""]
        body = section(results)
        lines += body if body is not None else [f"Not measured yet: run `{command}` (or `reverie bench all`)."]
        lines.append("")
    link = Path(os.path.relpath(results.resolve(), doc.resolve().parent)).as_posix()
    return "\n".join(lines).rstrip().replace("{results}", link) + "\n"


README = ROOT / "README.md"
README_BEGIN = "<!-- the demo's latest run: generated by `reverie bench report` from bench/results/demo.json -->"
README_END = "<!-- end of the demo's latest run -->"


def with_demo(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with the part between the demo's markers made the latest demo run's table (``section_demo``)."""
    start, end = readme.find(README_BEGIN), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_BEGIN!r} ... {README_END!r} block")
    body = section_demo(results) or ["Not measured yet: run `make demo`."]
    return f"{readme[:start]}{README_BEGIN}\n" + "\n".join(body) + f"\n{readme[end:]}"


def write(results: Path = RESULTS, doc: Path = DOC, plots: bool = True) -> Path:
    """Draw the plots from the results, then write ``doc``, and from the project's own results the README's demo
    table (each atomically)."""
    from reverie.files import atomic_write_text

    if plots:
        forgetting_plot(results)
    atomic_write_text(doc, render(results, doc))
    if results.resolve() == RESULTS.resolve() and README.exists():
        atomic_write_text(README, with_demo(README.read_text(), results))
    return doc
