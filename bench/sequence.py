"""``reverie bench sequence``: many lessons in a row on a real instruct model.  A deployed model is taught again and
again; this teaches it the chat world's stages one after another (``simulators/chatworld/sequence.py``: new facts
and new rules, alternating), each from the model the stage before left, and after every stage measures every
stage's held-out accuracy (the ones not taught yet too, to see what teaching moved) and the retention
benchmarks, paired item by item with the base.

Each stage is learnt as the loop's learner learns a cycle (``actors/controller.py``), at the settings the SmolLM2
chat cycle met its targets with (``bench/results/chat-cycle/``: 30 updates of 8 lessons at 5e-5, half of each
batch replay): the stage's lessons share the new lessons' part of a batch with every earlier stage's, as much as
they are of the lessons in all and at most ``relearn`` (the loop's ``relearn``); the replay keeps the rules in
force (its teacher shown them; for SFT, whose lessons need a reference, the replay's reference is the model's own
greedy reply from before the stage, rewritten to keep the rules in force).  OPSD's teacher is the model before the
stage, at the chat world's temperature (0.6), scoring corrected lessons along their corrections (the world's
``along_reference``).  What the gate would say of each stage is reported beside it, from the same figures
(``gate``): the sequence goes on either way, so it shows what teaching does, not what the gate lets through.

One folder per method under ``out``: ``stage-NN.json`` per stage (its lessons kept, so a resumed run teaches
again exactly what it taught), and ``model/``, the weights after the newest finished stage; a rerun resumes after
it.  ``out/base.json`` is the base's measure, shared; ``summary.json`` and ``sequence.png`` cover every method.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from reverie.errors import ReverieError

METHODS = ("opsd", "sft")
STEPS, BATCH_SIZE, LR, RETAIN, RELEARN = 30, 8, 5e-5, 0.5, 0.5  # the SmolLM2 chat cycle's (module docstring)
TEACHER_TEMPERATURE, ALONG_REFERENCE = 0.6, 1.0  # the chat world's (simulators/chatworld/plugin.py)
REPLAY_PROMPTS = 32  # replay prompts whose replies SFT's replay learns, per stage
KEPT = 0.8  # target: every taught stage keeps this share of its accuracy right after it was taught
MAX_DROP = 0.02  # target: the benchmarks' average drop since the base after the last stage
STATE = "reverie-stage.json"  # in a method's model/: the stage those weights finished


def _lesson_json(lesson) -> dict:
    return {"student": list(lesson.student), "teacher": list(lesson.teacher), "reference": lesson.reference}


def _lesson(d: dict):
    from learner.distill import Lesson

    return Lesson(tuple(d["student"]), tuple(d["teacher"]), d["reference"])


def batches(new: Sequence, earlier: Sequence, replay: Callable[[random.Random], object], batch_size: int,
            retain: float, relearn: float, seed: int) -> Iterator[list]:
    """Endless batches as the loop makes a cycle's: ``retain`` of each batch ``replay(rng)``, the rest the stage's
    ``new`` lessons and, at share ``min(relearn, len(earlier) / (len(earlier) + len(new)))``, ``earlier`` ones."""
    from learner.replay import mixed_batches

    rng = random.Random(f"sequence/{seed}")
    share = min(relearn, len(earlier) / (len(earlier) + len(new))) if earlier and relearn > 0 else 0.0

    def lessons():
        while True:
            pool = earlier if share and rng.random() < share else new
            yield pool[rng.randrange(len(pool))]

    def replayed():
        while True:
            yield replay(rng)

    return mixed_batches(lessons(), replayed(), batch_size, retain)


class Judge:
    """Every stage's held-out asks and the retention benchmarks; one measure judges a model on all of them."""

    def __init__(self, stages, experiment, pools, drift_prompts: int | None = None, heldout: int | None = None):
        from simulators.chatworld.sequence import heldout as asks

        self.stages, self.experiment, self.limit = list(stages), experiment, heldout
        self.heldout = {s.name: asks(s, pools)[:heldout] for s in self.stages}
        self.general = experiment.general[:drift_prompts]
        self._chats = None  # the base's greedy replies to the general prompts, scored by every stage's drift

    def drift(self, base, model, encoder) -> float:
        """The experiment's drift on the judge's general prompts, the base's replies to them made once."""
        if self._chats is None:
            self._chats = self.experiment.base_chats(base, encoder, self.general)
        return self.experiment.drift(base, model, encoder, self._chats)

    def accuracy(self, model, encoder, names: Sequence[str] | None = None) -> dict[str, float]:
        """The held-out accuracy of each stage (of ``names``), from one greedy reply to each ask."""
        from learner.distill import greedy_replies
        from simulators.chatworld.experiment import MAX_TOKENS
        from simulators.chatworld.plugin import passes

        heldout = {n: self.heldout[n] for n in names} if names is not None else self.heldout
        prompts = list({json.dumps(p): p for asks in heldout.values() for p, _ in asks}.values())  # rules share theirs
        replies = dict(zip(map(json.dumps, prompts), greedy_replies(model, encoder, prompts, MAX_TOKENS)))
        return {name: sum(passes(spec, replies[json.dumps(p)]) for p, spec in asks) / len(asks)
                for name, asks in heldout.items()}

    def measure(self, model, encoder, base=None) -> dict:
        from simulators.chatworld.experiment import BENCHMARK_LLS

        accuracy = self.accuracy(model, encoder)
        lls = self.experiment.loglikelihoods(model)
        retention = self.experiment.retention(model, lls)
        out = {"accuracy": accuracy, "retention": retention,
               "retention_avg": sum(retention.values()) / len(retention), BENCHMARK_LLS: lls}
        if base is not None:
            out["retention_kl"] = self.drift(base, model, encoder)
        return out


