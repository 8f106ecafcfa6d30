"""The serving side's door (``serve/door.py``) and the one module of Ray Serve LLM internals
(``serve/ray_llm.py``): the replica answers to the method names the broadcaster calls, the door imports no
part of reverie (so nothing imports in a circle through it), and no other file of the project touches
``ray.llm._internal``, so a Ray upgrade that moves those names changes one file."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = [p for folder in ("actors", "learner", "reverie", "serve", "simulators")
           for p in (ROOT / folder).rglob("*.py")]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_replica_answers_to_the_methods_the_broadcaster_calls():
    from serve import door
    from serve.replica import ReverieLLMServer

    for method in (door.INSTALL, door.STATUS):
        assert callable(getattr(ReverieLLMServer, method, None)), method
    assert {"INSTALL", "STATUS"} <= {n.id for n in ast.walk(ast.parse((ROOT / "serve/broadcaster.py").read_text()))
                                     if isinstance(n, ast.Name)}


def test_the_door_imports_nothing_of_reverie():
    assert _imports(ROOT / "serve/door.py") <= {"__future__", "typing"}


def test_only_serve_ray_llm_touches_ray_serve_llm_internals():
    touching = sorted(str(p.relative_to(ROOT)) for p in PROJECT
                      if any(m.startswith("ray.llm._internal") for m in _imports(p)))
    assert touching == ["serve/ray_llm.py"], touching
