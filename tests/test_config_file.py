"""``reverie serve --config FILE``: one typed schema made from reverie/config.py checks the YAML file and
the flags alike; defaults < file < flags given; every refusal is one line naming the dotted field (or the
flag), exit 2, before any key file is written or Ray starts."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from reverie import config_file
from reverie.config import GateConfig, LoopConfig, ServeConfig
from reverie.config_file import RULES, SERVE_FLAGS, build_config, load_config
from simulators.tinyworld.build import SHIPPED_MODEL

FULL = f"""
model_dir: {SHIPPED_MODEL}
data_dir: data
versions_dir: /tmp/reverie-versions
replicas: 2
host: 0.0.0.0
port: 8123
model_id: helper
swap_mode: standby
swap_timeout_s: 30
store_name: my-store
store_flush_seconds: 0.5
seed: 7
pin_cpus: false
extra_engine_kwargs: {{max_model_len: 512}}
loop:
  learn: true
  approval: required
  min_feedback: 5
  period_s: 600
  poll_s: 1.5
  method: sft
  steps: 40
  batch_size: 16
  lr: 3e-5
  retain: 0.25
  checkpoint_every: 10
  variations: 0.5
  seed: 3
gate:
  min_gain: 0.1
  max_retention_loss: 0.02
  retention_suite: suite.jsonl
  retention_items: 20
  heldout_items: 12
  samples: 2
  max_tokens: 16