def gate(stage_name: str, before: dict, after: dict, base: dict) -> dict:
    """What the loop's gate (``reverie.config.GateConfig``'s defaults) would say of the stage's candidate from
    these figures: the new stage's held-out gain as a share of the parent's failures, the benchmarks' average
    against the parent and the base, and each earlier family's accuracy against the parent."""
    from actors.gate import exceeds
    from reverie.config import GateConfig

    g = GateConfig()
    was, now = before["accuracy"][stage_name], after["accuracy"][stage_name]
    gain = (now - was) / (1.0 - was) if was < 1.0 else 0.0
    loss = max(before["retention_avg"], base["retention_avg"]) - after["retention_avg"]
    family_loss = max([before["accuracy"][k] - after["accuracy"][k] for k in before.get("taught", [])] or [0.0])
    reasons = ([f"gain {gain:.3f} < {g.min_gain}"] if round(gain, 9) < g.min_gain else []) + \
        ([f"retention loss {loss:.4f} > {g.max_retention_loss}"] if exceeds(loss, g.max_retention_loss) else []) + \
        ([f"an earlier stage lost {family_loss:.3f} > {g.max_family_loss}"]
         if exceeds(family_loss, g.max_family_loss) else [])
    return {"passes": not reasons, "reasons": reasons, "gain": gain, "retention_loss": loss,
            "family_loss": family_loss}


def _learn_config(method: str, steps: int, batch_size: int, lr: float, retain: float, seed: int):
    from learner.config import LearnConfig

    return LearnConfig(method=method, steps=steps, batch_size=batch_size, lr=lr, retain=retain, seed=seed,
                       teacher_temperature=TEACHER_TEMPERATURE, along_reference=ALONG_REFERENCE, checkpoint_every=0)


