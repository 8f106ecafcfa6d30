"""The admin side of the command line: a client of a running ``reverie serve``'s ``/admin`` routes, the
admin key's discovery, the terminal views of ``reverie status`` and ``reverie review``, and the admin commands
(``register``, gathered into ``reverie.cli``).

The routes it calls (JSON; the admin key as ``Authorization: Bearer``) are ``GET /admin/status``,
``GET /admin/candidates/{V}``, ``POST /admin/candidates/{V}/approve`` and ``/reject``, ``POST /admin/rollback``
and ``POST /admin/cycle``; what each takes, answers and fails with is docs/api.md (checked against the server's
route table by tests/test_docs_api.py), not repeated here.

Every call has a timeout.  What can go wrong is a ``ReverieError`` (one line on the command line, exit 2):
the server cannot be reached, it answered 4xx/5xx (its own message: FastAPI's ``{"detail": ...}`` or
reverie's ``{"error": {"message": ...}}``), or there is no admin key.  The key comes from
``REVERIE_ADMIN_KEY``, else the key file that ``reverie serve`` wrote (``serve/auth.py``); it is never
generated here, and never printed.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from reverie import args as check
from reverie.errors import ReverieError

DEFAULT_URL = "http://127.0.0.1:8000"
CONNECT_TIMEOUT_S = 5.0
TIMEOUT_S = 30.0
ROLLBACK_TIMEOUT_S = 600.0  # a rollback answers once every replica has swapped (or the swap was undone)


def admin_key(key_file: str | Path | None = None) -> str:
    """The admin key: ``REVERIE_ADMIN_KEY``, else the key file (default ``~/.config/reverie/keys.json``)."""
    from serve.auth import ADMIN_ENV, DEFAULT_KEY_FILE, load_keys

    key = os.environ.get(ADMIN_ENV)
    if key:
        return key
    path = Path(key_file).expanduser() if key_file else DEFAULT_KEY_FILE
    if not path.exists():
        raise ReverieError(f"no admin key: set {ADMIN_ENV}, or give --key-file (there is no key file {path})")
    keys, _ = load_keys(path, generate=False)
    return keys.admin_key


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReverieError(f"--url must be an http:// or https:// address such as {DEFAULT_URL}, got {url!r}")
    return url.rstrip("/")


def _message(response) -> str:
    """The server's own words for an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    msg = None
    if isinstance(body, dict):
        detail, error = body.get("detail"), body.get("error")
        if isinstance(detail, str):
            msg = detail
        elif isinstance(detail, list) and detail:  # a request FastAPI refused: [{"loc", "msg", ...}]
            first = detail[0]
            if isinstance(first, dict):
                loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
                msg = f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
        elif isinstance(error, dict) and error.get("message"):
            msg = str(error["message"])
        elif isinstance(error, str):
            msg = error
    if msg is None:
        msg = (response.text or response.reason_phrase or "").strip()
    msg = " ".join(msg.split())[:500]
    return f"{msg} (HTTP {response.status_code})" if msg else f"HTTP {response.status_code}"


class AdminClient:
    """The admin routes of a running ``reverie serve`` at ``url``, with the admin ``key``."""

    def __init__(self, url: str, key: str, *, timeout_s: float = TIMEOUT_S):
        import httpx

        self.url = check_url(url)
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                                  timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)))

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict | None = None, *, timeout_s: float | None = None) -> dict:
        import httpx

        timeout = self._http.timeout if timeout_s is None else httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        try:
            r = self._http.request(method, path, json=body, timeout=timeout)
        except httpx.ConnectTimeout:
            raise ReverieError(f"cannot reach reverie at {self.url}: no connection within "
                               f"{timeout.connect:g} s") from None
        except httpx.TimeoutException:
            raise ReverieError(f"reverie at {self.url} did not answer {method} {path} within {timeout.read:g} s; "
                               "it may still act on it: see reverie status") from None
        except httpx.HTTPError as e:
            raise ReverieError(f"cannot reach reverie at {self.url}: {e or type(e).__name__}") from None
        if r.status_code >= 400:
            raise ReverieError(_message(r))
        try:
            return r.json()
        except ValueError:
            raise ReverieError(f"{method} {path} at {self.url} did not answer JSON (HTTP {r.status_code}); "
                               "is this a reverie server?") from None

    def status(self) -> dict:
        return self._call("GET", "/admin/status")

    def candidate(self, version: int) -> dict:
        """One candidate with its review (samples of answers before and after)."""
        return self._call("GET", f"/admin/candidates/{int(version)}")

    def approve(self, version: int, note: str = "") -> dict:
        return self._call("POST", f"/admin/candidates/{int(version)}/approve", {"note": note})

    def reject(self, version: int, reason: str) -> dict:
        if not reason or not reason.strip():
            raise ReverieError("a rejection needs a reason: --reason TEXT")
        return self._call("POST", f"/admin/candidates/{int(version)}/reject", {"reason": reason})

    def rollback(self, version: int) -> dict:
        return self._call("POST", "/admin/rollback", {"version": int(version)}, timeout_s=ROLLBACK_TIMEOUT_S)

    def start_cycle(self) -> dict:
        return self._call("POST", "/admin/cycle")


