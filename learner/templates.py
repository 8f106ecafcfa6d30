"""Privileged context for the teacher state, assembled from templates that
are data (``templates.json`` beside this file, or a file of the same shape
named by ``REVERIE_TEMPLATES``): one entry per kind of context, each a string
with a single ``{text}`` field.

The teacher's prompt is the student's prompt with one system message in
front, so both go through the same chat template and differ only by the
context.
"""
from __future__ import annotations

import json
import os
import string
from functools import lru_cache
from pathlib import Path

DEFAULT_FILE = Path(__file__).with_name("templates.json")


def check_templates(templates: dict, source: str = "templates") -> dict[str, str]:
    if not isinstance(templates, dict) or not templates:
        raise ValueError(f"{source}: expected a JSON object of kind -> template string")
    for kind, text in templates.items():
        if not isinstance(text, str):
            raise ValueError(f"{source}: template {kind!r} must be a string")
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        if fields != ["text"]:
            raise ValueError(f"{source}: template {kind!r} must have exactly one field, {{text}}; it has {fields}")
    return dict(templates)


@lru_cache(maxsize=8)
def load_templates(path: str | None = None) -> dict[str, str]:
    path = path or os.environ.get("REVERIE_TEMPLATES") or str(DEFAULT_FILE)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read templates from {path}: {exc}") from None
    return check_templates(data, path)


def render(kind: str, text: str, templates: dict[str, str] | None = None) -> str:
    templates = templates or load_templates()
    if kind not in templates:
        raise ValueError(f"no template for context {kind!r}; kinds are: {', '.join(templates)}")
    return templates[kind].format(text=text)


def teacher_prompt(student_prompt, kind: str, text: str, templates: dict[str, str] | None = None) -> tuple[dict, ...]:
    """The student's prompt with the privileged context in front, as a system message."""
    return ({"role": "system", "content": render(kind, text, templates)}, *student_prompt)
