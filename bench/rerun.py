"""``reverie bench rerun``: one cycle of a demo run learnt and gated again, with other settings.

What would a setting of the loop have changed?  The cycle's recorded lessons (its feedback records and kept
dream trajectories, as the version registry keeps them with the candidate) are learnt again from the same
parent as the same cycle (its number and seed draw the lessons' order and the gate's held-out split), on a
copy of the run's data directory (the run's own folder is never written), and the gate judges the new
candidate as it judged the recorded one, on the same held-out tasks (the dreamed family's as the registry
kept them with the recorded candidate): against the parent, the base and what the lineage learnt.  The
cycle's dream is not rehearsed again: its kept trajectories are reused.  Rerun with the run's own settings,
demo run t's cycle 3 gave back its recorded scores skill by skill (``bench/results/rerun/``).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from reverie.errors import ReverieError


def parse_settings(pairs: list[str]) -> dict[str, dict]:
    """``loop.KEY=VALUE`` / ``gate.KEY=VALUE`` pairs, each checked by the config file's rule for that field."""
    from reverie.config_file import RULES

    out: dict[str, dict] = {"loop": {}, "gate": {}}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in RULES or not key.startswith(("loop.", "gate.")):
            raise ReverieError(f"--set wants loop.KEY=VALUE or gate.KEY=VALUE with a field of the config file, "
                               f"got {pair!r}")
        rule = RULES[key]
        if rule.kind is bool:
            if text not in ("true", "false"):
                raise ReverieError(f"--set {key} must be true or false, got {text!r}")
            value = text == "true"
        else:
            value = rule.parse(text, f"--set {key}")
        section, field = key.split(".", 1)
        out[section][field] = value
    return out


def _demo_settings(report: dict):
    from reverie.config import GateConfig, LoopConfig

    settings = report.get("settings") or {}
    loop = settings.get("loop", {})
    if loop and "mix" not in loop:
        loop = {**loop, "mix": "turns"}  # a run from before loop.mix: its feedback and dreams took turns
    return LoopConfig(**loop), GateConfig(**settings.get("gate", {}))


def rerun(run_dir: str | Path, cycle: int, settings: dict[str, dict] | None = None,
          progress=lambda msg: None) -> dict:
    """Learn and gate ``cycle`` of the demo run in ``run_dir`` again with ``settings`` (``parse_settings``);
    the result, beside what the run recorded for that cycle."""
    import ray

    from actors.controller import Controller, Cycle
    from actors.gate import EnvTask, task_from_record
    from reverie.config import ServeConfig
    from reverie.ray_start import start_ray

    run_dir = Path(run_dir)
    report_file, data = run_dir / "report.json", run_dir / "experience"
    if not report_file.is_file() or not (data / "versions" / "registry.json").is_file():
        raise ReverieError(f"{run_dir} is not the output folder of a `reverie demo` run (report.json and "
                           "experience/ with its version registry)")
    report = json.loads(report_file.read_text())
    registry = json.loads((data / "versions" / "registry.json").read_text())
    model = Path(registry["model"])
    if not (model / "config.json").is_file():
        raise ReverieError(f"the run's model directory {model} is gone: rerun from the checkout that ran it")
    state = json.loads((data / "controller" / "state.json").read_text())
    recorded = next((h for h in state.get("history", []) if h["cycle"] == cycle), None)
    if recorded is None or not recorded.get("done") or recorded.get("candidate") is None:
        learnt = [h["cycle"] for h in state.get("history", []) if h.get("done") and h.get("candidate") is not None]
        raise ReverieError(f"cycle {cycle} of that run learnt nothing to rerun; cycles that learnt: "
                           f"{', '.join(map(str, learnt)) or 'none'}")
    settings = settings or {"loop": {}, "gate": {}}
    loop, gate = _demo_settings(report)
    loop_set = dict(settings["loop"])  # the caller's settings stay as given
    retain = loop_set.pop("retain", None)  # the cycle's replay share, not the loop's
    loop = dataclasses.replace(loop, **loop_set)
    gate = dataclasses.replace(gate, **settings["gate"])

    work = Path(tempfile.mkdtemp(prefix="reverie-rerun-"))
    try:
        copy = work / "experience"
        shutil.copytree(data, copy, ignore=shutil.ignore_patterns("*.lock"))
        cfg = ServeConfig(model_dir=model, data_dir=str(copy), loop=loop, gate=gate)
        progress(f"rerunning cycle {cycle} (parent v{recorded['parent']}, seed {recorded['seed']}) on a copy in {work}")
        start_ray(num_cpus=8, cpu_plan=cfg.cpu_plan())
        try:
            ctl = Controller(cfg)
            lessons = ctl.registry.get(recorded["candidate"]).lessons
            # The same cycle number and seed: the same lessons in the same order, the same held-out split.
            shutil.rmtree(cfg.state_dir() / "cycles" / f"c{cycle:06d}", ignore_errors=True)  # its checkpoints
            c = Cycle(cycle=cycle, state="learn", parent=recorded["parent"],
                      feedback_ids=list(lessons.get("ids", [])), seed=recorded["seed"], started=time.time(),
                      total=loop.steps, trajectories=list(lessons.get("trajectories", [])),
                      dream=lessons.get("dream") or {}, retain=recorded.get("retain") if retain is None else retain)
            ctl.current = c
            t0 = time.perf_counter()
            ctl._learn(c)
            learnt_s = time.perf_counter() - t0
            progress(f"learnt {c.total} updates in {learnt_s:.0f} s; gating candidate v{c.candidate}")
            # The held-out tasks the recorded candidate was judged on: its cycle's text ones drawn again (the same
            # split), the dreamed family's environment tasks as the registry kept them.
            heldout = ctl._split(c, ctl._lessons(c)[0])[1] if c.feedback_ids else []
            env = [t for t in map(task_from_record, ctl.registry.learnt(recorded["candidate"]))
                   if isinstance(t, EnvTask)]
            review = ctl.judge(c.candidate, heldout, env)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    old = json.loads((data / "versions" / "reviews" / f"v{recorded['candidate']:08d}.json").read_text())
    return {"run": str(run_dir), "cycle": cycle, "parent": recorded["parent"], "seed": recorded["seed"],
            "settings": {"loop": settings["loop"], "gate": settings["gate"]},
            "retain": c.retain, "replay": c.lessons.get("replay"), "feedback_share": c.lessons.get("feedback_share"),
            "steps": c.total, "learn_seconds": learnt_s,
            "rerun": _outcome(review), "recorded": _outcome(old)}


def _outcome(review: dict) -> dict:
    """What the gate said of a candidate: passed, why not, its losses and per-skill accuracies."""
    return {"passed": review["passed"], "reason": review.get("reason", ""), "gain": review["gain"],
            "retention_loss": review["retention_loss"], "base_retention_loss": review["base_retention_loss"],
            "since_base": {k: [x["base"], x["candidate"]] for k, x in review["base_retention"].items()},
            "new": {k: x["candidate"] for k, x in review["new"].items()},
            "learnt": {k: x["candidate"] for k, x in review["learnt"].items()}}