# ------------------------------------------------------------------ terminal views
def _v(x) -> str:
    return "-" if x is None else str(x)


def _num(x, signed: bool = False) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else _v(t)


def _cycle_line(cycle: dict | None) -> str:
    if not cycle:
        return "cycle: -"
    progress = cycle.get("progress") or {}
    done, total = progress.get("done"), progress.get("total")
    text = f"cycle {_v(cycle.get('cycle'))}: {_v(cycle.get('state'))}"
    if cycle.get("step"):
        text += f", step {cycle['step']}"
    if total:
        text += f", {_v(done)}/{total}"
    if cycle.get("last"):
        text += f" (the last one ended {cycle['last']})"
    if cycle.get("error"):
        text += f" (error: {cycle['error']})"
    return text


def format_cycle(result: dict) -> str:
    """``reverie cycle``: what the server says about the cycle it was asked for.  The contract's answer is
    ``{"cycle": n, "state": ...}``; a ``{"requested": true, "cycle": {...} | null}`` is read too."""
    cycle = result.get("cycle")
    if isinstance(cycle, dict):
        return f"cycle requested; the current one: {_cycle_line(cycle)}"
    if cycle is None:
        return "cycle requested: the controller starts it when it next looks at the store"
    return f"cycle {cycle} requested (the controller is {_v(result.get('state'))})"


def format_status(status: dict) -> str:
    """``reverie status``: the promoted version, the cycle, one row per candidate."""
    lines = [f"promoted version: {_v(status.get('promoted'))}", _cycle_line(status.get("cycle"))]
    if status.get("learning") is False:
        lines.append("learning: off (reverie serve --no-learn)")
    elif status.get("approval"):
        lines.append(f"approval: {status['approval']}")
    warm = status.get("gate_warm") or {}
    if warm.get("version") is not None:  # the version the gate scored as a parent while the loop was idle
        took = "" if warm.get("seconds") is None else f" in {warm['seconds']:.0f} s"
        lines.append(f"gate: version {warm['version']} scored as a parent{took}")
    candidates = status.get("candidates") or []
    if not candidates:
        return "\n".join([*lines, "no candidates yet"])
    rows = [("version", "parent", "status", "gain", "ret. loss", "reason")]
    for c in candidates:
        s = c.get("scores") or {}
        rows.append((_v(c.get("version")), _v(c.get("parent")), _v(c.get("status")), _num(s.get("gain"), True),
                     _num(s.get("retention_loss")), " ".join(str(c.get("reason") or "").split())))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines.append("")
    for r in rows:
        cells = [cell.ljust(w) if i == 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))]
        lines.append("  ".join([*cells, r[5]]).rstrip())  # the status left-aligned, the reason last
    return "\n".join(lines)


def _indented(label: str, text, width: int = 12) -> list[str]:
    body = str(text if text is not None else "-").splitlines() or [""]
    return [f"    {label:<{width}}{body[0]}", *(f"    {'':<{width}}{line}" for line in body[1:])]


def _example(e) -> str:
    if isinstance(e, dict):
        text = "; ".join(f"{k}: {v}" for k, v in e.items() if v not in (None, "", [], {}))
    else:
        text = str(e)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:299] + "…"


def _score_rows(title: str, scores: dict | None) -> list[str]:
    """One row per family (or skill): the parent's accuracy -> the candidate's, on n items."""
    if not scores:
        return [f"{title}: -"]
    width = max(max(len(str(k)) for k in scores), len(title) - 2)
    lines = [f"{title:<{width + 2}}  {'parent':>6} -> {'candidate':>9}  {'n':>5}"]
    for name, s in scores.items():
        s = s if isinstance(s, dict) else {}
        p, c = s.get("parent"), s.get("candidate")
        delta = f"  ({c - p:+.3f})" if all(isinstance(x, (int, float)) for x in (p, c)) else ""
        lines.append(f"  {str(name):<{width}}  {_num(p):>6} -> {_num(c):>9}  {_v(s.get('n')):>5}{delta}")
    return lines


