"""``docs/api.md`` against the routes the ingress serves: each one documented, none documented that is not served.

The routes are ``ENDPOINTS`` in ``serve/ingress.py``: reverie's own as ``lambda app: app.post("/path", ...)``,
and Ray Serve LLM's as ``DEFAULT_ENDPOINTS["name"]``.  Importing ``serve.ingress`` loads Ray Serve LLM and
vLLM (about 9 s here), so both tables are read from their source with ``ast`` instead: the same dict literal the
application is built from, and Ray's table from the file ``serve/ray_llm.py`` imports it from.  No Ray, no
server: the module runs in milliseconds.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

from serve.auth import OPEN_ROUTES

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
# `POST /v1/feedback`: how the page names a route, in a heading or a table row.
ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (/[^`\s]*)`")
# Any /v1/... or /admin/... path written anywhere on the page (a template, or an example in a command).
PATH = re.compile(r"/(?:v1|admin)(?:/(?:\{[^}/]*\}|[\w\-]+))+")


def _module(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _dict_named(tree: ast.Module, name: str) -> ast.Dict:
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)):
            return node.value
    raise AssertionError(f"no module-level dict literal {name} found: this test reads the route table from it")


def _route(name: str, factory: ast.expr, where: str) -> tuple[str, str, int]:
    """(METHOD, path, success status) of ``lambda app: app.<method>("<path>", ..., status_code=N)``."""
    call = factory.body if isinstance(factory, ast.Lambda) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in METHODS
            and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
        raise AssertionError(f"{where}[{name!r}] is not `lambda app: app.<method>(\"<path>\", ...)`; "
                             "teach this test the new form")
    status = next((k.value.value for k in call.keywords if k.arg == "status_code"), 200)
    return call.func.attr.upper(), call.args[0].value, status


@cache
def ray_endpoints() -> dict[str, tuple[str, str, int]]:
    """Ray Serve LLM's ``DEFAULT_ENDPOINTS``, from the module ``serve/ray_llm.py`` imports it from."""
    module = next(node.module for node in ast.walk(_module(ROOT / "serve" / "ray_llm.py"))
                  if isinstance(node, ast.ImportFrom) and any(a.name == "DEFAULT_ENDPOINTS" for a in node.names))
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level package is found without being imported
    assert spec is not None and spec.submodule_search_locations, f"{top} is not installed"
    source = Path(spec.submodule_search_locations[0]).joinpath(*rest).with_suffix(".py")
    table = _dict_named(_module(source), "DEFAULT_ENDPOINTS")
    return {k.value: _route(k.value, v, "DEFAULT_ENDPOINTS") for k, v in zip(table.keys, table.values)}


@cache
def served() -> dict[str, tuple[str, str, int]]:
    """``serve.ingress.ENDPOINTS``: {handler name: (METHOD, path, success status)}."""
    routes = {}
    table = _dict_named(_module(ROOT / "serve" / "ingress.py"), "ENDPOINTS")
    for key, value in zip(table.keys, table.values):
        name = key.value
        if (isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name)
                and value.value.id == "DEFAULT_ENDPOINTS" and isinstance(value.slice, ast.Constant)):
            routes[name] = ray_endpoints()[value.slice.value]
        else:
            routes[name] = _route(name, value, "ENDPOINTS")
    return routes


def plain(path: str) -> str:
    """``/v1/models/{model:path}`` -> ``/v1/models/{model}``: a parameter without its converter."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def matcher(path: str) -> re.Pattern:
    """A served path template as a pattern for a written path: ``{x}`` is one segment, ``{x:path}`` any."""
    parts = re.split(r"(\{\w+(?::\w+)?\})", path)
    return re.compile("".join(
        (".+" if p.endswith(":path}") else "[^/]+") if p.startswith("{") else re.escape(p) for p in parts) + "$")


def doc_lines() -> list[str]:
    return DOC.read_text(encoding="utf-8").splitlines()


def named_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route the page names in a heading or a table row."""
    return {(m, plain(p)) for line in doc_lines() if line.startswith(("#", "|")) for m, p in ROUTE.findall(line)}


def summary_rows() -> dict[tuple[str, str], list[str]]:
    """The table under ``## Routes``: {(METHOD, path): its cells}."""
    rows, inside = {}, False
    for line in doc_lines():
        if line.startswith("## "):
            inside = line.strip() == "## Routes"
        elif inside and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            found = ROUTE.fullmatch(cells[0])
            if found:
                rows[(found.group(1), plain(found.group(2)))] = cells
    return rows


def test_the_route_table_is_read_whole_from_the_ingress_source():
    routes = {(m, p) for m, p, _ in served().values()}
    assert {("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/v1/feedback"),
            ("GET", "/admin/review")} <= routes, routes
    assert len(routes) == len(served()) >= 14  # one route per handler, none lost to the parse


def test_every_route_the_ingress_serves_has_a_heading_or_table_row_in_docs_api():
    missing = sorted({(m, plain(p)) for m, p, _ in served().values()} - named_routes())
    assert not missing, f"served but not documented in docs/api.md (add a heading `METHOD /path`): {missing}"


def test_docs_api_names_no_route_the_ingress_does_not_serve():
    served_routes = {(m, plain(p)) for m, p, _ in served().values()}
    extra = sorted(named_routes() - served_routes)
    assert not extra, f"docs/api.md documents routes the ingress does not serve: {extra}"


def test_every_v1_or_admin_path_written_in_docs_api_is_one_the_ingress_serves():
    patterns = [matcher(p) for _, p, _ in served().values()]
    written = {m.group(0) for line in doc_lines() for m in PATH.finditer(line)}
    assert written, "no /v1/ or /admin/ path found on the page"
    unknown = sorted(p for p in written if not any(pattern.match(p) for pattern in patterns))
    assert not unknown, f"docs/api.md names paths no route serves: {unknown}"


def test_the_routes_table_gives_each_route_the_key_the_door_asks_for_and_its_success_status():
    rows = summary_rows()
    for method, path, status in served().values():
        route = (method, plain(path))
        assert route in rows, f"no row for `{method} {plain(path)}` in the table under ## Routes"
        key, success = rows[route][1], rows[route][2]
        # serve/auth.py: the open routes need nothing, /admin... the admin key, everything else the API key.
        want = "none" if (method, path) in OPEN_ROUTES else "admin key" if path.startswith("/admin") else "API key"
        assert key == want, (route, key, want)
        assert success.split()[0] == str(status), (route, success, status)
