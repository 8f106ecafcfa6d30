"""The ``reverie tinyworld build`` and ``reverie tinyworld eval`` commands (gathered into ``reverie.cli`` by
``register``)."""
from __future__ import annotations

import argparse
import json
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


def format_report(report: dict) -> str:
    lines = [f"model: {report['model']}", "base skills (retention suite)"]
    lines += [f"  {s:<10} {acc:6.3f}" for s, acc in report["base_skills"].items()]
    lines.append("new skills            student  teacher")
    lines += [f"  {s:<18} {v['student']:8.3f} {v['teacher']:8.3f}" for s, v in report["new_skills"].items()]
    return "\n".join(lines)



def register(subparsers) -> None:
    """Add ``tinyworld`` to ``reverie``'s subcommands."""
    from simulators.tinyworld.build import DEFAULT_STEPS, SHIPPED_MODEL
    from simulators.tinyworld.evaluate import EVAL_ITEMS

    tw = subparsers.add_parser("tinyworld", help="the built-in tiny world: build its base model, evaluate a model on it")
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
