"""``reverie bench all``: every benchmark of the project, one after the other, then the report.

Each benchmark is its own ``reverie`` command run as a child process (its own Ray, its own engines, its
memory given back when it ends), so one that fails is reported and the others still run.  Each writes its
result file(s) under the output folder, stamped with the machine, the library versions and the commit
(``reverie/results.py``); commands that only print their JSON have it written for them.  Then the plots
are drawn and the report is generated from those files (``bench/report.py``): into
``docs/benchmarks.md`` when the output folder is the project's ``bench/results``, else into
``<out>/benchmarks.md``, so a quick run never replaces the committed full results.  ``--only`` reruns some
benchmarks: their entries in ``all.json`` are replaced and named under ``reruns``, and the rest (and the
whole run's time) stay as they were.

``--quick`` runs every benchmark with smaller settings (fewer steps, seeds, swaps, seconds): about a
quarter of an hour on a 2-core machine.  The full run's time is measured in its ``all.json``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reverie.files import read_json
from reverie.results import write_result


@dataclass(frozen=True)
class Bench:
    name: str
    argv: tuple[str, ...]  # after ``reverie``; ``{out}`` is the output folder
    result: str | None  # where the command's printed JSON is written (None: the command writes its own files)
    timeout_s: float


FULL_SWAPS = [(p, m) for p in ("tiny", "25M", "100M") for m in ("wait", "standby", "restart")]
QUICK_SWAPS = [("tiny", "standby"), ("tiny", "restart")]
TRL_METHODS = "reverie-opsd,reverie-opsd-t1,reverie-sft,trl-sdft-fkl,trl-sdft-default"
SWEEP_VARIANTS = "sft,opsd-fkl-full,opsd-fkl-t05,opsd-fkl-cut,opsd-fkl-t05-cut"  # the committed sweep's


def benches(quick: bool, gpu: bool = False) -> list[Bench]:
    """The benchmarks, in the order they run (``quick``: each with smaller settings)."""
    q = quick

    def swaps(mode: str) -> str:
        return "2" if q or mode == "restart" else "10"  # a restart takes minutes here

    return [
        Bench("learner", ("learn", "--method", "opsd", "--skill", "facts", "--steps", "60" if q else "300", "--quiet",
                          "--json"), f"learn-{'cuda' if gpu else 'cpu'}.json", 900),
        Bench("trl", ("bench", "trl", "--methods", "reverie-opsd,trl-sdft-fkl" if q else TRL_METHODS,
                      "--lrs", "1e-3" if q else "3e-4,1e-3", "--steps", "60" if q else "300", "--out", "{out}/trl",
                      "--json"), None, 3 * 3600),
        Bench("forgetting", ("learn", "--sweep", "--variants", "sft,opsd" if q else SWEEP_VARIANTS,
                             *(("--skills", "facts", "--lrs", "1e-3", "--seeds", "0", "--steps", "60") if q else ()),
                             "--out", "{out}/forgetting", "--quiet", "--json"), None, 3 * 3600),
        *[Bench(f"swap-{p}-{m}", ("bench", "swap", "--params", p, "--swap-mode", m, "--swaps", swaps(m), "--json"),
                f"swap-{p}-{m}.json", 1800) for p, m in (QUICK_SWAPS if q else FULL_SWAPS)],
        Bench("transport", ("bench", "transport", "--params", "tiny" if q else "100M", "--swaps", "2" if q else "4",
                            "--out", "{out}/transport.json", "--json"), None, 1800),
        Bench("load", ("bench", "load", "--seconds", "20" if q else "60", "--concurrency", "16" if q else "64",
                       "--out", "{out}/load.json", "--json"), None, 900),
        # 120 updates in both: with 40 the candidate was refused by the gate (too little gain), and the bench
        # waited out its timeout for a version that never came
        Bench("cycle", ("bench", "cycle", "--steps", "120", "--timeout", "600", "--out", "{out}/cycle.json",
                        "--json"), None, 1800),
        Bench("dream", ("dream", "--simulators", "4",
                        *(("--rounds", "1", "--episodes", "48", "--steps", "10", "--items", "50") if q else ()),
                        "--quiet", "--json"), f"dream/{'quick' if q else 'scaling'}.json", 3600),
    ]


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def run_all(out: Path, quick: bool = False, only: list[str] | None = None,
            progress: Callable[[str], None] = print) -> dict:
    """Run the benchmarks (``only``: those named), write their results under ``out``, then the report."""
    from bench import report as bench_report

    out.mkdir(parents=True, exist_ok=True)
    from reverie.results import gpus

    todo = [b for b in benches(quick, bool(gpus())) if not only or b.name in only]
    done: dict[str, dict] = {}
    start = time.perf_counter()
    for i, b in enumerate(todo, 1):
        argv = [sys.executable, "-m", "reverie.cli", *(a.replace("{out}", str(out)) for a in b.argv)]
        progress(f"[{i}/{len(todo)}] {b.name}: reverie {' '.join(argv[3:])}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=b.timeout_s)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = None, e.stdout or "", f"timed out after {b.timeout_s:.0f} s"
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        seconds = time.perf_counter() - t0
        report = _last_json(stdout)
        if rc == 0 and report is not None and b.result:
            write_result(report, out / b.result)
        ok = rc == 0 and report is not None
        done[b.name] = {"ok": ok, "seconds": round(seconds, 1), "command": " ".join(["reverie", *argv[3:]])}
        if not ok:
            tail = (stderr or "").strip().splitlines()[-3:]
            done[b.name]["error"] = " | ".join(tail) or f"exit status {rc}"
        progress(f"    {'done' if ok else 'FAILED'} in {seconds:.0f} s" + ("" if ok else f": {done[b.name]['error']}"))
    summary = {"quick": quick, "seconds": round(time.perf_counter() - start, 1), "benchmarks": done}
    path = out / ("all-quick.json" if quick else "all.json")
    if only and (earlier := read_json(path)) and earlier.get("quick") == quick:
        # some benchmarks again: the run they were part of keeps its time, and says which were redone
        reruns = sorted({*earlier.get("reruns", []), *done})
        summary = {**earlier, "benchmarks": {**earlier["benchmarks"], **done}, "reruns": reruns}
        summary.pop("machine", None)
    write_result(summary, path)
    doc = bench_report.DOC if out.resolve() == bench_report.RESULTS.resolve() else out / "benchmarks.md"
    bench_report.write(out, doc)
    progress(f"report: {doc}")
    return {**summary, "report": str(doc)}