def _save(model, folder: Path, stage: int) -> None:
    """The weights after ``stage``, replacing the folder's as one rename (a killed run keeps the older ones)."""
    new = folder.with_name(folder.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    model.save_pretrained(new)
    (new / STATE).write_text(json.dumps({"stage": stage}))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def base_measure(path: Path, judge: Judge, model, encoder) -> dict:
    """The base model's measure, read from ``path`` where an earlier run wrote it; a stage it was not judged on
    (a longer rerun's) is judged now and added, so a longer rerun measures the base on the new stages alone."""
    from reverie.files import atomic_write_json

    if not path.exists():
        base = judge.measure(model, encoder)
    else:
        base = json.loads(path.read_text())
        missing = [name for name in judge.heldout if name not in base["accuracy"]]
        if not missing:
            return base
        base["accuracy"].update(judge.accuracy(model, encoder, missing))
    atomic_write_json(path, base)
    return base


def _done(folder: Path) -> int:
    state = folder / STATE
    return json.loads(state.read_text())["stage"] if state.exists() else 0


def finished(folder: Path, plan) -> list[dict]:
    """The reports of the stages of ``plan`` finished in a method's ``folder`` (none where it has none)."""
    done = min(_done(folder / "model"), len(plan))
    return [json.loads((folder / f"stage-{s.index:02d}.json").read_text()) for s in plan[:done]]


def _resumable(folder: Path, plan, heldout: int | None) -> None:
    """Refuse to resume a method's folder whose stages were judged on another count of held-out asks."""
    reports = finished(folder, plan)
    if reports and reports[-1].get("heldout") != heldout:
        raise ReverieError(f"{folder} was judged on {reports[-1].get('heldout') or 'all'} held-out asks a stage, "
                           f"not {heldout or 'all'}: rerun with that --heldout, or give another --out")


def run_method(model_dir: Path, out: Path, method: str, plan, judge: Judge, base_measure: dict, base, *,
               steps: int = STEPS, batch_size: int = BATCH_SIZE, lr: float = LR, retain: float = RETAIN,
               relearn: float = RELEARN, seed: int = 0, progress=lambda line: None) -> list[dict]:
    """Teach ``plan``'s stages in a row by ``method`` from the model ``base`` (at ``model_dir``, never changed),
    resuming after the newest finished one; each stage's report (also ``out/method/stage-NN.json``)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from bench.cycle import _PeakRss
    from learner.distill import Lesson, greedy_replies
    from learner.loop import learn
    from learner.replay import retention_count
    from learner.teacher_state import TeacherConfig, TeacherState
    from learner.tokenizer import chat_encoder, load_tokenizer
    from reverie.files import atomic_write_json
    from simulators.chatworld.experiment import MAX_TOKENS
    from simulators.chatworld.rules import rule_correction
    from simulators.chatworld.sequence import in_force, stage_family

    folder = out / method
    weights = folder / "model"
    done = _done(weights)
    reports = finished(folder, plan)  # sequence() checked they were judged on judge.limit asks
    if done >= len(plan):
        return reports
    tokenizer = load_tokenizer(model_dir)
    encoder = chat_encoder(tokenizer)
    student = (AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32) if done
               else copy.deepcopy(base).requires_grad_(True))
    earlier = [_lesson(d) for r in reports for d in r["lessons"]]
    last = reports[-1]["after"] if reports else base_measure
    before = {**last, "accuracy": dict(last["accuracy"]), "taught": [r["stage"] for r in reports]}
    for stage in plan[done:]:
        start = time.perf_counter()
        cfg = _learn_config(method, steps, batch_size, lr, retain, seed * 1000 + stage.index)
        torch.manual_seed(cfg.seed)
        if stage.name not in before["accuracy"]:  # a longer rerun: a stage the shorter run did not judge
            before["accuracy"].update(judge.accuracy(student.eval(), encoder, [stage.name]))
        family = stage_family(stage, student.eval(), encoder, plan[: stage.index - 1])
        rules = in_force(plan[: stage.index])
        replayed = min(REPLAY_PROMPTS, steps * retention_count(batch_size, retain))  # no more than are drawn
        prompts = random.Random(f"sequence/replay/{seed}/{stage.index}").sample(
            judge.experiment.replay_prompts, replayed)
        if method == "sft":  # replay learns the model's own replies from before the stage, keeping the rules
            replies = greedy_replies(student, encoder, prompts, MAX_TOKENS)
            every = "\n".join(rules)
            replay = [Lesson(p, (*family.replay_context, *p), rule_correction(every, r) if rules else r)
                      for p, r in zip(prompts, replies)]
        else:
            replay = [Lesson(p, (*family.replay_context, *p), None) for p in prompts]
        stream = batches(family.lessons, earlier, lambda rng: replay[rng.randrange(len(replay))], batch_size,
                         retain, relearn, cfg.seed)
        teacher = TeacherState(TeacherConfig(), student, tokenizer) if method == "opsd" else None
        with _PeakRss() as memory:
            stats = learn(student, teacher, encoder, stream, cfg, progress=False)
        del teacher
        after = judge.measure(student.eval(), encoder, base=base)
        report = {
            "method": method, "stage": stage.name, "index": stage.index, "family": stage.family,
            "rule": stage.rule, "facts": [t.text for t in stage.facts],
            "in_force": rules, "steps": steps, "batch_size": batch_size, "lr": lr, "retain": retain,
            "relearn": relearn, "seed": seed, "heldout": judge.limit,
            **({"teacher_temperature": TEACHER_TEMPERATURE, "along_reference": ALONG_REFERENCE}
               if method == "opsd" else {"replay_reference": "own greedy reply, rules kept"}),
            "accuracy_before": before["accuracy"][stage.name],
            "accuracy": after["accuracy"][stage.name],
            "taught": {s.name: after["accuracy"][s.name] for s in plan[: stage.index]},
            "retention_avg": after["retention_avg"],
            "retention_drop": base_measure["retention_avg"] - after["retention_avg"],
            "retention_kl": after["retention_kl"],
            **judge.experiment.compare(base_measure, after),
            "gate": gate(stage.name, before, after, base_measure),
            "learn_seconds": stats["seconds"], "seconds": time.perf_counter() - start,
            "peak_rss_bytes": memory.peak,
            "lessons": [_lesson_json(l) for l in family.lessons],
            "after": after,
        }
        atomic_write_json(folder / f"stage-{stage.index:02d}.json", report)
        _save(student, weights, stage.index)
        progress(f"{method} {stage.name}: {report['accuracy_before']:.3f} -> {report['accuracy']:.3f}, taught "
                 + " ".join(f"{v:.2f}" for v in report["taught"].values())
                 + f", benchmarks {report['retention_drop']:+.4f} since the base, {report['seconds']:.0f} s")
        reports.append(report)
        earlier += family.lessons
        before = {**after, "accuracy": dict(after["accuracy"]), "taught": [r["stage"] for r in reports]}
    return reports


def verdicts(rs: list[dict], base_measure: dict) -> list[dict]:
    """What the gate would say of each stage, from the stage reports' own figures (each stage judged against the
    one before it, the first against the base): the summary's verdicts, whatever a stage file says."""
    out, before = [], {**base_measure, "taught": []}
    for r in rs:
        after = r.get("after")
        if after is None:  # a report without its measure (hand-made): its own verdict
            out.append(r["gate"])
            continue
        before = {**before, "accuracy": {**before["accuracy"], r["stage"]: r["accuracy_before"]}}  # as judged then
        out.append(gate(r["stage"], before, after, base_measure))
        before = {**after, "taught": [*before["taught"], r["stage"]]}
    return out


