"""The ``reverie`` command line: the top floor, which only gathers the commands each room registers.

Each room owns its commands and their checks (``register(subparsers)`` in its ``commands`` module); this module
imports them, in the order ``reverie --help`` lists them, and turns a ``ReverieError`` into one line and exit 2.
It is the one module of the shared vocabulary package that imports the rooms.  The admin commands talk to a
running server and are gathered alone when one is asked for, so their one-line answers need none of the other
rooms' imports (the tiny world's defaults import torch, seconds of start-up).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from reverie.errors import ReverieError

# (module, its register function), in the order of ``reverie --help``.
ROOMS = (
    ("simulators.tinyworld.commands", "register"),  # tinyworld build | eval
    ("learner.commands", "register"),                # model pull | list
    ("evals.commands", "register"),                  # eval
    ("bench.commands", "register_learn"),            # learn
    ("serve.commands", "register"),                  # serve
    ("bench.commands", "register"),                  # bench swap | load | cycle | transport | trl | all | rerun | report
    ("simulators.commands", "register"),             # dream
    ("actors.commands", "register"),                 # demo
    ("serve.admin", "register"),                     # status | review | approve | reject | rollback | cycle
)
ADMIN = ("serve.admin", "register")
ADMIN_COMMANDS = ("status", "review", "approve", "reject", "rollback", "cycle")


def _gather(description: str, rooms) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reverie", description=description)
    sub = p.add_subparsers(dest="command", required=True)
    for module, register in rooms:
        getattr(importlib.import_module(module), register)(sub)
    return p


def parser() -> argparse.ArgumentParser:
    return _gather("reverie: a deployed model that keeps learning from its own work.", ROOMS)


def admin_parser() -> argparse.ArgumentParser:
    """Only the admin commands: they talk to a running server and need none of the tiny world's imports
    (the full parser's defaults import torch, seconds before a one-line answer)."""
    return _gather("reverie: the admin commands of a running reverie serve.", (ADMIN,))


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
