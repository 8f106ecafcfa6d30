"""The YAML config of ``reverie serve``, checked against one typed schema made from ``reverie/config.py``.

``reverie serve --config reverie.yaml`` reads a file of this shape (every field is optional except where
noted; what is left out keeps its default, shown here)::

    # reverie.yaml
    model_dir: ./simulators/tinyworld/model   # a local Hugging Face causal-LM directory
                                              # (the command's default: the shipped tiny-world model)
    world: null                       # tiny, chat, none, or package.module:Class (null: tiny for the shipped model, none for others)
    data_dir: ./reverie-data          # the experience store: a path or a pyarrow.fs URI (s3://...)
    versions_dir: null                # policy versions, a local path (null: DATA_DIR/versions)
    replicas: 1                       # vLLM engine replicas, 1 to 64
    host: 127.0.0.1                   # the address the API listens on (0.0.0.0: every interface)
    port: 8000                        # the API's port
    model_id: reverie                 # the model name the OpenAI API answers to
    swap_mode: wait                   # wait, keep, abort or standby (see reverie serve --help)
    swap_timeout_s: 120               # seconds a swap may take before it is undone
    weight_transport: auto            # auto, shm or object_store: how new weights reach the replicas
    store_name: reverie-experience-store   # the experience store's Ray actor name
    store_flush_seconds: 1.0          # how often the store writes what arrived to Parquet
    seed: 0                           # the engines' sampling seed
    redact_feedback: false            # true: feedback text is never shown to people (admin API, review page)
    pin_cpus: true                    # keep the engine's cores to it (reverie serve's default without --address; the dataclass's: false)
    extra_engine_kwargs: {}           # passed to the vLLM engine as they are
    loop:                             # the controller's cycle
      learn: true                     # false: serve and record only
      approval: auto                  # auto, or required: a person approves each candidate that passes the gate
      min_feedback: 2                 # new feedback records (rule or correction) that start a cycle
      period_s: 0                     # also start a cycle this often when there is anything new (0: never)
      poll_s: 2.0                     # seconds between the controller's looks at the store
      method: opsd                    # or sft (the baseline)
      steps: 120                      # learner updates per cycle
      batch_size: 32                  # lessons per learner update
      lr: 1e-4                        # the learner's AdamW learning rate
      retain: 0.5                     # share of each batch replaying base skills, in [0, 1)
      replay_focus: 0.5               # share of the replay on the old skills most like the new lessons, in [0, 1)
      relearn: 0.5                    # share of the feedback lessons, at most, re-teaching earlier cycles', in [0, 1)
      teacher_temperature: null       # the teacher's temperature, in (0, 10] (null: the world's; 1.0 if it has none)
      along_reference: null           # share of corrected lessons scored along the correction, in [0, 1] (null: the world's; 0 if none)
      checkpoint_every: 50            # updates between checkpoints a restarted controller resumes from
      learner_threads: 1              # torch threads of a CPU learner (> 1: on every core, below serving's priority)
      variations: 0.75                # in [0, 1)
      mix: records                    # feedback and dream lessons: records (in proportion to them) or turns (half each)
      dream: true                     # rehearse recorded asks of a family with an environment
      min_episodes: 4                 # new recorded asks of such a family that start a cycle
      dream_episodes: 128             # rehearsed per cycle
      simulators: 1                   # simulator workers per dream, on each simulator node
      dream_env: real                 # or simulated: in a simulator built from the family's recorded episodes
      simulator: trained              # retrieval, trained or both (with dream_env: simulated)
      simulator_steps: 300            # fine-tuning steps of a trained simulator
      min_agreement: 0.8              # dreamed successes replaying for real below this: simulator switched off
      dream_fallback: real            # after a switch-off: real (dream in the real environment) or skip
      seed: 0                         # seeds each cycle's lesson order and sampling
    gate:                             # what a candidate must show before it is served
      min_gain: 0.2                   # held-out new tasks: net share of the parent's failures fixed, in [0, 1)
      max_retention_loss: 0.01        # retention accuracy lost against the parent and the base, in [0, 1)
      max_family_loss: 0.1            # held-out and earlier learnt tasks: accuracy one family may lose, in [0, 1)
      learnt_items: 144               # tasks per family that earlier versions learnt, held to (newest first)
      retention_suite: null           # a JSONL file (null: the tiny world's base skills)
      retention_items: 100            # items per retention skill of the suite
      benchmark_items: 100            # items per retention benchmark (a world with them: chat)
      drift_prompts: 16               # general prompts for KL(base || candidate) per token (a world with them: chat)
      max_drift: null                 # nats per token a candidate may drift from the base (null: reported only)
      heldout_items: 48               # held-out new tasks per family
      samples: 6                      # before/after answers kept per family for the review
      max_tokens: 32                  # greedy reply length while judging

Precedence: the dataclass defaults < the command's own defaults (``defaults=``) < the file < the flags
given on the command line (a flag left out does not override the file).  Relative paths in the file
(``model_dir``, ``versions_dir``, a local ``data_dir``, ``gate.retention_suite``) are relative to the
file's directory, and ``~`` is expanded; given on the command line, or left at a default, they are resolved
against the current directory before anything starts, so the store and the controller (Ray's processes, with
working directories of their own) open the folder the user meant.

The schema is built from the dataclasses' fields and the ``RULES`` below (one ``reverie.args.Rule`` per
field), with pydantic in strict mode and ``extra="forbid"``: ``steps: "300"`` or ``learn: 1`` are refused,
and so is a key the dataclasses do not have.  YAML's one surprise is smoothed: ``1e-4`` reads as a
number (YAML 1.1 would make it a string).  A key given twice is an error.  Every refusal is one
``ReverieError`` line that names the field by its dotted path, or the flag that gave it::

    reverie.yaml: loop.steps: must be a positive whole number, got 'many'
    reverie.yaml: unknown field gate.min_gian (did you mean gate.min_gain?)
    --port must be a whole number from 1 to 65535, got 'http'
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any

from reverie import args as a
from reverie.config import (APPROVAL_MODES, DREAM_ENVS, DREAM_FALLBACKS, METHODS, MIXES, SIMULATORS, SWAP_MODES,
                            WEIGHT_TRANSPORTS, WORLDS, GateConfig, LoopConfig, ServeConfig)
from reverie.errors import ReverieError, check_model_dir

# One rule per field of ServeConfig, LoopConfig (loop.*) and GateConfig (gate.*).
RULES: dict[str, a.Rule] = {
    "model_dir": a.PATH,
    "world": a.optional(a.TEXT),
    "data_dir": a.PATH,
    "versions_dir": a.optional(a.PATH),
    "replicas": a.whole(1, 64),
    "host": a.TEXT,
    "port": a.PORT,
    "model_id": a.TEXT,
    "swap_mode": a.one_of(*SWAP_MODES),
    "swap_timeout_s": a.SECONDS,
    "weight_transport": a.one_of(*WEIGHT_TRANSPORTS),
    "store_name": a.TEXT,
    "store_flush_seconds": a.SECONDS,
    "seed": a.SEED,
    "redact_feedback": a.FLAG,
    "pin_cpus": a.FLAG,
    "extra_engine_kwargs": a.MAPPING,
    "loop.learn": a.FLAG,
    "loop.approval": a.one_of(*APPROVAL_MODES),
    "loop.min_feedback": a.POSITIVE,
    "loop.period_s": a.PERIOD,
    "loop.poll_s": a.SECONDS,
    "loop.method": a.one_of(*METHODS),
    "loop.steps": a.POSITIVE,
    "loop.batch_size": a.POSITIVE,
    "loop.lr": a.LEARNING_RATE,
    "loop.retain": a.FRACTION,
    "loop.replay_focus": a.FRACTION,
    "loop.relearn": a.FRACTION,
    "loop.teacher_temperature": a.optional(a.TEMPERATURE),
    "loop.along_reference": a.optional(a.SHARE),
    "loop.checkpoint_every": a.COUNT,
    "loop.learner_threads": a.POSITIVE,
    "loop.variations": a.FRACTION,
    "loop.mix": a.one_of(*MIXES),
    "loop.dream": a.FLAG,
    "loop.min_episodes": a.POSITIVE,
    "loop.dream_episodes": a.POSITIVE,
    "loop.simulators": a.POSITIVE,
    "loop.dream_env": a.one_of(*DREAM_ENVS),
    "loop.simulator": a.one_of(*SIMULATORS),
    "loop.simulator_steps": a.POSITIVE,
    "loop.min_agreement": a.FRACTION,
    "loop.dream_fallback": a.one_of(*DREAM_FALLBACKS),
    "loop.seed": a.SEED,
    "gate.min_gain": a.FRACTION,
    "gate.max_retention_loss": a.FRACTION,
    "gate.max_family_loss": a.FRACTION,
    "gate.learnt_items": a.COUNT,
    "gate.retention_suite": a.optional(a.PATH),
    "gate.retention_items": a.POSITIVE,
    "gate.benchmark_items": a.POSITIVE,
    "gate.drift_prompts": a.COUNT,
    "gate.max_drift": a.optional(a.NON_NEGATIVE),
    "gate.heldout_items": a.POSITIVE,
    "gate.samples": a.COUNT,
    "gate.max_tokens": a.POSITIVE,
}
SECTIONS = {"loop": LoopConfig, "gate": GateConfig}
PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # a world of the user's: package.module:Class
# Fields that hold a local path: relative ones in the file are taken relative to the file's directory.
PATHS = ("model_dir", "versions_dir", "data_dir", "gate.retention_suite")

# Each flag of ``reverie serve`` that sets a config field (``--address`` and ``--key-file`` are deployment,
# not configuration).  The flag's argparse ``dest`` is ``flag_dest(field)``; a flag left out is None.
SERVE_FLAGS: dict[str, str] = {
    "model_dir": "--model",
    "world": "--world",
    "replicas": "--replicas",
    "host": "--host",
    "port": "--port",
    "data_dir": "--data-dir",
    "versions_dir": "--versions-dir",
    "swap_mode": "--swap-mode",
    "swap_timeout_s": "--swap-timeout",
    "pin_cpus": "--no-cpu-pinning",
    "redact_feedback": "--redact-feedback",
    "loop.learn": "--no-learn",
    "loop.approval": "--approval",
    "loop.min_feedback": "--min-feedback",
    "loop.steps": "--steps",
}


def flag_dest(field: str) -> str:
    return field.replace(".", "_")


def flags_given(args) -> dict[str, Any]:
    """{field: value} for each of ``SERVE_FLAGS`` given on the command line (argparse ``args``)."""
    given = {}
    for field in SERVE_FLAGS:
        value = getattr(args, flag_dest(field), None)
        if value is not None:
            given[field] = value
    return given


# ------------------------------------------------------------------ the schema
def _sections() -> dict[str, type]:
    return {"": ServeConfig, **{f"{name}.": cls for name, cls in SECTIONS.items()}}


def _schema():
    """Pydantic models of ServeConfig, LoopConfig and GateConfig: every field required (defaults are merged
    in before), strict types, unknown fields refused."""
    from pydantic import ConfigDict, create_model

    def model(cls, prefix: str):
        hints = typing.get_type_hints(cls)
        spec = {}
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                spec[f.name] = (model(hints[f.name], f"{prefix}{f.name}."), ...)
            else:
                if f"{prefix}{f.name}" not in RULES:
                    raise TypeError(f"config field {prefix}{f.name} has no rule in reverie.config_file.RULES")
                spec[f.name] = (RULES[f"{prefix}{f.name}"].annotation(), ...)
        return create_model(f"{cls.__name__}Schema", __config__=ConfigDict(extra="forbid", strict=True), **spec)

    return model(ServeConfig, "")


_SCHEMA = None


def schema():
    """The pydantic model that a merged config is validated with (built once)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = _schema()
    return _SCHEMA


