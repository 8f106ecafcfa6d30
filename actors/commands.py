"""The ``reverie demo`` command (wired into ``reverie.cli`` by ``register``)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys


def cmd_demo(args: argparse.Namespace) -> int:
    from actors.demo import prepare_out, run_demo

    out = prepare_out(args.out)  # an unwritable --out is one line and exit 2, before anything starts

    def progress(msg: str) -> None:
        print(f"reverie: {msg}" if "\n" not in msg else msg, flush=True)

    if args.json:
        # Ray's notices and the progress go to stderr; stdout's last line is the one JSON object.
        with contextlib.redirect_stdout(sys.stderr):
            report = run_demo(out, quick=args.quick, progress=progress)
        keys = ("versions", "api_before", "api_after", "swaps", "failed_requests", "seconds")
        rest = {k: v for k, v in report.items() if k not in keys and k != "log"}  # the log is in report.json
        print(json.dumps({**{k: report[k] for k in keys}, **rest}))
    else:
        run_demo(out, quick=args.quick, progress=progress)
    return 0


def register(subparsers) -> None:
    """Add ``demo`` to ``reverie``'s subcommands."""
    from actors.demo import DEFAULT_OUT

    d = subparsers.add_parser(
        "demo", help="the product doing its job: serve the tiny-world model with the loop on, let scripted users "
                     "talk to it and teach it through the API while it learns, is gated, approved and hot-swapped",
        description="Starts an embedded Ray, serves the shipped tiny-world model with the learning loop on "
                    "(approval required), and plays a population of scripted users against the public HTTP API "
                    "while the loop runs; a scripted reviewer approves candidates that pass the gate, and one "
                    "deliberately damaged candidate is rejected.  Prints progress, a table per version, and "
                    "writes report.json and report.png into --out.")
    d.add_argument("--quick", action="store_true", help="a shortened run (fewer users, items, learner steps; no "
                   "dreams) that still takes every path: the test's")
    d.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="output folder for report.json, report.png and the run's experience (default %(default)s)")
    d.add_argument("--json", action="store_true", help="print the report as one JSON object, the last line of stdout")
    d.set_defaults(func=cmd_demo)


