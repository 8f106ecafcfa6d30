"""The benchmark wing's commands: ``reverie learn`` (one lesson of a world, the tiny world's or the chat world's,
by OPSD or SFT, or the forgetting sweep) and ``reverie bench swap|load|cycle|transport|trl|all|rerun|report``
(gathered into ``reverie.cli`` by ``register_learn`` and ``register``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reverie import args as check
from reverie.config import SWAP_MODES
from reverie.errors import ReverieError, check_model_dir, parse_seed

CYCLE_OUT = "bench/results/cycle.json"


def cmd_learn(args: argparse.Namespace) -> int:
    from learner.distill import LOSSES
    from learner.config import METHODS, SFT_TARGETS, LearnConfig
    from learner.teacher_state import TEACHER_KINDS, TeacherConfig
    from bench.experiments import BACKENDS, LEARNABLE, run

    model = check_model_dir(args.model)
    from bench.experiments import WORLDS
    from reverie.models import default_world

    world = args.world or default_world(model)
    if world not in WORLDS:
        raise ReverieError(f"reverie learn has no experiment in the {world!r} world of {args.model}: give --world, "
                           f"one of {', '.join(WORLDS)} (chat for an instruct model)")
    if world != "tiny" and args.backend != "torch":
        raise ReverieError(f"the {world} world learns with --backend torch only")
    if args.method not in METHODS:
        raise ReverieError(f"unknown method {args.method!r}; methods are: {', '.join(METHODS)}")
    if args.loss not in LOSSES:
        raise ReverieError(f"unknown loss {args.loss!r}; losses are: {', '.join(LOSSES)}")
    if args.teacher not in TEACHER_KINDS:
        raise ReverieError(f"unknown teacher {args.teacher!r}; teachers are: {', '.join(TEACHER_KINDS)}")
    if args.skill not in LEARNABLE:
        raise ReverieError(f"unknown skill {args.skill!r} for learn; skills are: {', '.join(LEARNABLE)}")
    lr = check.LEARNING_RATE.parse(args.lr, "--lr")
    retain = check.fraction(args.retain, "--retain")
    if args.backend not in BACKENDS:
        raise ReverieError(f"unknown backend {args.backend!r}; backends are: {', '.join(BACKENDS)}")
    scorers = check.count(args.scorers, "--scorers")
    topk = check.positive(args.topk, "--topk") if args.topk else None
    if args.backend == "ray" and args.method == "opsd" and scorers > 0 and args.loss in ("fkl", "rkl", "jsd") and not topk:
        raise ReverieError("vLLM teacher scorers return the top-k only: give --topk K, or --scorers 0 for a "
                           "full-vocabulary torch teacher")
    teacher = TeacherConfig(kind=args.teacher, lag_every=check.positive(args.lag_every, "--lag-every"),
                            ema_rate=check.fraction(args.ema_rate, "--ema-rate"),
                            model_dir=str(check_model_dir(args.teacher_model)) if args.teacher_model else None)
    try:
        teacher.check()
    except ValueError as exc:
        raise ReverieError(str(exc)) from None
    cfg = LearnConfig(
        method=args.method, loss=args.loss, topk=topk, steps=check.positive(args.steps, "--steps"),
        batch_size=check.positive(args.batch_size, "--batch-size"), lr=lr,
        warmup=check.count(args.warmup, "--warmup"), retain=retain,
        teacher_temperature=check.TEMPERATURE.parse(args.teacher_temperature, "--teacher-temperature"),
        samples=check.positive(args.samples, "--samples"),
        along_reference=check.SHARE.parse(args.along_reference, "--along-reference"),
        cut_below=check.PROBABILITY.parse(args.cut_below, "--cut-below") if args.cut_below not in (None, "none") else None,
        base_kl=check.WEIGHT.parse(args.base_kl, "--base-kl"),
        skip_below=check.WEIGHT.parse(args.skip_below, "--skip-below") if args.skip_below not in (None, "none") else None,
        checkpoint_every=check.count(args.checkpoint_every, "--checkpoint-every"), seed=parse_seed(args.seed),
        lora_rank=check.int_in(args.lora_rank, "--lora-rank", 0, 1024),
        lora_alpha=check.WEIGHT.parse(args.lora_alpha, "--lora-alpha"),
        sft_targets=check.choice(args.sft_targets, "--sft-targets", SFT_TARGETS),
    )
    if cfg.lora_rank and cfg.lora_alpha <= 0:
        raise ReverieError("--lora-alpha must be above 0")
    if cfg.lora_rank and (args.checkpoints or args.backend != "torch"):
        raise ReverieError("--lora-rank learns on --backend torch without --checkpoints only (a LoRA learner's "
                           "weights are not saved as versions yet)")
    if cfg.sft_targets == "teacher" and args.backend != "torch":
        raise ReverieError("--sft-targets teacher learns on --backend torch only")
    benchmark_items = check.positive(args.benchmark_items, "--benchmark-items")
    from evals.data import BENCHMARKS as KNOWN_BENCHMARKS

    benchmarks = (check.listed(args.benchmarks, "--benchmarks", check.known("benchmark", KNOWN_BENCHMARKS))
                  if args.benchmarks else None)
    if benchmarks and world != "chat":
        raise ReverieError("--benchmarks is the chat world's (the tiny world measures its own skills)")
    if args.sweep:
        return _sweep(args, model, cfg, world, benchmark_items, benchmarks)
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    if checkpoints is not None and checkpoints.exists() and not checkpoints.is_dir():
        raise ReverieError(f"--checkpoints {str(checkpoints)!r} exists and is not a directory")
    report = run(model, cfg, args.skill, progress=not args.quiet, teacher_cfg=teacher, checkpoints=checkpoints,
                 backend=args.backend, scorers=scorers, world=world, benchmark_items=benchmark_items,
                 **({"benchmarks": benchmarks} if benchmarks else {}))
    print(json.dumps(report) if args.json else format_learn(report))
    return 0


def _sweep(args: argparse.Namespace, model: Path, cfg, world: str, benchmark_items: int, benchmarks) -> int:
    from bench.experiments import LEARNABLE
    from bench.sweep import ALL_VARIANTS, sweep

    out = check.out_folder(args.out)
    listed = check.listed
    summary = sweep(model, out, variants=listed(args.variants, "--variants", check.known("sweep variant", ALL_VARIANTS)),
                    skills=listed(args.skills, "--skills", check.known("skill", LEARNABLE)),
                    lrs=listed(args.lrs, "--lrs", lambda t: check.LEARNING_RATE.parse(t, "--lrs")),
                    seeds=listed(args.seeds, "--seeds", parse_seed), steps=cfg.steps, batch_size=cfg.batch_size,
                    world=world, benchmark_items=benchmark_items, benchmarks=benchmarks,
                    progress=(lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(summary))
    else:
        for row in summary["rows"]:
            print(f"{row['skill']:<6} lr {row['lr']:<7g} {row['variant']:<18} new skill {row['new_skill_acc']['mean']:.3f}"
                  f"  retention {row['retention_avg']['mean']:.3f} +- {row['retention_avg']['sd']:.3f}"
                  f"  KL to base {row['retention_kl']['mean']:.4f}")
        print(f"{summary['runs']} runs in {out}; plot: {out / 'forgetting.png'}")
    return 0


def format_learn(r: dict) -> str:
    lines = [f"{r['method']} ({r['loss']}) on {r['skill']}, {r['steps']} steps, {r['seconds']:.0f} s",
             f"  new skill   {r['new_skill_acc_before']:.3f} -> {r['new_skill_acc']:.3f}",
             f"  retention   {r['retention_avg']:.3f}   forgetting {r['forgetting']:+.3f}"]
    return "\n".join(lines)



def cmd_bench_swap(args: argparse.Namespace) -> int:
    from bench.swap import PARAMS, run_bench

    check.choice(args.params, "--params", PARAMS)
    check.choice(args.swap_mode, "--swap-mode", (*SWAP_MODES, "restart"))
    import contextlib

    # Ray prints shutdown notices on stdout; they go to stderr so stdout is one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        if args.swap_mode == "restart":  # the baseline: no hot swap, the server restarted on the new weights
            from bench.restart import run_restart_bench

            report = run_restart_bench(
                params=args.params, concurrency=check.int_in(args.concurrency, "--concurrency", 1, 1024),
                restarts=check.int_in(args.swaps, "--swaps", 1, 1000),
                max_tokens=check.int_in(args.max_tokens, "--max-tokens", 1, 200),
                progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
        else:
            report = run_bench(swap_mode=args.swap_mode, pin_cpus=not args.no_cpu_pinning,
                swap_interval=check.seconds(args.swap_interval, "--swap-interval"),
                params=args.params, replicas=check.int_in(args.replicas, "--replicas", 1, 16),
                concurrency=check.int_in(args.concurrency, "--concurrency", 1, 1024),
                swaps=check.int_in(args.swaps, "--swaps", 1, 1000),
                max_tokens=check.int_in(args.max_tokens, "--max-tokens", 1, 200),
                progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True),
            )
    print(json.dumps(report) if args.json else "\n".join(f"{k:32} {v}" for k, v in report.items()))
    return 0


def cmd_bench_load(args: argparse.Namespace) -> int:
    import contextlib

    from reverie.results import write_result
    from bench.load import run_load

    kwargs = dict(concurrency=check.int_in(args.concurrency, "--concurrency", 1, 1024),
                  seconds=check.seconds(args.seconds, "--seconds"),
                  swap_every=check.seconds(args.swap_every, "--swap-every"),
                  min_swaps=check.int_in(args.swaps, "--swaps", 0, 1000),
                  max_tokens=check.int_in(args.max_tokens, "--max-tokens", 1, 200),
                  replicas=check.int_in(args.replicas, "--replicas", 1, 16))
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; stdout stays one JSON object
        report = run_load(**kwargs, progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    report = write_result(report, args.out)
    print(json.dumps(report) if args.json else "\n".join(f"{k:28} {v}" for k, v in report.items()))
    print(f"reverie: wrote {args.out}", file=sys.stderr)
    return 0


def cmd_bench_cycle(args: argparse.Namespace) -> int:
    import contextlib

    from bench.cycle import run_bench
    from reverie.results import write_result

    steps = check.positive(args.steps, "--steps")
    timeout = check.seconds(args.timeout, "--timeout")
    if args.model is not None:  # a real instruct model, in the chat world
        from bench.chat_cycle import run_chat_bench
        from reverie.models import resolve

        from simulators.chatworld.rules import RULES

        resolve(args.model)  # an unknown name or a directory that is not a model: one line, before anything starts
        if args.rule not in RULES:
            raise ReverieError(f"--rule must be one of {', '.join(RULES)}, got {args.rule!r}")
        facts = check.positive(args.facts, "--facts")
        learner_threads = check.positive(args.learner_threads, "--learner-threads")
        temperature = (None if args.teacher_temperature is None
                       else check.TEMPERATURE.parse(args.teacher_temperature, "--teacher-temperature"))
    progress = lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True)  # noqa: E731
    out = args.out
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; stdout stays one JSON object
        if args.model is None:
            report = run_bench(steps=steps, timeout_s=timeout, pin_cpus=not args.no_cpu_pinning, dream=args.dream,
                               progress=progress)
        else:
            report = run_chat_bench(args.model, rule=args.rule, facts=facts, steps=steps, timeout_s=timeout,
                                    pin_cpus=not args.no_cpu_pinning, learner_threads=learner_threads,
                                    teacher_temperature=temperature,
                                    progress=progress)
            out = out if out != CYCLE_OUT else f"bench/results/cycle-{Path(str(args.model)).name}.json"
    report = write_result(report, out)
    print(json.dumps(report) if args.json else "\n".join(f"{k:28} {v}" for k, v in report.items()))
    print(f"reverie: wrote {out}", file=sys.stderr)
    return 0


def cmd_bench_transport(args: argparse.Namespace) -> int:
    import contextlib

    from reverie.results import write_result
    from bench.swap import PARAMS
    from bench.transport import run_transport_bench

    params = check.choice(args.params, "--params", PARAMS)
    swaps = check.int_in(args.swaps, "--swaps", 1, 100)
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; stdout stays one JSON object
        report = run_transport_bench(params=params, swaps=swaps,
                                     progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    report = write_result(report, args.out)
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    print(f"reverie: wrote {args.out}", file=sys.stderr)
    return 0



def cmd_bench_trl(args: argparse.Namespace) -> int:
    from bench.experiments import LEARNABLE
    from bench.trl_sdft import METHODS, compare

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


def _instruct_model(text: str, what: str) -> Path:
    """The model directory ``text`` names, for a command of the chat world's; the tiny world's model is refused."""
    from reverie.models import default_world

    model = check_model_dir(text)
    if default_world(model) == "tiny":
        raise ReverieError(f"{text} is the tiny world's model; {what} is the chat world's: give an instruct model "
                           "(--model smollm2-135m-instruct)")
    return model


def _progress(quiet: bool):
    """A progress callback: a ``reverie:`` line on stderr each, or nothing with ``--quiet``."""
    return (lambda line: None) if quiet else (lambda line: print(f"reverie: {line}", file=sys.stderr, flush=True))


def cmd_bench_sequence(args: argparse.Namespace) -> int:
    from bench.sequence import METHODS, sequence
    from evals.data import BENCHMARKS as KNOWN_BENCHMARKS
    from simulators.chatworld.experiment import KL_PROMPTS
    from simulators.chatworld.sequence import MAX_STAGES

    options = dict(methods=check.listed(args.methods, "--methods", check.known("method", METHODS)),
                   stages=check.int_in(args.stages, "--stages", 1, MAX_STAGES),
                   steps=check.positive(args.steps, "--steps"), batch_size=check.positive(args.batch_size, "--batch-size"),
                   lr=check.LEARNING_RATE.parse(args.lr, "--lr"), retain=check.fraction(args.retain, "--retain"),
                   relearn=check.fraction(args.relearn, "--relearn"), seed=parse_seed(args.seed),
                   benchmark_items=check.positive(args.benchmark_items, "--benchmark-items"),
                   benchmarks=(check.listed(args.benchmarks, "--benchmarks", check.known("benchmark", KNOWN_BENCHMARKS))
                               if args.benchmarks else None),
                   drift_prompts=check.int_in(args.drift_prompts, "--drift-prompts", 1, KL_PROMPTS),
                   heldout=check.positive(args.heldout, "--heldout") if args.heldout else None)
    out = check.out_folder(args.out)
    model = _instruct_model(args.model, "the sequence")
    summary = sequence(model, out, **options, progress=_progress(args.quiet))
    if args.json:
        print(json.dumps(summary))
    else:
        for method, m in summary["methods"].items():
            print(f"{method:<5} {m['stages_done']} stages: least kept {m['min_kept']}, benchmarks "
                  f"{m['final_drop']:+.4f} since the base, gate passed {sum(m['gate_passes'])} of {m['stages_done']}")
        print(f"summary: {out / 'summary.json'}; plot: {out / 'sequence.png'}")
    return 0


def cmd_bench_calc_offer(args: argparse.Namespace) -> int:
    from bench.calc_offer import measure
    from reverie.results import write_result

    items, samples = check.int_in(args.items, "--items", 1, 1000), check.int_in(args.samples, "--samples", 0, 16)
    out = check.out_folder(args.out)
    model = _instruct_model(args.model, "calc")
    name = args.name or f"{time.strftime('%Y-%m-%d')}-{model.name}-calc-offer.json"
    report = measure(model, items, samples, progress=_progress(args.quiet))
    report = write_result(report, out / name)
    if args.json:
        print(json.dumps(report))
    else:
        for variant, r in report["variants"].items():
            print(f"{variant:<28} solved {r['solved']:.3f}  in {samples} samples {r[f'solved_in_{samples}_samples']:.3f}"
                  f"  calculator {r['called_tool']:.2f}")
        print(f"OpenAI tools rendered by the chat template: {report['openai_tools_rendered_by_chat_template']}; "
              f"result: {out / name}")
    return 0


def cmd_bench_all(args: argparse.Namespace) -> int:
    from bench.all import benches, run_all

    out = check.out_folder(args.out or ("bench/results-quick" if args.quick else "bench/results"))
    names = [b.name for b in benches(args.quick)]
    only = check.listed(args.only, "--only", check.known("benchmark", names)) if args.only is not None else None
    summary = run_all(out, quick=args.quick, only=only,
                      progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    print(json.dumps(summary) if args.json else f"{sum(b['ok'] for b in summary['benchmarks'].values())} of "
          f"{len(summary['benchmarks'])} benchmarks done in {summary['seconds']:.0f} s; report: {summary['report']}")
    return 0 if all(b["ok"] for b in summary["benchmarks"].values()) else 1


def cmd_bench_report(args: argparse.Namespace) -> int:
    from bench import report as bench_report

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
    from bench.rerun import parse_settings, rerun

    settings = parse_settings(args.set or [])
    cycle = check.positive(args.cycle, "--cycle")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
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


def register_learn(subparsers) -> None:
    """Add ``learn`` to ``reverie``'s subcommands."""
    from learner.config import LearnConfig
    from simulators.tinyworld.build import SHIPPED_MODEL

    d = LearnConfig()
    ln = subparsers.add_parser("learn", help="teach a base model one new skill of a world (the shipped model the tiny world's, an instruct model the chat world's) by OPSD or SFT; measure gain and forgetting")
    ln.add_argument("--method", default="opsd", help="opsd (on-policy self-distillation) or sft (the baseline)")
    ln.add_argument("--loss", default="fkl", help="OPSD divergence: fkl (default), rkl, jsd, sampled")
    ln.add_argument("--topk", default=None, help="score only the teacher's top-k tokens, plus a tail bucket")
    ln.add_argument("--skill", default="facts", help="facts (default) or rule")
    ln.add_argument("--steps", default=str(d.steps), help="optimiser steps (default %(default)s)")
    ln.add_argument("--batch-size", default=str(d.batch_size), help="lessons per step (default %(default)s)")
    ln.add_argument("--lr", default=str(d.lr), help="AdamW learning rate (default %(default)s)")
    ln.add_argument("--retain", default=str(d.retain),
                    help="share of each batch that replays base-skill lessons, the same for both methods (default %(default)s)")
    ln.add_argument("--warmup", default=str(d.warmup), help="linear learning-rate warm-up steps (default %(default)s)")
    ln.add_argument("--teacher-temperature", default=str(d.teacher_temperature),
                    help="OPSD: the teacher's distribution at this temperature, <1 sharper (default %(default)s)")
    ln.add_argument("--samples", default=str(d.samples), help="OPSD: completions sampled per lesson (default %(default)s)")
    ln.add_argument("--along-reference", default=str(d.along_reference),
                    help="OPSD: share of the lessons with a reference scored along it instead of a student sample, "
                         "in [0, 1] (default %(default)s)")
    ln.add_argument("--cut-below", default=str(d.cut_below).lower(),
                    help="OPSD: stop the loss after the first sampled token the teacher gives less than this "
                         "probability; none: never (default %(default)s)")
    ln.add_argument("--skip-below", default=str(d.skip_below).lower(),
                    help="OPSD: positions where the student and the teacher differ by less than this many nats "
                         "teach nothing; none: every position teaches (default %(default)s)")
    ln.add_argument("--base-kl", default=str(d.base_kl),
                    help="OPSD: weight of KL(student || base) on the student's own samples (default %(default)s)")
    ln.add_argument("--sft-targets", default=d.sft_targets,
                    help="SFT: reference (the lessons' correct replies, default) or teacher (replies the teacher "
                         "state samples at --teacher-temperature, anew each step)")
    ln.add_argument("--lora-rank", default=str(d.lora_rank),
                    help="0 trains every weight (default); R > 0 trains only LoRA adapters of rank R on every "
                         "linear layer of the decoder (the peft library)")
    ln.add_argument("--lora-alpha", default=f"{d.lora_alpha:g}",
                    help="LoRA: the adapters' output is scaled by alpha / rank (default %(default)s)")
    ln.add_argument("--teacher", default="frozen",
                    help="teacher weights: frozen (base version, default), lagged, ema, or separate (--teacher-model)")
    ln.add_argument("--lag-every", default="50", help="lagged teacher: refresh from the student every N updates")
    ln.add_argument("--ema-rate", default="0.99", help="EMA teacher: teacher = rate*teacher + (1-rate)*student per update")
    ln.add_argument("--teacher-model", default=None, help="separate teacher: a model directory with the student's tokenizer")
    ln.add_argument("--backend", default="torch",
                    help="torch: all in this process; ray: a learner actor sampling through vLLM, with teacher-scorer actors")
    ln.add_argument("--scorers", default="1", help="ray backend: teacher-scorer actors (vLLM top-k); 0: torch full-vocabulary teacher")
    ln.add_argument("--checkpoints", default=None,
                    help="directory for versioned checkpoints (vLLM-loadable); a rerun resumes from the newest one")
    ln.add_argument("--checkpoint-every", default=str(d.checkpoint_every), help="also checkpoint every N updates (default: only at the end)")
    ln.add_argument("--seed", default="0", help="random seed (default %(default)s)")
    ln.add_argument("--model", default=str(SHIPPED_MODEL), help="base model: a catalogue name or a directory "
                    "(default: the shipped one)")
    ln.add_argument("--world", default=None, help="the world taught in: tiny (the shipped model's) or chat (an "
                    "instruct model: facts and a rule, judged on held-out asks and the retention benchmarks, "
                    "simulators/chatworld/experiment.py); default: the model's own")
    ln.add_argument("--benchmark-items", default="100", help="chat world: items of each retention benchmark "
                    "(default %(default)s)")
    ln.add_argument("--benchmarks", default=None,
                    help="chat world: comma-separated retention benchmarks (of reverie eval's: arc_easy, "
                         "arc_challenge, hellaswag, piqa, boolq, mmlu; default: the gate's four)")
    ln.add_argument("--json", action="store_true", help="print one JSON object")
    ln.add_argument("--quiet", action="store_true", help="no progress bar")
    sw = ln.add_argument_group("sweep", "--sweep runs the forgetting grid without replay: every variant, skill, "
                                        "learning rate and seed, one result file per run (a rerun skips those done)")
    sw.add_argument("--sweep", action="store_true", help="run the grid instead of one run")
    sw.add_argument("--variants", default="sft,opsd,opsd-fkl-full",
                    help="comma-separated variants (default %(default)s; all: see bench/sweep.py)")
    sw.add_argument("--skills", default="facts,rule", help="comma-separated skills (default %(default)s)")
    sw.add_argument("--lrs", default="3e-4,1e-3", help="comma-separated learning rates (default %(default)s)")
    sw.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default %(default)s)")
    sw.add_argument("--out", default="bench/results/forgetting",
                    help="directory of the result files, summary.json and forgetting.png (default %(default)s)")
    ln.set_defaults(func=cmd_learn)