def format_review(c: dict) -> str:
    """``reverie review V``: what the candidate learnt from, its scores against its parent, before/after answers
    and the decisions taken on it."""
    lines = [f"candidate {_v(c.get('version'))} (parent {_v(c.get('parent'))}): {_v(c.get('status'))}"]
    if c.get("reason"):
        lines.append(f"reason: {c['reason']}")
    lessons = c.get("lessons") or {}
    counts = lessons.get("counts") or {}
    learnt = ", ".join(f"{k} {n}" for k, n in counts.items()) or "nothing recorded"
    records = lessons.get("records")
    lines += ["", f"learnt from: {learnt}" + (f" ({records} records)" if records is not None else "")]
    for e in lessons.get("examples") or []:
        lines.append(f"  - {_example(e)}")
    s = c.get("scores")
    lines.append("")
    if not s:
        lines.append("scores: not evaluated yet")
    else:
        lines += _score_rows("new tasks", s.get("new"))
        if s.get("learnt"):
            lines += _score_rows("learnt by earlier versions", s.get("learnt"))
        lines += _score_rows("retention", s.get("retention"))
        passed = s.get("passed")
        verdict = "passed" if passed else "failed" if passed is not None else "-"
        since = ("" if s.get("base_retention_loss") is None
                 else f" (since the base version {_num(s.get('base_retention_loss'))})")
        lines.append(f"gain {_num(s.get('gain'), True)}, retention loss {_num(s.get('retention_loss'))}{since}: "
                     f"the gate {verdict}")
        if s.get("drift"):
            d = s["drift"]
            lines.append(f"drift from the {d['from']}: KL {d['kl_per_token']:.4f} nats per token on the "
                         f"{d['from']}'s replies to {d['chats']} general prompts ({d['tokens']} tokens)")
    samples = (c.get("review") or {}).get("samples") or []
    if samples:
        lines += ["", "answers before (parent) and after (candidate):"]
        for i, smp in enumerate(samples, 1):
            kind = smp.get("family") or smp.get("skill") or "-"
            lines.append(f"  {i}. [{kind}]")
            for key in ("prompt", "reference", "before", "after"):
                lines += _indented(key, smp.get(key))
    decisions = c.get("decisions") or []
    lines += ["", "decisions:" if decisions else "decisions: none yet"]
    for d in decisions:
        note = f": {d['note']}" if d.get("note") else ""
        lines.append(f"  {_when(d.get('at'))}  {_v(d.get('action'))} by {_v(d.get('by'))}{note}")
    return "\n".join(lines)


def format_candidate(c: dict) -> str:
    """One line after approve/reject: where the candidate stands now."""
    text = f"version {_v(c.get('version'))}: {_v(c.get('status'))}"
    return text + (f" ({c['reason']})" if c.get("reason") else "")


def one_line(obj) -> str:
    return json.dumps(obj, separators=(", ", ": "))


# ------------------------------------------------------------------ the commands
def _client(args: argparse.Namespace):
    url = check_url(args.url)  # every check of what was typed comes before the key and the network
    return AdminClient(url, admin_key(args.key_file))


def _version(args: argparse.Namespace) -> int:
    return check.version(args.version, "the version")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as admin:
        status = admin.status()
    print(one_line(status) if args.json else format_status(status))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    version = _version(args)
    with _client(args) as admin:
        candidate = admin.candidate(version)
    print(one_line(candidate) if args.json else format_review(candidate))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    version = _version(args)
    with _client(args) as admin:
        candidate = admin.approve(version, args.note or "")
    print(one_line(candidate) if args.json else format_candidate(candidate))
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    version = _version(args)
    if args.reason is None or not args.reason.strip():
        raise ReverieError("reject needs --reason TEXT: say why the candidate should not be served")
    with _client(args) as admin:
        candidate = admin.reject(version, args.reason.strip())
    print(one_line(candidate) if args.json else format_candidate(candidate))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    version = _version(args)
    with _client(args) as admin:
        result = admin.rollback(version)
    print(one_line(result) if args.json else f"rolled back: every replica now serves version {version}")
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    with _client(args) as admin:
        result = admin.start_cycle()
    print(one_line(result) if args.json else format_cycle(result))
    return 0


def register(sub) -> None:
    """Add the admin commands (status, review, approve, reject, rollback, cycle) to ``reverie``'s subcommands."""
    def command(name: str, help: str, func, *, version: bool = False, json_flag: bool = True):
        c = sub.add_parser(name, help=help)
        if version:
            c.add_argument("version", metavar="V", help="the candidate's version id")
        c.add_argument("--url", default=DEFAULT_URL, help="the running reverie serve (default %(default)s)")
        c.add_argument("--key-file", default=None, help="JSON key file with the admin key (default "
                       "~/.config/reverie/keys.json; REVERIE_ADMIN_KEY takes precedence)")
        if json_flag:
            c.add_argument("--json", action="store_true", help="print the server's JSON answer as one line")
        c.set_defaults(func=func)
        return c

    command("status", "the promoted version, the learning cycle and every candidate", cmd_status)
    command("review", "review a candidate: what it learnt from, its scores against its parent, answers before "
            "and after, decisions", cmd_review, version=True)
    a = command("approve", "approve a pending candidate (it is then promoted and swapped in)", cmd_approve,
                version=True)
    a.add_argument("--note", default="", help="why (kept with the decision)")
    r = command("reject", "reject a pending candidate", cmd_reject, version=True)
    r.add_argument("--reason", default=None, help="why it should not be served (required)")
    command("rollback", "serve an earlier promoted version again", cmd_rollback, version=True)
    command("cycle", "start a learning cycle now", cmd_cycle)
