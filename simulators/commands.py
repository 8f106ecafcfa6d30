"""The ``reverie dream`` command (registered into ``reverie.cli`` by ``register``).

It checks what was typed (one-line errors, exit 2, nothing written), builds an
``actors.dreams.DreamConfig`` and runs ``actors.dreams.run`` (the rounds of
rehearse -> learn -> reload -> measure) under a progress bar on stderr; the
report goes to stdout, as one JSON object with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reverie.errors import ReverieError, check_model_dir, parse_seed


# options whose default is the skill's own (a dream family's ``dream_settings``), else DreamConfig's: option -> field
SETTINGS = {"simulators": "simulators", "episodes": "episodes", "rounds": "rounds", "steps": "steps",
            "items": "eval_items", "lr": "lr", "retain": "retain", "benchmark_items": "benchmark_items"}


def _positive(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ReverieError(f"{what} must be a positive whole number, got {text!r}") from None
    if n <= 0:
        raise ReverieError(f"{what} must be a positive whole number, got {text!r}")
    return n


def cmd_dream(args: argparse.Namespace) -> int:
    from actors.dreams import TEACHERS, DreamConfig
    from reverie.models import default_world
    from simulators.model_env import JUDGES
    from simulators.success import CONTEXTS
    from simulators.world import load_world
    from simulators.world_model import SIMULATORS

    model = check_model_dir(args.model)
    world = load_world(args.world or default_world(model))
    if not world.dream_families:
        raise ReverieError(f"the {world.name} world has no skill to dream: none of its families has an environment"
                           + ("" if args.world else " (give --world: chat for calc, with an instruct model)"))
    skill = args.skill or next(iter(world.dream_families))
    if skill not in world.dream_families:
        raise ReverieError(f"unknown skill {skill!r} for dream in the {world.name} world; skills are: "
                           f"{', '.join(world.dream_families) or 'none (the world has no environment)'}")
    data_dir = None
    if args.data_dir is not None:
        data_dir = Path(args.data_dir)
        if data_dir.exists() and not data_dir.is_dir():
            raise ReverieError(f"--data-dir {str(data_dir)!r} exists and is not a directory")
        from actors.store import StoreBusyError, check_no_writer

        try:
            check_no_writer(str(data_dir))
        except StoreBusyError as e:
            raise ReverieError(f"--data-dir: {e}") from None
    given = {}  # what was typed; the rest is the skill's own settings, else DreamConfig's
    if args.lr is not None:
        try:
            given["lr"] = float(args.lr)
        except ValueError:
            raise ReverieError(f"--lr must be a number, got {args.lr!r}") from None
        if not 0 < given["lr"] < 1:
            raise ReverieError(f"--lr must be between 0 and 1, got {args.lr!r}")
    if args.retain is not None:
        try:
            given["retain"] = float(args.retain)
        except ValueError:
            raise ReverieError(f"--retain must be a number, got {args.retain!r}") from None
        if not 0 <= given["retain"] < 1:
            raise ReverieError(f"--retain must be at least 0 and below 1, got {args.retain!r}")
    for option, low, high in (("temperature", 0, 2), ("passes", 0, 100)):
        text = getattr(args, option)
        if text is None:
            continue
        try:
            given[option] = float(text)
        except ValueError:
            raise ReverieError(f"--{option} must be a number, got {text!r}") from None
        if not low <= given[option] <= high:
            raise ReverieError(f"--{option} must be between {low} and {high}, got {text!r}")
    for option, field in SETTINGS.items():
        text = getattr(args, option)
        if text is not None and field not in given:
            given[field] = _positive(text, "--" + option.replace("_", "-"))
    if args.env not in ("real", "simulated"):
        raise ReverieError(f"--env must be real or simulated, got {args.env!r}")
    if args.simulator not in SIMULATORS:
        raise ReverieError(f"--simulator must be one of {', '.join(SIMULATORS)}, got {args.simulator!r}")
    try:
        min_agreement = float(args.min_agreement)
    except ValueError:
        raise ReverieError(f"--min-agreement must be a number, got {args.min_agreement!r}") from None
    if not 0 <= min_agreement <= 1:
        raise ReverieError(f"--min-agreement must be between 0 and 1, got {args.min_agreement!r}")
    if args.judge not in JUDGES:
        raise ReverieError(f"--judge must be one of {', '.join(JUDGES)}, got {args.judge!r}")
    if args.fallback not in ("real", "skip"):
        raise ReverieError(f"--fallback must be real or skip, got {args.fallback!r}")
    for field, choices in (("teacher_context", CONTEXTS), ("teacher", TEACHERS)):
        chosen = getattr(args, field)
        if chosen is not None and chosen not in choices:
            raise ReverieError(f"--{field.replace('_', '-')} must be one of {', '.join(choices)}, got {chosen!r}")
        if chosen is not None:
            given[field] = chosen
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise ReverieError(f"--out {args.out!r} must be a file in an existing folder")
    settings = {**getattr(world.dream_families[skill], "dream_settings", {}), **given}
    cfg = DreamConfig(
        model_dir=model, skill=skill, world=args.world or default_world(model), **settings,
        seed=parse_seed(args.seed), data_dir=data_dir, env=args.env, simulator=args.simulator,
        recorded=_positive(args.recorded, "--recorded"), min_agreement=min_agreement, fallback=args.fallback,
        simulator_steps=_positive(args.simulator_steps, "--simulator-steps"), judge=args.judge,
    )
    report = _run_with_bar(cfg, quiet=args.quiet)
    if out is not None:
        from reverie.results import write_result

        report = write_result({"command": "reverie " + " ".join(sys.argv[1:]), **report}, out)
    print(json.dumps(report) if args.json else format_dream(report))
    return 0


def _run_with_bar(cfg, quiet: bool) -> dict:
    from tqdm import tqdm

    from actors.dreams import run

    total = cfg.rounds * (cfg.episodes + cfg.steps * 1) + (cfg.recorded if cfg.env == "simulated" else 0)
    bar = tqdm(total=total, desc="dream", unit="step", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    state = {"round": 1}

    def progress(phase: str, n: int) -> None:
        if phase == "measure" and n == 0 and bar.n > 0:
            state["round"] += 1
        bar.set_description(f"dream round {min(state['round'], cfg.rounds)}: {phase}")
        bar.update(n)

    try:
        return run(cfg, progress)
    finally:
        bar.close()


def format_dream(r: dict) -> str:
    where = "the real environment" if r["env"] == "real" else \
        f"a {r['simulator']} simulator built from {r['recorded']} recorded episodes"
    lines = [f"dream on {r['skill']} in {where}: {r['episodes']} episodes, {r['simulators']} simulators, "
             f"{r['seconds']:.0f} s",
             f"  held-out success  {r['success_before']:.3f} -> {r['success_after']:.3f}  (real environment)",
             f"  retention         {r['retention_avg']:.3f}   forgetting {r['forgetting']:+.3f}",
             f"  episodes/s        {r['episodes_per_second']:.1f}"]
    if r["env"] == "simulated":
        agreement = "nothing dreamt to replay" if r["agreement"] is None else f"{r['agreement']:.3f}"
        lines.append(f"  agreement         {agreement} of dreamed successes replayed for real")
        if r["switched_off"]:
            off = r["switched_off"]
            lines.append(f"  switched off      round {off['round']}: agreement {off['agreement']:.3f} < "
                         f"{off['min_agreement']}; then {off['fallback']}")
    if r["verifier_accepts_right"] is not None or r["verifier_rejects_wrong"] is not None:
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"  family verifier   accepts right {fmt(r['verifier_accepts_right'])}, rejects wrong "
                     f"{fmt(r['verifier_rejects_wrong'])}")
    by = r.get("episodes_per_second_by_simulators") or {}
    if by:
        lines.append("  scaling           " + ", ".join(f"{n} sim: {v:.1f}/s" for n, v in by.items()))
    return "\n".join(lines)


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``dream`` to the ``reverie`` command line's subparsers."""
    from actors.dreams import DreamConfig
    from simulators.chatworld.calc import CalcFamily
    from simulators.tinyworld.build import SHIPPED_MODEL

    d = DreamConfig(model_dir=SHIPPED_MODEL)
    p = subparsers.add_parser(
        "dream", help="rehearse a skill in simulated environments, keep verified successes, distil them; measure")
    p.add_argument("--skill", default=None, help="the skill to rehearse, a dream family of the world (default: the "
                   "world's first: tools in the tiny world, calc in the chat world)")
    calc = CalcFamily.dream_settings

    def default(field: str) -> str:
        return f"(default {getattr(d, field)}, or the skill's own: {calc[field]} for calc)"

    p.add_argument("--simulators", default=None, help="simulator workers " + default("simulators"))
    p.add_argument("--episodes", default=None, help="episodes rehearsed per round " + default("episodes"))
    p.add_argument("--rounds", default=None, help="rehearse-distil rounds " + default("rounds"))
    p.add_argument("--steps", default=None, help="learner updates per round (at most, with --passes) " + default("steps"))
    p.add_argument("--passes", default=None,
                   help="0: every round learns --steps updates; above 0: a round learns this many passes over the "
                        "states of the successes it kept, at most --steps updates, none when it kept nothing "
                        + default("passes"))
    p.add_argument("--temperature", default=None,
                   help="the policy's sampling temperature when it rehearses " + default("temperature"))
    p.add_argument("--lr", default=None, help="AdamW learning rate " + default("lr"))
    p.add_argument("--retain", default=None, help="share of each learner batch that replays base skills, in a world "
                   f"that has a replay (default {d.retain}; the chat world has none)")
    p.add_argument("--items", default=None, help="held-out tasks measured " + default("eval_items"))
    p.add_argument("--benchmark-items", default=None,
                   help="items of each retention benchmark, for a skill measured on benchmarks (calc: 100, the chat "
                        "world's; the tiny world's skills are measured on their own tasks)")
    p.add_argument("--env", default=d.env,
                   help="where rehearsals play: real (the task's environment) or simulated (a simulator built from "
                        "recorded episodes; the real environment only records them first, replays a sample of "
                        "dreamed successes and measures) (default %(default)s)")
    p.add_argument("--simulator", default=d.simulator,
                   help="with --env simulated: retrieval (the model shown the nearest recorded transitions), "
                        "trained (a copy fine-tuned on them) or both (default %(default)s)")
    p.add_argument("--recorded", default=str(d.recorded),
                   help="with --env simulated: episodes the base policy plays for real first, recorded as a "
                        "user's agent would be (default %(default)s)")
    p.add_argument("--min-agreement", default=str(d.min_agreement),
                   help="with --env simulated: below this share of dreamed successes replaying for real, the "
                        "simulator is switched off (default %(default)s)")
    p.add_argument("--judge", default=d.judge,
                   help="with --env simulated, what decides a dreamed success: family (the task family's own "
                        "verifier, from the episode's observations) or vote (the simulator's nearest recorded "
                        "endings, as for a family with no verifier) (default %(default)s)")
    p.add_argument("--fallback", default=d.fallback,
                   help="after a switch-off: real (rehearse in the real environment) or skip (default %(default)s)")
    p.add_argument("--simulator-steps", default=str(d.simulator_steps),
                   help="fine-tuning steps of a trained simulator (default %(default)s)")
    p.add_argument("--seed", default=str(d.seed), help="random seed (default %(default)s)")
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="base model directory (default: the shipped one)")
    p.add_argument("--world", default=None,
                   help="the world whose family --skill is: tiny, or a plug-in as package.module:Class (default: "
                        "the model's own: tiny for the shipped model)")
    p.add_argument("--data-dir", default=None,
                   help="experience store directory: recorded asks seed the proposer, kept trajectories are written "
                        "there (default: a new temporary directory); not one a running store writes to (such as "
                        "`reverie serve`'s: one writer per data directory), where the loop dreams by itself")
    p.add_argument("--teacher-context", default=None,
                   help="whose kept success the teacher is shown beside a state: other (another task's, so it must "
                        "transfer the skill) or same (the state's own task's, SDFT's demonstration) (default "
                        f"{d.teacher_context}, or the skill's own)")
    p.add_argument("--teacher", default=None,
                   help="the teacher state's weights: base (the model the dream started from, frozen) or parent "
                        f"(each round, a frozen copy of the policy that rehearsed it) (default {d.teacher}, or the "
                        "skill's own)")
    p.add_argument("--out", default=None, help="also write the report, stamped with the machine, to this JSON file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dream)
    return p