def register(subparsers) -> None:
    """Add ``bench`` and its benchmarks to ``reverie``'s subcommands."""
    from bench.trl_sdft import DEFAULT_METHODS
    from simulators.tinyworld.build import SHIPPED_MODEL

    b = subparsers.add_parser("bench", help="benchmarks")
    bs = b.add_subparsers(dest="bench", required=True)
    w = bs.add_parser("swap", help="hot-swap latency and serving throughput under streaming load")
    w.add_argument("--params", default="100M", help="100M (a random ~100M-parameter Llama, default), 25M, or tiny (the shipped model)")
    w.add_argument("--replicas", default="1", help="replicas (default %(default)s)")
    w.add_argument("--concurrency", default="32", help="concurrent streaming clients (default %(default)s)")
    w.add_argument("--swaps", default="10", help="swaps to perform (default %(default)s)")
    w.add_argument("--max-tokens", default="32", help="tokens per request (default %(default)s)")
    w.add_argument("--swap-mode", default="wait", help="wait (default), keep, abort or standby: see reverie serve --help; "
                   "restart: the baseline without hot swap, vLLM's own server restarted on each new version")
    w.add_argument("--swap-interval", default="1", help="seconds between one swap's end and the next one's start "
                   "(default %(default)s)")
    w.add_argument("--no-cpu-pinning", action="store_true", help="leave every process free to run on every core "
                   "(default: on a CPU-only machine the engine's worker keeps its cores to itself, raw and served alike)")
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.set_defaults(func=cmd_bench_swap)
    ld = bs.add_parser("load", help="many clients through the API while versions are swapped; then the store is "
                                     "checked against what was answered (lost, duplicated, mixed-version answers)")
    ld.add_argument("--concurrency", default="64", help="concurrent clients (default %(default)s)")
    ld.add_argument("--seconds", default="60", help="how long the load runs (default %(default)s)")
    ld.add_argument("--swap-every", default="10", help="seconds between swaps (default %(default)s)")
    ld.add_argument("--swaps", default="0", help="the fewest swaps tried: the load goes on past --seconds until this "
                    "many were tried (a slow machine's swaps take longer; default %(default)s)")
    ld.add_argument("--max-tokens", default="16", help="tokens per request (default %(default)s)")
    ld.add_argument("--replicas", default="1", help="serving replicas (default %(default)s)")
    ld.add_argument("--out", default="bench/results/load.json", help="result file (default %(default)s)")
    ld.add_argument("--json", action="store_true", help="print one JSON object")
    ld.set_defaults(func=cmd_bench_load)
    c = bs.add_parser("cycle", help="from a rule given as feedback to the first answer served by a promoted "
                                    "version that follows it (the whole loop, auto-approval, tiny world)")
    c.add_argument("--steps", default="120", help="learner updates in the cycle (default %(default)s; the "
                   "SmolLM2 runs in bench/results/chat-cycle/ used 20 and 30)")
    c.add_argument("--model", default=None, help="a real instruct model (a catalogue name such as "
                   "smollm2-135m-instruct, or a local HF directory): the cycle runs in the chat world, a rule and "
                   "facts taught through the API (bench/chat_cycle.py)")
    c.add_argument("--rule", default="starts_with", help="with --model: the kind of rule taught, one of the chat "
                   "world's (simulators/chatworld/rules.py; default %(default)s)")
    c.add_argument("--facts", default="8", help="with --model: facts corrected (default %(default)s)")
    c.add_argument("--learner-threads", default="1", help="with --model: the loop's learner_threads, torch threads "
                   "of the learner on a CPU, > 1 on every core below serving's priority (default %(default)s)")
    c.add_argument("--teacher-temperature", default=None, help="with --model: the loop's teacher_temperature "
                   "(default: the chat world's)")
    c.add_argument("--timeout", default="1200", help="seconds to wait for the new version (default %(default)s)")
    c.add_argument("--out", default=CYCLE_OUT, help="result file (default %(default)s; with --model "
                   "bench/results/cycle-MODEL.json)")
    c.add_argument("--no-cpu-pinning", action="store_true", help="leave every process free to run on every core")
    c.add_argument("--dream", action="store_true", help="users also play tool episodes first, so the cycle dreams "
                   "on them (a rollout engine and a simulator in the measured memory)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_bench_cycle)
    t = bs.add_parser("transport", help="swap time by weight transport in one run: shm and object_store on one node, "
                                        "object_store across two simulated serving nodes")
    t.add_argument("--params", default="tiny", help="tiny (the shipped model, default), 25M or 100M (random Llamas)")
    t.add_argument("--swaps", default="4", help="swaps per transport and setting (default %(default)s)")
    t.add_argument("--out", default="bench/results/transport.json", help="result file (default %(default)s)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_bench_transport)
    t = bs.add_parser(
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

    from bench.sequence import BATCH_SIZE, LR, RELEARN, RETAIN, STEPS

    q = bs.add_parser(
        "sequence", help="a real instruct model taught the chat world's stages in a row (new facts, new rules, "
                         "alternating), by OPSD and SFT; every stage's accuracy and the benchmarks after each",
        description="Each stage is learnt as the loop learns a cycle, from the model the stage before left "
                    "(bench/sequence.py).  One folder per method in --out, a stage-NN.json per stage and the newest "
                    "weights (a rerun resumes after them); summary.json and sequence.png.")
    q.add_argument("--model", default="smollm2-135m-instruct", help="a catalogue name or a local HF directory "
                   "(default %(default)s)")
    q.add_argument("--methods", default="opsd,sft", help="comma-separated: opsd, sft (default %(default)s)")
    q.add_argument("--stages", default="10", help="stages, 1 to 10 (default %(default)s)")
    q.add_argument("--steps", default=str(STEPS), help="updates per stage (default %(default)s)")
    q.add_argument("--batch-size", default=str(BATCH_SIZE), help="lessons per update (default %(default)s)")
    q.add_argument("--lr", default=f"{LR:g}", help="learning rate (default %(default)s)")
    q.add_argument("--retain", default=f"{RETAIN:g}", help="replay share of each batch (default %(default)s)")
    q.add_argument("--relearn", default=f"{RELEARN:g}", help="at most this share of a stage's new lessons are "
                   "earlier stages' (default %(default)s)")
    q.add_argument("--seed", default="0", help="random seed (default %(default)s)")
    q.add_argument("--benchmark-items", default="100", help="items of each retention benchmark (default %(default)s)")
    q.add_argument("--benchmarks", default=None, help="comma-separated retention benchmarks (default: the gate's)")
    q.add_argument("--drift-prompts", default="16", help="unseen chat prompts the drift from the base is measured "
                   "on, 1 to 16 (default %(default)s, the gate's)")
    q.add_argument("--heldout", default=None, help="judge each stage on its first N held-out asks (default: all, "
                   "40 a rule stage, 8 a facts stage); a folder is resumed only with the count it was judged on")
    q.add_argument("--out", default="bench/results/sequence-smollm2", help="result folder (default %(default)s)")
    q.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    q.add_argument("--quiet", action="store_true", help="no line per stage")
    q.set_defaults(func=cmd_bench_sequence)

    co = bs.add_parser(
        "calc-offer", help="how the calc family's calculator is offered to a chat model: the protocol alone, an "
                           "example in the system message, one or two worked examples as turns; success on held-out "
                           "problems (bench/calc_offer.py)")
    co.add_argument("--model", default="smollm2-135m-instruct", help="a catalogue name or a local HF directory "
                    "(default %(default)s)")
    co.add_argument("--items", default="40", help="held-out problems, 1 to 1000 (default %(default)s)")
    co.add_argument("--samples", default="4", help="plays at temperature 1 per problem, 0 to 16 (default %(default)s)")
    co.add_argument("--out", default="bench/results/eval", help="result folder (default %(default)s)")
    co.add_argument("--name", default=None, help="result file name (default: DATE-MODEL-calc-offer.json)")
    co.add_argument("--json", action="store_true", help="print the result as one JSON object")
    co.add_argument("--quiet", action="store_true", help="no line per variant")
    co.set_defaults(func=cmd_bench_calc_offer)

    a = bs.add_parser(
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
    rr = bs.add_parser(
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
    r = bs.add_parser("report", help="regenerate the report from the result files (runs nothing)")
    r.add_argument("--results", default="bench/results", help="result folder (default %(default)s)")
    r.add_argument("--out", default=None, help="the page (default docs/benchmarks.md for bench/results, else "
                   "<results>/benchmarks.md)")
    r.add_argument("--no-plots", action="store_true", help="write the page only, not the plots")
    r.set_defaults(func=cmd_bench_report)