"""


def _serve_args(*argv: str):
    from reverie.cli import parser

    return parser().parse_args(["serve", *argv])


def _serve_config(*argv: str) -> ServeConfig:
    from serve.commands import serve_config

    return serve_config(_serve_args(*argv))


def test_a_full_yaml_file_loads_into_the_expected_serve_config(tmp_path):
    (tmp_path / "suite.jsonl").write_text("{}\n")
    path = tmp_path / "reverie.yaml"
    path.write_text(FULL)
    cfg = _serve_config("--config", str(path))
    assert cfg == ServeConfig(
        model_dir=Path(str(SHIPPED_MODEL)), data_dir=str(tmp_path / "data"),
        versions_dir=Path("/tmp/reverie-versions"), replicas=2, host="0.0.0.0", port=8123, model_id="helper",
        swap_mode="standby", swap_timeout_s=30.0, store_name="my-store", store_flush_seconds=0.5, seed=7,
        pin_cpus=False, extra_engine_kwargs={"max_model_len": 512},
        loop=LoopConfig(learn=True, approval="required", min_feedback=5, period_s=600.0, poll_s=1.5, method="sft",
                        steps=40, batch_size=16, lr=3e-5, retain=0.25, checkpoint_every=10, variations=0.5, seed=3),
        gate=GateConfig(min_gain=0.1, max_retention_loss=0.02, retention_suite=str(tmp_path / "suite.jsonl"),
                        retention_items=20, heldout_items=12, samples=2, max_tokens=16))
    assert isinstance(cfg.swap_timeout_s, float) and isinstance(cfg.loop.lr, float)


def test_the_documented_example_is_a_valid_config_of_the_defaults(tmp_path):
    example = re.search(r"    # reverie.yaml\n(.*?)\n\n", config_file.__doc__, re.S).group(1)
    text = "\n".join(line[4:] for line in example.splitlines())
    path = tmp_path / "reverie.yaml"
    path.write_text(text.replace("./simulators/tinyworld/model", str(SHIPPED_MODEL)))
    values = load_config(path)
    assert set(values) == {f.name for f in dataclasses.fields(ServeConfig)}  # every section and field shown
    cfg = build_config(values, {}, source=path)
    want = ServeConfig(model_dir=Path(str(SHIPPED_MODEL)), data_dir=str(tmp_path / "reverie-data"), pin_cpus=True)
    drift = [f for f in config_file.fields() if config_file._get(dataclasses.asdict(cfg), f)
             != config_file._get(dataclasses.asdict(want), f)]
    assert not drift, f"reverie/config_file.py's example shows other defaults than reverie/config.py: {drift}"


def test_no_file_and_no_flags_give_the_dataclass_defaults_and_the_shipped_model():
    cfg = _serve_config()
    assert cfg == ServeConfig(model_dir=Path(str(SHIPPED_MODEL)), pin_cpus=True,
                              data_dir=str(Path.cwd() / "reverie-data"))  # the default, where the command runs


def test_flags_given_override_the_file_and_flags_left_out_do_not(tmp_path):
    path = tmp_path / "reverie.yaml"
    path.write_text("replicas: 2\nport: 8123\nloop:\n  steps: 40\n  approval: required\n  min_feedback: 5\n")
    cfg = _serve_config("--config", str(path), "--port", "9001", "--steps", "7", "--no-learn",
                        "--approval", "auto", "--swap-mode", "keep", "--swap-timeout", "15")
    assert (cfg.port, cfg.loop.steps, cfg.loop.learn, cfg.loop.approval) == (9001, 7, False, "auto")
    assert (cfg.swap_mode, cfg.swap_timeout_s) == ("keep", 15.0)
    assert (cfg.replicas, cfg.loop.min_feedback) == (2, 5)  # from the file: no flag given


def test_cpu_pinning_is_off_with_no_cpu_pinning_or_a_cluster_address_even_if_the_file_asks(tmp_path):
    path = tmp_path / "reverie.yaml"
    path.write_text("pin_cpus: true\n")
    assert _serve_config("--config", str(path)).pin_cpus is True
    assert _serve_config("--config", str(path), "--no-cpu-pinning").pin_cpus is False
    assert _serve_config("--config", str(path), "--address", "auto").pin_cpus is False


def test_relative_paths_in_the_file_are_relative_to_its_directory(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "reverie.yaml").write_text("data_dir: ../data\nversions_dir: versions\n")
    monkeypatch.chdir(tmp_path.parent)
    cfg = _serve_config("--config", str(conf / "reverie.yaml"))
    assert Path(cfg.data_dir).resolve() == tmp_path / "data"
    assert cfg.versions_dir.resolve() == conf / "versions"


def test_every_config_field_has_one_rule_and_every_serve_flag_sets_a_field():
    assert set(config_file.fields()) == set(RULES)
    assert set(SERVE_FLAGS) <= set(RULES)
    from reverie.cli import parser

    sub = next(a for a in parser()._subparsers._group_actions).choices["serve"]
    flags = {o for a in sub._actions for o in a.option_strings} - {"-h", "--help"}
    assert flags - {"--config", "--address", "--key-file"} == set(SERVE_FLAGS.values())


def test_serve_help_shows_the_real_defaults_of_the_dataclasses():
    from reverie.cli import parser

    sub = next(a for a in parser()._subparsers._group_actions).choices["serve"]
    help_of = {o: a.help for a in sub._actions for o in a.option_strings}
    assert f"(default {LoopConfig().steps})" in help_of["--steps"]
    assert f"(default {LoopConfig().min_feedback})" in help_of["--min-feedback"]
    assert f"(default {LoopConfig().approval})" in help_of["--approval"]
    assert f"(default {ServeConfig.__dataclass_fields__['port'].default})" in help_of["--port"]


def test_a_flag_with_a_bad_value_is_named_by_its_flag(tmp_path, refused):
    path = tmp_path / "reverie.yaml"
    path.write_text("loop:\n  steps: 40\n")
    refused(["serve", "--config", str(path), "--steps", "0", "--key-file", str(tmp_path / "keys.json")],
            "reverie: error: --steps must be a positive whole number, got '0'")
    refused(["serve", "--approval", "sometimes", "--key-file", str(tmp_path / "keys.json")],
            "--approval must be one of auto, required, got 'sometimes'")
    assert not (tmp_path / "keys.json").exists()


BAD = [
    ("unknown field", "loop:\n  steps: 10\ngate:\n  min_gian: 0.1\n",
     "reverie.yaml: unknown field gate.min_gian (did you mean gate.min_gain?)"),
    ("unknown section", "lop:\n  steps: 10\n", "reverie.yaml: unknown field lop"),
    ("wrong type", "loop:\n  steps: many\n", "reverie.yaml: loop.steps: must be a positive whole number, got 'many'"),
    ("quoted number", "port: '8000'\n", "reverie.yaml: port: must be a whole number from 1 to 65535, got '8000'"),
    ("number for a switch", "loop:\n  learn: 1\n", "reverie.yaml: loop.learn: must be true or false, got 1"),
    ("port out of range", "port: 70000\n", "reverie.yaml: port: must be a whole number from 1 to 65535, got 70000"),
    ("fraction out of range", "gate:\n  min_gain: 1.5\n", "reverie.yaml: gate.min_gain: must be in [0, 1), got 1.5"),
    ("negative count", "gate:\n  samples: -1\n", "reverie.yaml: gate.samples: must not be negative, got -1"),
    ("zero count", "loop:\n  min_feedback: 0\n", "reverie.yaml: loop.min_feedback: must be a positive whole number"),
    ("approval mode", "loop:\n  approval: maybe\n", "reverie.yaml: loop.approval: must be one of auto, required"),
    ("swap mode", "swap_mode: sometimes\n", "reverie.yaml: swap_mode: must be one of wait, keep, abort, standby"),
    ("learner method", "loop:\n  method: magic\n", "reverie.yaml: loop.method: must be one of opsd, sft"),
    ("section not a mapping", "gate: 3\n", "reverie.yaml: gate: must be a mapping of gate settings, got 3"),
    ("not a model directory", "model_dir: nowhere\n", "reverie.yaml: model_dir: model directory"),
    ("missing retention suite", "gate:\n  retention_suite: none.jsonl\n",
     "reverie.yaml: gate.retention_suite: no such file"),
    ("not YAML", "loop: [steps\n", "reverie.yaml: not valid YAML"),
    ("a key twice", "port: 8000\nport: 9000\n", "reverie.yaml: not valid YAML: key 'port' is given twice at line 2"),
    ("not a mapping", "- port\n", "reverie.yaml: must be a mapping of settings"),
    ("remote store without local versions", "data_dir: s3://bucket/reverie\n",
     "reverie.yaml: data_dir: 's3://bucket/reverie' is not a local path"),
]


@pytest.mark.parametrize("text, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_config_file_exits_2_with_one_line_naming_the_field_before_anything_starts(
        text, message, tmp_path, monkeypatch, refused):
    monkeypatch.chdir(tmp_path)  # the file's name as given: reverie.yaml
    Path("reverie.yaml").write_text(text)
    keys = tmp_path / "keys.json"
    refused(["serve", "--config", "reverie.yaml", "--key-file", str(keys)], "reverie: error: " + message)
    assert not keys.exists()  # the keys are generated after the config is checked, Ray started after that
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reverie.yaml"]
    import ray

    assert not ray.is_initialized()


def test_a_missing_config_file_is_refused(tmp_path, refused):
    missing = tmp_path / "nope.yaml"
    refused(["serve", "--config", str(missing)], f"config file '{missing}' does not exist")


def test_scientific_notation_reads_as_a_number_and_an_empty_section_as_defaults(tmp_path):
    path = tmp_path / "reverie.yaml"
    path.write_text("loop:\n  lr: 2e-5\ngate:\n")
    cfg = build_config(load_config(path), {}, source=path, defaults={"model_dir": str(SHIPPED_MODEL)})
    assert cfg.loop.lr == 2e-5 and cfg.gate == GateConfig()


def test_relative_paths_given_as_flags_or_defaults_are_resolved_where_the_command_was_typed(tmp_path, monkeypatch):
    """The store and the controller run in Ray's processes, whose working directory (on a cluster, where
    ``ray start`` ran) is not the user's: a relative ``--data-dir``, ``--versions-dir`` or default names the
    folder below where the command was typed.  A URI stays as given."""
    monkeypatch.chdir(tmp_path)
    cfg = _serve_config("--data-dir", "data", "--versions-dir", "v")
    assert cfg.data_dir == str(tmp_path / "data") and cfg.versions_dir == tmp_path / "v"
    assert _serve_config().data_dir == str(tmp_path / "reverie-data")
    assert _serve_config("--data-dir", "s3://bucket/reverie", "--versions-dir", "v").data_dir == "s3://bucket/reverie"


def test_every_config_field_has_a_meaning_in_the_documented_example():
    said = config_file.meanings()
    assert set(said) == set(config_file.fields())
    assert not [f for f, text in said.items() if not text], "give each field a comment in reverie/config_file.py's example"


def test_the_guides_configuration_reference_is_the_one_the_schema_generates():
    """docs/guide.md's table of every key, default, flag, rule and meaning is ``python -m reverie.config_file``'s:
    a field added, renamed or given another default without regenerating it fails here."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text(encoding="utf-8")
    assert config_file.with_reference(guide) == guide, "run: python -m reverie.config_file --write docs/guide.md"
    table = config_file.reference()
    assert all(f"| `{f}` |" in table for f in config_file.fields())
    assert "| `loop.steps` | `120` | `--steps` | a positive whole number |" in table
    assert "| `loop.lr` | `0.0001` |  | a number, between 0 and 1 |" in table
