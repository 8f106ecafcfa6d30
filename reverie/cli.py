"""The ``reverie`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reverie import args as check
from reverie.errors import ReverieError, check_model_dir, parse_seed


def cmd_tinyworld_build(args: argparse.Namespace) -> int:
    from simulators.tinyworld.build import build

    seed = parse_seed(args.seed)
    steps = check.positive(args.steps, "--steps")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ReverieError(f"output path {str(out)!r} exists and is not a directory")
    eval_every = check.positive(args.eval_every, "--eval-every") if args.eval_every else 0
    report = build(out, seed=seed, steps=steps, progress=not args.quiet, eval_every=eval_every)
    print(json.dumps({"out": str(out), **report}))
    return 0


def cmd_tinyworld_eval(args: argparse.Namespace) -> int:
    from simulators.tinyworld.skills import BASE_SKILLS, NEW_SKILLS

    model = check_model_dir(args.model)
    known = (*BASE_SKILLS, *NEW_SKILLS)
    for s in args.skill or []:
        if s not in known:
            raise ReverieError(f"unknown skill {s!r}; skills are: {', '.join(known)}")
    items = check.positive(args.items, "--items")

    from learner.tokenizer import ChatEncoder, load_tokenizer
    from reverie.engine import offline_llm
    from simulators.tinyworld.evaluate import evaluate, vllm_generate

    encoder = ChatEncoder(load_tokenizer(model))
    llm = offline_llm(model)
    report = {"model": str(model), **evaluate(vllm_generate(llm, encoder), items, args.skill)}
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from learner.distill import LOSSES
    from learner.config import METHODS, LearnConfig
    from learner.teacher_state import TEACHER_KINDS, TeacherConfig
    from bench.experiments import BACKENDS, LEARNABLE, run

    model = check_model_dir(args.model)
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
        cut_below=check.PROBABILITY.parse(args.cut_below, "--cut-below") if args.cut_below not in (None, "none") else None,
        base_kl=check.WEIGHT.parse(args.base_kl, "--base-kl"),
        skip_below=check.WEIGHT.parse(args.skip_below, "--skip-below") if args.skip_below not in (None, "none") else None,
        checkpoint_every=check.count(args.checkpoint_every, "--checkpoint-every"), seed=parse_seed(args.seed),
    )
    if args.sweep:
        return _sweep(args, model, cfg)
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    if checkpoints is not None and checkpoints.exists() and not checkpoints.is_dir():
        raise ReverieError(f"--checkpoints {str(checkpoints)!r} exists and is not a directory")
    report = run(model, cfg, args.skill, progress=not args.quiet, teacher_cfg=teacher, checkpoints=checkpoints,
                 backend=args.backend, scorers=scorers)
    print(json.dumps(report) if args.json else format_learn(report))
    return 0


def _sweep(args: argparse.Namespace, model: Path, cfg) -> int:
    from bench.experiments import LEARNABLE
    from bench.sweep import VARIANTS, sweep

    out = check.out_folder(args.out)
    listed = check.listed
    summary = sweep(model, out, variants=listed(args.variants, "--variants", check.known("sweep variant", VARIANTS)),
                    skills=listed(args.skills, "--skills", check.known("skill", LEARNABLE)),
                    lrs=listed(args.lrs, "--lrs", lambda t: check.LEARNING_RATE.parse(t, "--lrs")),
                    seeds=listed(args.seeds, "--seeds", parse_seed), steps=cfg.steps, batch_size=cfg.batch_size,
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


# ------------------------------------------------------------------ admin: a running `reverie serve`
def _client(args: argparse.Namespace):
    from reverie.admin import AdminClient, admin_key, check_url

    url = check_url(args.url)  # every check of what was typed comes before the key and the network
    return AdminClient(url, admin_key(args.key_file))


def _version(args: argparse.Namespace) -> int:
    return check.version(args.version, "the version")


def cmd_status(args: argparse.Namespace) -> int:
    from reverie.admin import format_status, one_line

    with _client(args) as admin:
        status = admin.status()
    print(one_line(status) if args.json else format_status(status))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from reverie.admin import format_review, one_line

    version = _version(args)
    with _client(args) as admin:
        candidate = admin.candidate(version)
    print(one_line(candidate) if args.json else format_review(candidate))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from reverie.admin import format_candidate, one_line

    version = _version(args)
    with _client(args) as admin:
        candidate = admin.approve(version, args.note or "")
    print(one_line(candidate) if args.json else format_candidate(candidate))
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from reverie.admin import format_candidate, one_line

    version = _version(args)
    if args.reason is None or not args.reason.strip():
        raise ReverieError("reject needs --reason TEXT: say why the candidate should not be served")
    with _client(args) as admin:
        candidate = admin.reject(version, args.reason.strip())
    print(one_line(candidate) if args.json else format_candidate(candidate))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from reverie.admin import one_line

    version = _version(args)
    with _client(args) as admin:
        result = admin.rollback(version)
    print(one_line(result) if args.json else f"rolled back: every replica now serves version {version}")
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    from reverie.admin import format_cycle, one_line

    with _client(args) as admin:
        result = admin.start_cycle()
    print(one_line(result) if args.json else format_cycle(result))
    return 0


def _register_admin(sub) -> None:
    from reverie.admin import DEFAULT_URL

    def command(name: str, help: str, func, *, version: bool = False, json_flag: bool = True):
        c = sub.add_parser(name, help=help)
        if version:
            c.add_argument("version", metavar="V", help="the candidate's version id")
        c.add_argument("--url", default=DEFAULT_URL, help="the running reverie serve (default %(default)s)")
        c.add_argument("--key-file", default=None, help="JSON key file with the admin key (default "
                       "~/.config/reverie/keys.json; REVERIE_ADMIN_KEY takes precedence)")
        if json_flag:
            c.add_argument("--json", action="store_true", help="print the server's JSON answer as one line")
        c.set_defaults(func=func)
        return c

    command("status", "the promoted version, the learning cycle and every candidate", cmd_status)
    command("review", "review a candidate: what it learnt from, its scores against its parent, answers before "
            "and after, decisions", cmd_review, version=True)
    a = command("approve", "approve a pending candidate (it is then promoted and swapped in)", cmd_approve,
                version=True)
    a.add_argument("--note", default="", help="why (kept with the decision)")
    r = command("reject", "reject a pending candidate", cmd_reject, version=True)
    r.add_argument("--reason", default=None, help="why it should not be served (required)")
    command("rollback", "serve an earlier promoted version again", cmd_rollback, version=True)
    command("cycle", "start a learning cycle now", cmd_cycle)


def format_learn(r: dict) -> str:
    lines = [f"{r['method']} ({r['loss']}) on {r['skill']}, {r['steps']} steps, {r['seconds']:.0f} s",
             f"  new skill   {r['new_skill_acc_before']:.3f} -> {r['new_skill_acc']:.3f}",
             f"  retention   {r['retention_avg']:.3f}   forgetting {r['forgetting']:+.3f}"]
    return "\n".join(lines)


def format_report(report: dict) -> str:
    lines = [f"model: {report['model']}", "base skills (retention suite)"]
    lines += [f"  {s:<10} {acc:6.3f}" for s, acc in report["base_skills"].items()]
    lines.append("new skills            student  teacher")
    lines += [f"  {s:<18} {v['student']:8.3f} {v['teacher']:8.3f}" for s, v in report["new_skills"].items()]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    from simulators.tinyworld.build import DEFAULT_STEPS, SHIPPED_MODEL
    from simulators.tinyworld.evaluate import EVAL_ITEMS

    p = argparse.ArgumentParser(prog="reverie", description="reverie: a deployed model that keeps learning from its own work.")
    sub = p.add_subparsers(dest="command", required=True)
    tw = sub.add_parser("tinyworld", help="the built-in tiny world: build its base model, evaluate a model on it")
    tws = tw.add_subparsers(dest="action", required=True)
    b = tws.add_parser("build", help="pretrain the tiny world's tokenizer and base model from scratch (deterministic per seed)")
    b.add_argument("--out", default=str(SHIPPED_MODEL), help="output model directory (default: the shipped model, %(default)s)")
    b.add_argument("--seed", default="0", help="random seed (default %(default)s)")
    b.add_argument("--steps", default=str(DEFAULT_STEPS), help="pretraining steps of 64 conversations (default %(default)s)")
    b.add_argument("--eval-every", default=None, metavar="N",
                   help="print each skill's greedy accuracy (by teacher forcing) every N steps")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_tinyworld_build)
    e = tws.add_parser("eval", help="greedy evaluation through vLLM on every skill's held-out items")
    e.add_argument("--model", default=str(SHIPPED_MODEL), help="model directory (default: the shipped base model)")
    e.add_argument("--items", default=str(EVAL_ITEMS), help="items per skill and view (default %(default)s)")
    e.add_argument("--skill", action="append", help="evaluate only this skill (repeatable)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    e.set_defaults(func=cmd_tinyworld_eval)
    from learner.config import LearnConfig

    d = LearnConfig()
    ln = sub.add_parser("learn", help="teach the shipped base model one new tiny-world skill by OPSD or SFT; measure gain and forgetting")
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
    ln.add_argument("--cut-below", default=str(d.cut_below).lower(),
                    help="OPSD: stop the loss after the first sampled token the teacher gives less than this "
                         "probability; none: never (default %(default)s)")
    ln.add_argument("--skip-below", default=str(d.skip_below).lower(),
                    help="OPSD: positions where the student and the teacher differ by less than this many nats "
                         "teach nothing; none: every position teaches (default %(default)s)")
    ln.add_argument("--base-kl", default=str(d.base_kl),
                    help="OPSD: weight of KL(student || base) on the student's own samples (default %(default)s)")
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
    ln.add_argument("--model", default=str(SHIPPED_MODEL), help="base model directory (default: the shipped one)")
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

    from serve.commands import register as register_serve
    from simulators.commands import register as register_dream
    from actors.commands import register as register_demo

    register_serve(sub)
    register_dream(sub)
    register_demo(sub)
    _register_admin(sub)
    return p


ADMIN_COMMANDS = ("status", "review", "approve", "reject", "rollback", "cycle")


def admin_parser() -> argparse.ArgumentParser:
    """Only the admin commands: they talk to a running server and need none of the tiny world's imports
    (the full parser's defaults import torch, seconds before a one-line answer)."""
    p = argparse.ArgumentParser(prog="reverie", description="reverie: the admin commands of a running reverie serve.")
    _register_admin(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = (admin_parser() if argv and argv[0] in ADMIN_COMMANDS else parser()).parse_args(argv)
    try:
        return args.func(args)
    except ReverieError as exc:
        print(f"reverie: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reverie: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