def cmd_bench_trl(args: argparse.Namespace) -> int:
    from bench.experiments import LEARNABLE
    from bench.trl_sdft import METHODS, compare
    from reverie import args as check
    from reverie.errors import check_model_dir, parse_seed

    model = check_model_dir(args.model)
    out = check.out_folder(args.out)
    summary = compare(model, out, methods=check.listed(args.methods, "--methods", check.known("method", METHODS)),
                      skills=check.listed(args.skills, "--skills", check.known("skill", LEARNABLE)),
                      lrs=check.listed(args.lrs, "--lrs", lambda t: check.LEARNING_RATE.parse(t, "--lrs")),
                      seeds=check.listed(args.seeds, "--seeds", parse_seed),
                      steps=check.positive(args.steps, "--steps"), batch_size=check.positive(args.batch_size, "--batch-size"),
                      progress=lambda line: print(f"reverie: {line}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary))
    else:
        from bench.report import trl_table

        print(trl_table(summary))
    return 0


def cmd_bench_all(args: argparse.Namespace) -> int:
    from bench.all import benches, run_all
    from reverie import args as check

    out = check.out_folder(args.out or ("bench/results-quick" if args.quick else "bench/results"))
    names = [b.name for b in benches(args.quick)]
    only = check.listed(args.only, "--only", check.known("benchmark", names)) if args.only is not None else None
    summary = run_all(out, quick=args.quick, only=only,
                      progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    print(json.dumps(summary) if args.json else f"{sum(b['ok'] for b in summary['benchmarks'].values())} of "
          f"{len(summary['benchmarks'])} benchmarks done in {summary['seconds']:.0f} s; report: {summary['report']}")
    return 0 if all(b["ok"] for b in summary["benchmarks"].values()) else 1


def cmd_bench_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench import report as bench_report
    from reverie.errors import ReverieError

    results = Path(args.results)
    if not results.is_dir():
        raise ReverieError(f"--results {str(results)!r} is not a directory of result files")
    doc = Path(args.out) if args.out else (bench_report.DOC if results.resolve() == bench_report.RESULTS.resolve()
                                           else results / "benchmarks.md")
    if doc.exists() and doc.is_dir():
        raise ReverieError(f"--out {str(doc)!r} is a directory")
    print(bench_report.write(results, doc, plots=not args.no_plots))
    return 0


def cmd_bench_rerun(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.rerun import parse_settings, rerun
    from reverie import args as check

    settings = parse_settings(args.set or [])
    cycle = check.positive(args.cycle, "--cycle")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        from reverie.errors import ReverieError

        raise ReverieError(f"--out {str(out)!r} is a directory; give a file name")
    result = rerun(args.run, cycle, settings, progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    if out is not None:
        from reverie.results import write_result

        result = write_result(result, out)
    if args.json:
        print(json.dumps(result))
    else:
        for side in ("recorded", "rerun"):
            o = result[side]
            print(f"{side:>8}: {'passed' if o['passed'] else 'refused'}; gain {o['gain']:.3f}, retention loss "
                  f"{o['retention_loss']:.4f} (since the base {o['base_retention_loss']:.4f})"
                  + (f" - {o['reason']}" if o["reason"] else ""))
    return 0


def register_bench(bench_subparsers) -> None:
    """Add ``bench trl`` (and ``bench all``, ``bench report``) to ``reverie bench``."""
    from bench.trl_sdft import DEFAULT_METHODS
    from simulators.tinyworld.build import SHIPPED_MODEL

    t = bench_subparsers.add_parser(
        "trl", help="reverie's OPSD and SFT beside TRL's SDFTTrainer on the same lessons (needs the bench extra)",
        description="Each run starts from the same model and learns the same tiny-world lessons (no replay) for the "
                    "same steps, batch size and learning rate, in a fresh process; it reports new-skill accuracy, "
                    "retention, forgetting, seconds per optimiser step and peak memory.  One file per run in --out "
                    "(a rerun skips those done) and summary.json.  See bench/trl_sdft.py for what each method is.")
    t.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated (default %(default)s)")
    t.add_argument("--skills", default="facts,rule", help="comma-separated (default %(default)s)")
    t.add_argument("--lrs", default="1e-3", help="comma-separated learning rates (default %(default)s)")
    t.add_argument("--seeds", default="0", help="comma-separated seeds (default %(default)s)")
    t.add_argument("--steps", default="300", help="optimiser steps per run (default %(default)s)")
    t.add_argument("--batch-size", default="32", help="lessons per step (default %(default)s)")
    t.add_argument("--model", default=str(SHIPPED_MODEL), help="model directory (default: the shipped tiny-world model)")
    t.add_argument("--out", default="bench/results/trl", help="result directory (default %(default)s)")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    t.set_defaults(func=cmd_bench_trl)

    a = bench_subparsers.add_parser(
        "all", help="every benchmark, one after the other, then the report (docs/benchmarks.md)",
        description="Runs every benchmark as its own reverie command (learner throughput, beside TRL, the forgetting "
                    "sweep, hot swaps, serving beside raw vLLM, load, a learning cycle, dreams with 1, 2 and 4 "
                    "simulators), writes each result as JSON stamped with the machine, the libraries and the commit, "
                    "draws the plots and regenerates the report from the files.  Into bench/results and "
                    "docs/benchmarks.md by default; --quick (about a quarter of an hour here) into "
                    "bench/results-quick and its own benchmarks.md.  Exit status 1 when a benchmark failed.")
    a.add_argument("--quick", action="store_true", help="every benchmark with smaller settings")
    a.add_argument("--out", default=None, metavar="DIR",
                   help="result folder (default bench/results, or bench/results-quick with --quick)")
    a.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    a.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")
    a.set_defaults(func=cmd_bench_all)
    rr = bench_subparsers.add_parser(
        "rerun", help="learn and gate one cycle of a demo run again with other loop or gate settings",
        description="What a setting would have changed, on the very lessons a run learnt from: the cycle's recorded "
                    "feedback and kept dream trajectories are learnt again from the same parent with the same seed, "
                    "on a copy of the run's data directory (the run's folder is not written), and the gate judges "
                    "the new candidate as it judged the recorded one.  The run's own settings come from its "
                    "report.json; settings it does not name (a run older than them) take today's defaults, except "
                    "loop.mix: such a run's feedback and dreams took turns.  The "
                    "dream is not rehearsed again: its kept trajectories are reused.")
    rr.add_argument("run", metavar="DIR", help="the output folder of a `reverie demo` run (report.json, experience/)")
    rr.add_argument("--cycle", required=True, help="the cycle to rerun (one that learnt: see report.json's cycles)")
    rr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="a loop or gate setting for the rerun, checked as in a config file (loop.retain sets the "
                         "cycle's replay share); repeatable")
    rr.add_argument("--out", default=None, metavar="FILE", help="also write the result there (JSON, stamped)")
    rr.add_argument("--json", action="store_true", help="print the result as one JSON object")
    rr.set_defaults(func=cmd_bench_rerun)
    r = bench_subparsers.add_parser("report", help="regenerate the report from the result files (runs nothing)")
    r.add_argument("--results", default="bench/results", help="result folder (default %(default)s)")
    r.add_argument("--out", default=None, help="the page (default docs/benchmarks.md for bench/results, else "
                   "<results>/benchmarks.md)")
    r.add_argument("--no-plots", action="store_true", help="write the page only, not the plots")
    r.set_defaults(func=cmd_bench_report)