def summarise(plan, reports: dict[str, list[dict]], base_measure: dict) -> dict:
    """Per method: each stage's accuracy right after it was taught and after the last stage, the share kept, and
    the benchmarks' drop since the base, stage by stage; the targets (``KEPT``, ``MAX_DROP``) judged."""
    out = {"stages": [s.name for s in plan], "base": {"accuracy": base_measure["accuracy"],
                                                       "retention_avg": base_measure["retention_avg"]},
           "targets": {"kept": KEPT, "max_drop": MAX_DROP}, "methods": {}}
    for method, rs in reports.items():
        if not rs:
            continue
        last = rs[-1]
        right_after = {r["stage"]: r["accuracy"] for r in rs}
        final = last["taught"]
        kept = {k: (final[k] / v if v > 0 else None) for k, v in right_after.items()}
        known = [v for v in kept.values() if v is not None]
        out["methods"][method] = {
            "stages_done": len(rs),
            "right_after": right_after, "after_last": final, "kept": kept,
            "min_kept": min(known) if known else None,
            "drop_by_stage": [r["retention_drop"] for r in rs],
            "kl_by_stage": [r["retention_kl"] for r in rs],
            "margin_by_stage": [r.get("retention_norm_margin_shift_avg") for r in rs],
            "gate_passes": [v["passes"] for v in verdicts(rs, base_measure)],
            "final_drop": last["retention_drop"],
            "kept_met": bool(known) and min(known) >= KEPT and len(known) == len(kept),
            "drop_met": last["retention_drop"] <= MAX_DROP,
            "seconds": sum(r["seconds"] for r in rs),
        }
    return out