def fields() -> list[str]:
    """Every config field's dotted name, in the dataclasses' order."""
    out = []
    for f in dataclasses.fields(ServeConfig):
        if f.name in SECTIONS:
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(SECTIONS[f.name])]
        else:
            out.append(f.name)
    return out


def default(field: str) -> Any:
    """The dataclass default of a dotted field (``dataclasses.MISSING`` for ``model_dir``)."""
    section, _, name = field.rpartition(".")
    cls = SECTIONS[section] if section else ServeConfig
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# ------------------------------------------------------------------ reading the file
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """``yaml.safe_load``, plus: ``1e-4`` is a number, and a key given twice is an error."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader says so itself
                    continue
                if twice:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def load_config(path: str | Path) -> dict:
    """The YAML mapping in ``path`` (not yet checked against the schema: ``build_config`` does that)."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ReverieError(f"config file {str(p)!r} does not exist")
    if not p.is_file():
        raise ReverieError(f"config file {str(p)!r} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReverieError(f"cannot read config file {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        values = yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ReverieError(f"{p}: not valid YAML: {problem}{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ReverieError(f"{p}: must be a mapping of settings (model_dir: ..., loop: ..., gate: ...), "
                           f"got {type(values).__name__} {values!r}"[:300])
    return values


# ------------------------------------------------------------------ merging and checking
def _get(tree: dict, field: str, missing=dataclasses.MISSING):
    node: Any = tree
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def _set(tree: dict, field: str, value) -> None:
    *sections, name = field.split(".")
    node = tree
    for s in sections:
        if not isinstance(node.get(s), dict):
            node[s] = {}
        node = node[s]
    node[name] = value


def _with_paths_resolved(file_values: dict, base: Path) -> dict:
    values = copy.deepcopy(file_values)
    for field in PATHS:
        v = _get(values, field)
        if isinstance(v, str) and v and not (field == "data_dir" and "://" in v):
            p = Path(v).expanduser()
            _set(values, field, str(p if p.is_absolute() else base / p))
    return values


def _field_of(loc: tuple) -> str:
    """The dotted config field (or section, or unknown key) a pydantic error location points at."""
    parts = []
    for part in loc:
        parts.append(str(part))
        if ".".join(parts) in RULES:
            break
    return ".".join(parts)


def _unknown(field: str) -> str:
    close = difflib.get_close_matches(field, fields() + list(SECTIONS), n=1, cutoff=0.75)
    return f"unknown field {field}" + (f" (did you mean {close[0]}?)" if close else "")


def build_config(file_values: dict, flags: dict, *, source: str | Path | None = None,
                 defaults: dict | None = None) -> ServeConfig:
    """The ``ServeConfig`` of: the dataclass defaults < ``defaults`` (the command's own, by dotted field)
    < ``file_values`` (from ``load_config(source)``) < ``flags`` ({dotted field: value} of the flags given;
    text from argparse is read as the field's kind).  Relative paths: in the file, below the file's folder;
    from a flag or a default, below the working directory.  A ReverieError names the first bad field."""
    from pydantic import ValidationError

    where = str(source) if source is not None else "config"
    if not isinstance(file_values, dict):
        raise ReverieError(f"{where}: must be a mapping of settings, got {file_values!r}"[:300])
    if source is not None:
        file_values = _with_paths_resolved(file_values, Path(source).expanduser().resolve().parent)
    merged: dict = {}
    for field in fields():
        d = default(field)
        if d is not dataclasses.MISSING:
            _set(merged, field, copy.deepcopy(d))
    for field, value in (defaults or {}).items():
        _set(merged, field, value)
    for key, value in file_values.items():
        if key in SECTIONS and isinstance(value, dict):
            merged[key].update(value)
        elif key in SECTIONS and value is None:  # "loop:" with nothing under it
            continue
        else:
            merged[key] = value
    typed_flags = {}
    for field, value in flags.items():
        if field not in RULES:
            raise ValueError(f"no config field {field!r}")  # a programming error, not the user's
        typed_flags[field] = RULES[field].from_text(value) if isinstance(value, str) else value
        _set(merged, field, typed_flags[field])

    def name(field: str, value) -> tuple[str, Any]:
        """How an error names a field, and the value it shows: the flag and its text, or the file's field."""
        if field in flags and field in SERVE_FLAGS:
            return SERVE_FLAGS[field], flags[field]
        if _get(file_values, field) is not dataclasses.MISSING:
            return f"{where}: {field}:", value
        return f"{field}:", value

    # What is still relative (a flag, a default) names a folder below where the command was typed: Ray's
    # processes that open it (the store, the controller, on a cluster) have another working directory.
    merged = _with_paths_resolved(merged, Path.cwd())
    try:
        checked = schema().model_validate(merged)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = errors[0]
        field = _field_of(first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        if first["type"] == "extra_forbidden":
            raise ReverieError(f"{where}: {_unknown(field)}{more}") from None
        if first["type"] == "missing":
            flag = SERVE_FLAGS.get(field)
            raise ReverieError(f"{field} is required: give it in the config file"
                               + (f" or with {flag}" if flag else "") + more) from None
        if field in SECTIONS:
            raise ReverieError(f"{where}: {field}: must be a mapping of {field} settings, got {first['input']!r}"
                               + more) from None
        what, shown = name(field, first["input"])
        bounds = first["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal",
                                   "finite_number", "string_too_short")
        raise ReverieError(RULES[field].message(what, shown, out_of_bounds=bounds) + more) from None
    values = checked.model_dump()

    model_what = name("model_dir", values["model_dir"])[0]
    try:
        model = check_model_dir(values["model_dir"])
    except ReverieError as e:
        raise ReverieError(str(e) if model_what.startswith("--") else f"{model_what} {e}") from None
    world = values["world"]
    if world is not None and world not in WORLDS and not PLUGIN.fullmatch(world):
        raise ReverieError(f"{name('world', world)[0]} must be one of {', '.join(WORLDS)}, or a plug-in as "
                           f"package.module:Class, got {world!r}")
    suite = values["gate"]["retention_suite"]
    if suite is not None and not Path(suite).is_file():
        raise ReverieError(f"{name('gate.retention_suite', suite)[0]} no such file {suite!r}")
    versions = values["versions_dir"]
    cfg = ServeConfig(**{**values, "model_dir": model, "versions_dir": Path(versions) if versions else None,
                         "loop": LoopConfig(**values["loop"]), "gate": GateConfig(**values["gate"])})
    try:
        cfg.resolved_versions_dir()
    except ValueError:
        what = name("data_dir", cfg.data_dir)[0]
        raise ReverieError(f"{what} {cfg.data_dir!r} is not a local path, so the versions need a local directory "
                           "of their own: give versions_dir (--versions-dir)") from None
    return cfg


# ------------------------------------------------------------------ the reference (docs/guide.md)
REFERENCE_BEGIN = "<!-- the configuration reference: generated by `python -m reverie.config_file --write docs/guide.md` -->"
REFERENCE_END = "<!-- end of the generated configuration reference -->"


def meanings() -> dict[str, str]:
    """Each field's meaning: the comment beside it in this module's example, with the comment lines under it."""
    example = re.search(r"    # reverie.yaml\n(.*?)\n\n", __doc__, re.S).group(1)
    out: dict[str, str] = {}
    path: list[str] = []
    last = None
    for line in example.splitlines()[0:]:
        body = line[4:]
        comment_only = re.match(r"^\s+#\s?(.*)$", body)
        if comment_only and last is not None:
            out[last] = f"{out[last]} {comment_only[1].strip()}".strip()
            continue
        m = re.match(r"^( *)([a-z_]+):[^#]*?(?:#\s?(.*))?$", body)
        if not m:
            continue
        depth = len(m[1]) // 2
        path = path[:depth] + [m[2]]
        last = ".".join(path)
        out[last] = (m[3] or "").strip()
    return {f: out.get(f, "") for f in fields()}


def _allowed(rule: a.Rule) -> str:
    wants = rule.wants.removeprefix("must be ")
    bounds = rule.bounds.replace("must not be", "not").removeprefix("must be ")
    if bounds and wants.endswith(("a number", "a number of seconds")):
        return f"{wants}, {bounds}"
    return wants


def _shown(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "the shipped tiny-world model"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def reference() -> str:
    """Every field of the YAML file as a Markdown table: its dotted key, default, the flag of ``reverie serve``
    that sets it, what it may be (its rule) and what it means."""
    said = meanings()
    rows = ["| key | default | flag | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in fields():
        cell = lambda text: text.replace("|", "\\|")  # noqa: E731
        rows.append(f"| `{f}` | `{cell(_shown(default(f)))}` | {f'`{SERVE_FLAGS[f]}`' if f in SERVE_FLAGS else ''} | "
                    f"{cell(_allowed(RULES[f]))} | {cell(said[f])} |")
    return "\n".join(rows)


def with_reference(text: str) -> str:
    """``text`` (a Markdown document) with the part between the reference's markers made :func:`reference`."""
    start, end = text.find(REFERENCE_BEGIN), text.find(REFERENCE_END)
    if start < 0 or end < start:
        raise ReverieError(f"the document has no {REFERENCE_BEGIN!r} ... {REFERENCE_END!r} block")
    return f"{text[:start]}{REFERENCE_BEGIN}\n{reference()}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    """``python -m reverie.config_file``: print the reference; ``--write FILE``: put it between FILE's markers."""
    import argparse

    from reverie.files import atomic_write_text

    p = argparse.ArgumentParser(prog="python -m reverie.config_file", description=main.__doc__)
    p.add_argument("--write", default=None, help="a Markdown file holding the reference's markers")
    args = p.parse_args(argv)
    if args.write is None:
        print(reference())
        return 0
    path = Path(args.write)
    atomic_write_text(path, with_reference(path.read_text(encoding="utf-8")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
