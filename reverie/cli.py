"""The ``reverie`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reverie.errors import ReverieError, check_model_dir, parse_seed


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ReverieError(f"expected a positive whole number, got {text!r}") from None
    if n <= 0:
        raise ReverieError(f"expected a positive whole number, got {text!r}")
    return n


def _count(text: str, flag: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ReverieError(f"{flag} must be a whole number, got {text!r}") from None
    if n < 0:
        raise ReverieError(f"{flag} must not be negative, got {text!r}")
    return n


def _fraction(text: str, flag: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ReverieError(f"{flag} must be a number, got {text!r}") from None
    if not 0.0 <= x < 1.0:
        raise ReverieError(f"{flag} must be in [0, 1), got {text!r}")
    return x


def cmd_tinyworld_build(args: argparse.Namespace) -> int:
    from simulators.tinyworld.build import build

    seed = parse_seed(args.seed)
    steps = _positive(args.steps)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ReverieError(f"output path {str(out)!r} exists and is not a directory")
    eval_every = _positive(args.eval_every) if args.eval_every else 0
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
    items = _positive(args.items)

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
    from simulators.tinyworld.experiment import BACKENDS, LEARNABLE, run

    model = check_model_dir(args.model)
    if args.method not in METHODS:
        raise ReverieError(f"unknown method {args.method!r}; methods are: {', '.join(METHODS)}")
    if args.loss not in LOSSES:
        raise ReverieError(f"unknown loss {args.loss!r}; losses are: {', '.join(LOSSES)}")
    if args.teacher not in TEACHER_KINDS:
        raise ReverieError(f"unknown teacher {args.teacher!r}; teachers are: {', '.join(TEACHER_KINDS)}")
    if args.skill not in LEARNABLE:
        raise ReverieError(f"unknown skill {args.skill!r} for learn; skills are: {', '.join(LEARNABLE)}")
    try:
        lr = float(args.lr)
    except ValueError:
        raise ReverieError(f"--lr must be a number, got {args.lr!r}") from None
    if not 0 < lr < 1:
        raise ReverieError(f"--lr must be between 0 and 1, got {args.lr!r}")
    retain = _fraction(args.retain, "--retain")
    if args.backend not in BACKENDS:
        raise ReverieError(f"unknown backend {args.backend!r}; backends are: {', '.join(BACKENDS)}")
    scorers = _count(args.scorers, "--scorers")
    topk = _positive(args.topk) if args.topk else None
    if args.backend == "ray" and args.method == "opsd" and scorers > 0 and args.loss in ("fkl", "rkl", "jsd") and not topk:
        raise ReverieError("vLLM teacher scorers return the top-k only: give --topk K, or --scorers 0 for a "
                           "full-vocabulary torch teacher")
    teacher = TeacherConfig(kind=args.teacher, lag_every=_positive(args.lag_every),
                            ema_rate=_fraction(args.ema_rate, "--ema-rate"),
                            model_dir=str(check_model_dir(args.teacher_model)) if args.teacher_model else None)
    try:
        teacher.check()
    except ValueError as exc:
        raise ReverieError(str(exc)) from None
    cfg = LearnConfig(
        method=args.method, loss=args.loss, topk=topk, steps=_positive(args.steps),
        batch_size=_positive(args.batch_size), lr=lr, warmup=_count(args.warmup, "--warmup"), retain=retain,
        checkpoint_every=_count(args.checkpoint_every, "--checkpoint-every"), seed=parse_seed(args.seed),
    )
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    if checkpoints is not None and checkpoints.exists() and not checkpoints.is_dir():
        raise ReverieError(f"--checkpoints {str(checkpoints)!r} exists and is not a directory")
    report = run(model, cfg, args.skill, progress=not args.quiet, teacher_cfg=teacher, checkpoints=checkpoints,
                 backend=args.backend, scorers=scorers)
    print(json.dumps(report) if args.json else format_learn(report))
    return 0


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
    ln.set_defaults(func=cmd_learn)

    from serve.commands import register as register_serve
    from simulators.commands import register as register_dream

    register_serve(sub)
    register_dream(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