def plot(summary: dict, reports: dict[str, list[dict]], path: Path) -> None:
    """A panel per method (each stage's held-out accuracy after every stage, from the stage it was taught), and
    the benchmarks' drop since the base after every stage, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in reports if reports[m]]
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(5 * (len(methods) + 1), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rs = reports[method]
        for i, name in enumerate(summary["stages"][: len(rs)]):
            xs = [r["index"] for r in rs[i:]]
            ax.plot(xs, [r["taught"][name] for r in rs[i:]], marker="o", ms=3, label=name)
        ax.set(title=f"{method}: held-out accuracy of each stage", xlabel="after stage", ylim=(-0.02, 1.02))
        ax.legend(fontsize=6)
    ax = axes[0][-1]
    for method in methods:
        ax.plot([r["index"] for r in reports[method]], [r["retention_drop"] for r in reports[method]], marker="o",
                label=method)
    ax.axhline(MAX_DROP, color="grey", ls="--", lw=1)
    ax.set(title="benchmarks: average drop since the base", xlabel="after stage")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sequence(model_dir: Path, out: Path, methods: Sequence[str] = METHODS, stages: int = 10, *,
             steps: int = STEPS, batch_size: int = BATCH_SIZE, lr: float = LR, retain: float = RETAIN,
             relearn: float = RELEARN, seed: int = 0, benchmark_items: int = 100,
             benchmarks: Sequence[str] | None = None, drift_prompts: int = 16, heldout: int | None = None,
             progress=lambda line: None) -> dict:
    """Every method's sequence of ``stages`` (resumed where a folder has some), then ``summary.json`` and
    ``sequence.png`` in ``out``; the summary."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.tokenizer import chat_encoder, load_tokenizer
    from reverie.results import write_result
    from simulators.chatworld.experiment import ChatExperiment
    from simulators.chatworld.prompts import load_pools
    from simulators.chatworld.sequence import plan as make_plan

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; methods are: {', '.join(METHODS)}")
    pools = load_pools()
    plan = make_plan(stages, pools)
    for m in methods:
        _resumable(out / m, plan, heldout)
    encoder = chat_encoder(load_tokenizer(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    experiment = ChatExperiment.build(model, encoder, (), benchmark_items, pools, benchmark_names=benchmarks)
    judge = Judge(plan, experiment, pools, drift_prompts, heldout)
    names = f"-{'-'.join(benchmarks)}" if benchmarks else ""
    asks = f"-{heldout}-heldout" if heldout else ""
    base = base_measure(out / f"base-{benchmark_items}-items{names}{asks}.json", judge, model, encoder)
    for m in methods:
        run_method(model_dir, out, m, plan, judge, base, model, steps=steps, batch_size=batch_size, lr=lr, retain=retain,
                   relearn=relearn, seed=seed, progress=progress)
    reports = {m: finished(out / m, plan) for m in METHODS}  # every method in the folder, this call's or another's
    summary = summarise(plan, reports, base)
    plot(summary, reports, out / "sequence.png")
    return write_result({"what": "chat-world stages taught in a row (bench/sequence.py)", "model": str(model_dir),
                         "benchmark_items": benchmark_items, "drift_prompts": len(judge.general), "heldout": heldout, **summary},
                        out / "summary.json")


__all__ = ["METHODS", "Judge", "batches", "gate", "run_method", "sequence", "summarise"]
