"""The house's floors, read from the source: the shared vocabulary package (``reverie/``) imports no room except
in the one module that gathers the commands, and no product room imports the benchmark wing (``bench/``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("actors", "serve", "learner", "simulators", "evals")
GATHERER = ROOT / "reverie" / "cli.py"


def imported(path: Path) -> set[str]:
    """Every top-level package that ``path`` imports, at module level or inside a function, including the modules
    that ``reverie.cli`` names as strings for ``importlib``."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".commands"):
            names.add(node.value.split(".")[0])
    return names


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", sources("reverie"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_shared_vocabulary_package_imports_no_room_except_the_command_gatherer(path):
    rooms = imported(path) & {*ROOMS, "bench"}
    if path != GATHERER:
        assert not rooms, f"{path.relative_to(ROOT)} imports {sorted(rooms)}: the ground floor reaches up"


@pytest.mark.parametrize("path", sources(*ROOMS, "reverie"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_product_module_imports_the_benchmark_wing_or_is_a_benchmark_driver(path):
    if path == GATHERER:
        return
    assert "bench" not in imported(path), f"{path.relative_to(ROOT)} imports bench/: the product never does"
    assert not path.stem.startswith("bench") and "bench" not in path.stem.split("_"), \
        f"{path.relative_to(ROOT)} is named as a benchmark driver: it belongs in bench/"
