"""The README and the guide cannot rot: every ``reverie ...`` command their shell examples show is one the command
line accepts (each flag known, each subcommand real), the guide's YAML example is a valid configuration, its
retention-suite lines load, and every link to a file of the repository leads to one.  What the commands *do* is
tested where they are (``tests/test_serve_cli.py``, ``tests/test_model_pull.py``, ``tests/test_admin_cli.py``, ...)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[str, str]]:
    """(document name, text) of every fenced block of ``lang`` in the README and the guide."""
    return [(doc.name, m[2]) for doc in DOCS for m in FENCE.finditer(doc.read_text(encoding="utf-8")) if m[1] == lang]


def commands() -> list[tuple[str, list[str]]]:
    """Every ``reverie ...`` command of the shell examples, as argv (comments dropped, ``&&`` split, line
    continuations joined)."""
    out = []
    for doc, text in blocks("sh"):
        for line in text.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "reverie":
                    out.append((doc, words[1:]))
    return out


def test_the_docs_show_reverie_commands_at_all():
    shown = {argv[0] for _, argv in commands()}
    assert {"serve", "model", "review", "approve", "status", "rollback", "learn"} <= shown


@pytest.mark.parametrize("doc,argv", commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_reverie_command_the_docs_show_is_one_the_command_line_accepts(doc, argv, capsys):
    from reverie.cli import parser

    try:
        parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{doc}: `reverie {' '.join(argv)}` is refused: {capsys.readouterr().err.strip()}")


def test_the_guides_configuration_example_is_a_valid_configuration(tmp_path):
    from reverie import config_file
    from simulators.tinyworld.build import SHIPPED_MODEL

    [example] = [text for doc, text in blocks("yaml") if doc == "guide.md"]
    path = tmp_path / "reverie.yaml"
    path.write_text(example.replace("/models/my-model", str(SHIPPED_MODEL)))
    (tmp_path / "retention.jsonl").write_text('{"skill": "s", "prompt": "p", "answer": "a"}\n')
    cfg = config_file.build_config(config_file.load_config(path), {}, source=path)
    assert (cfg.world, cfg.loop.approval, cfg.loop.steps, cfg.loop.lr) == ("chat", "required", 30, 5e-5)


def test_the_guides_retention_suite_lines_load_as_a_suite(tmp_path):
    from actors.gate import load_retention_suite

    [example] = [text for doc, text in blocks("json") if doc == "guide.md"]
    path = tmp_path / "suite.jsonl"
    path.write_text(example)
    items = load_retention_suite(path)
    assert [(i.skill, i.compare) for i in items] == [("billing", "contains"), ("tone", "normalised")]


def test_every_link_to_a_file_of_the_repository_leads_to_one():
    for doc in DOCS + [ROOT / "docs" / "api.md"]:
        if not doc.exists():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"
