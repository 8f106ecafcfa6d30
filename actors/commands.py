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


