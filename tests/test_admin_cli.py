"""``reverie status / review / approve / reject / rollback / cycle``: the admin commands over the HTTP admin API.

Two kinds of test:
- refusals that need no server: bad input, no admin key, nothing listening; one line, exit 2, nothing sent;
- a PROTOCOL CHECK OF THE CLIENT, NOT OF THE SYSTEM: a tiny stand-in server (``http.server`` in a thread,
  canned JSON in the documented shapes) shows that the commands send the documented requests with the
  admin key, render the status table and the review, and surface the server's 404/409/401 messages.  The
  real routes are tested with the real system elsewhere.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reverie.cli import main

KEY = "rv-admin-" + "k" * 24


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch):
    monkeypatch.delenv("REVERIE_API_KEY", raising=False)
    monkeypatch.delenv("REVERIE_ADMIN_KEY", raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ refusals without a server
@pytest.mark.parametrize("argv", [
    ["review", "abc"], ["approve", "1.5"], ["reject", "x", "--reason", "bad"], ["rollback", "0"], ["review", "v5"],
])
def test_a_version_that_is_not_a_positive_whole_number_is_refused_first(argv, refused):
    refused(argv, "reverie: error: the version must be a positive whole number, got")


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_reject_without_a_reason_is_refused(reason, refused, monkeypatch):
    monkeypatch.setenv("REVERIE_ADMIN_KEY", KEY)
    argv = ["reject", "5", "--url", f"http://127.0.0.1:{_free_port()}"]
    refused(argv if reason is None else [*argv, "--reason", reason], "reverie: error: reject needs --reason TEXT")


@pytest.mark.parametrize("command", [["status"], ["review", "5"], ["approve", "5"], ["cycle"]])
def test_no_admin_key_is_refused_without_generating_one(command, tmp_path, refused):
    missing = tmp_path / "keys.json"
    refused([*command, "--key-file", str(missing)], f"reverie: error: no admin key: set REVERIE_ADMIN_KEY, or give "
                                                    f"--key-file (there is no key file {missing})")
    assert not missing.exists()


def test_a_key_file_others_can_read_is_refused(tmp_path, refused):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_key": "u" * 20, "admin_key": KEY}))
    os.chmod(path, 0o644)
    refused(["status", "--key-file", str(path)], "is readable by other users")


@pytest.mark.parametrize("command", [["status"], ["approve", "5", "--note", "ok"], ["rollback", "2"], ["cycle"]])
def test_an_unreachable_server_is_refused_with_its_url(command, monkeypatch, refused):
    monkeypatch.setenv("REVERIE_ADMIN_KEY", KEY)
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    refused([*command, "--url", url], f"reverie: error: cannot reach reverie at {url}: ")


def test_a_url_that_is_not_http_is_refused(monkeypatch, refused):
    monkeypatch.setenv("REVERIE_ADMIN_KEY", KEY)
    refused(["status", "--url", "127.0.0.1:8000"], "reverie: error: --url must be an http:// or https:// address")


# ------------------------------------------------------------------ protocol check of the client (stand-in server)
def _candidates() -> dict:
    return {
        2: {"version": 2, "parent": 1, "status": "rolled-back", "scores": None, "reason": "", "decisions": [],
            "lessons": {"counts": {}, "examples": [], "records": 0}},
        4: {"version": 4, "parent": 3, "status": "rejected", "reason": "gain 0.050 is below the gate's 0.2",
            "scores": {"new": {"facts": {"parent": 0.1, "candidate": 0.15, "n": 48}},
                       "retention": {"sort": {"parent": 1.0, "candidate": 1.0, "n": 100}},
                       "gain": 0.05, "retention_loss": 0.0, "passed": False},
            "decisions": [], "lessons": {"counts": {"correction": 1}, "examples": [], "records": 1}},
        5: {"version": 5, "parent": 3, "status": "pending", "reason": "",
            "scores": {"new": {"facts": {"parent": 0.125, "candidate": 0.875, "n": 48},
                               "rule": {"parent": 0.0, "candidate": 0.9, "n": 48}},
                       "learnt": {"tools": {"parent": 0.75, "candidate": 0.8, "n": 96}},
                       "retention": {"sort": {"parent": 1.0, "candidate": 0.99, "n": 100},
                                     "copy": {"parent": 0.98, "candidate": 0.98, "n": 100}},
                       "gain": 0.825, "retention_loss": 0.005, "passed": True,
                       "drift": {"kl_per_token": 0.01234, "chats": 16, "tokens": 480, "from": "base"}},
            "decisions": [{"action": "gate", "by": "gate", "at": 1700000000.0, "note": "passed; waits for approval"}],
            "lessons": {"counts": {"correction": 3, "rule": 1},
                        "examples": [{"kind": "rule", "text": "Answer the capital in one word."},
                                     "Paris is the capital of France, not Lyon."],
                        "records": 4}},
    }


REVIEW_SAMPLES = [
    {"family": "facts", "prompt": "capital of Zorblat?", "reference": "Quux", "before": "Paris", "after": "Quux"},
    {"skill": "sort", "prompt": "sort: b a", "reference": "a b", "before": "a b", "after": "a b"},
]


class StandIn:
    """Canned answers in the documented shapes of the admin routes; records every request it gets."""

    def __init__(self):
        self.promoted = 3
        self.candidates = _candidates()
        self.requests: list[tuple[str, str, dict | None]] = []

    def answer(self, method: str, path: str, auth: str | None, body: dict | None) -> tuple[int, dict]:
        self.requests.append((method, path, body))
        if auth != f"Bearer {KEY}":  # serve/auth.py's shape
            return 401, {"error": {"message": "invalid API key", "type": "authentication_error", "code": 401}}
        if (method, path) == ("GET", "/admin/status"):
            return 200, {"promoted": self.promoted,
                         "cycle": {"state": "learning", "step": "learn", "cycle": 7,
                                   "progress": {"done": 120, "total": 300}, "started": 1700000000.0},
                         "candidates": list(self.candidates.values())}
        if (method, path) == ("POST", "/admin/cycle"):
            return 202, {"cycle": 8, "state": "collect"}
        if (method, path) == ("POST", "/admin/rollback"):
            v = body["version"]
            if v not in self.candidates:  # the {"error": {"message"}} shape
                return 404, {"error": {"message": f"unknown version {v}", "type": "not_found", "code": 404}}
            if self.candidates[v]["status"] not in ("promoted", "rolled-back"):
                return 409, {"detail": f"version {v} was never promoted ({self.candidates[v]['status']})"}
            previous, self.promoted = self.promoted, v
            self.candidates[v]["status"] = "promoted"
            return 200, {"version": v, "previous": previous}
        m = re.fullmatch(r"/admin/candidates/(\d+)(/approve|/reject)?", path)
        if m is None:
            return 404, {"detail": "Not Found"}
        v, action = int(m.group(1)), m.group(2)
        if v not in self.candidates:
            return 404, {"detail": f"unknown version {v}; known versions: 2, 4, 5"}
        c = self.candidates[v]
        if method == "GET" and action is None:
            return 200, {**c, "review": {"samples": REVIEW_SAMPLES}}
        if action == "/reject" and not (body or {}).get("reason"):  # FastAPI's 422 shape
            return 422, {"detail": [{"loc": ["body", "reason"], "msg": "String should have at least 1 character"}]}
        if c["status"] != "pending":
            return 409, {"detail": f"version {v} is {c['status']}, not pending: there is nothing to "
                                   f"{action.strip('/')}"}
        if action == "/approve":
            c["status"] = "approved"
            c["decisions"].append({"action": "approve", "by": "admin", "at": 1700000100.0, "note": body["note"]})
        else:
            c["status"], c["reason"] = "rejected", f"rejected by admin: {body['reason']}"
            c["decisions"].append({"action": "reject", "by": "admin", "at": 1700000100.0, "note": body["reason"]})
        return 200, c


@pytest.fixture
def server():
    """A stand-in for the admin routes at ``server.url`` (a protocol check of the client only)."""
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            status, payload = state.answer(method, self.path, self.headers.get("Authorization"), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._reply("GET")

        def do_POST(self):
            self._reply("POST")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("REVERIE_ADMIN_KEY", KEY)


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert KEY not in out + err  # the key is never printed
    return rc, out, err


def test_protocol_status_table_shows_promoted_cycle_and_one_row_per_candidate(server, admin_env, capsys):
    rc, out, err = _run(["status", "--url", server.url], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "promoted version: 3"
    assert lines[1] == "cycle 7: learning, step learn, 120/300"
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["version", "parent", "status"])
    rows = [line.split() for line in lines[header + 1:]]
    assert [r[:3] for r in rows] == [["2", "1", "rolled-back"], ["4", "3", "rejected"], ["5", "3", "pending"]]
    assert rows[1][3:5] == ["+0.050", "0.000"] and " ".join(rows[1][5:]) == "gain 0.050 is below the gate's 0.2"
    assert rows[2][3:5] == ["+0.825", "0.005"]
    assert rows[0][3:5] == ["-", "-"]  # not evaluated
    assert server.requests == [("GET", "/admin/status", None)]


def test_protocol_status_json_is_the_server_object_on_one_line(server, admin_env, capsys):
    rc, out, _ = _run(["status", "--url", server.url, "--json"], capsys)
    assert rc == 0 and out.count("\n") == 1
    assert json.loads(out)["promoted"] == 3 and [c["version"] for c in json.loads(out)["candidates"]] == [2, 4, 5]


def test_protocol_review_shows_lessons_scores_against_the_parent_answers_and_decisions(server, admin_env, capsys):
    rc, out, _ = _run(["review", "5", "--url", server.url], capsys)
    assert rc == 0
    assert out.startswith("candidate 5 (parent 3): pending\n")
    assert "learnt from: correction 3, rule 1 (4 records)" in out
    assert "  - kind: rule; text: Answer the capital in one word." in out
    assert "  - Paris is the capital of France, not Lyon." in out
    assert re.search(r"new tasks\s+parent -> candidate\s+n\n\s+facts\s+0\.125 ->\s+0\.875\s+48\s+\(\+0\.750\)", out)
    assert re.search(r"\n\s+rule\s+0\.000 ->\s+0\.900\s+48", out)
    assert re.search(r"learnt by earlier versions\s+parent -> candidate\s+n\n\s+tools\s+0\.750 ->\s+0\.800\s+96", out)
    assert re.search(r"retention\s+parent -> candidate\s+n\n\s+sort\s+1\.000 ->\s+0\.990\s+100\s+\(-0\.010\)", out)
    assert "gain +0.825, retention loss 0.005: the gate passed\n" in out
    assert "drift from the base: KL 0.0123 nats per token on the base's replies to 16 general prompts (480 tokens)" in out
    assert "  1. [facts]" in out and "  2. [sort]" in out
    for key, value in (("prompt", "capital of Zorblat?"), ("reference", "Quux"), ("before", "Paris"),
                       ("after", "Quux")):
        assert re.search(rf"\n    {key}\s+{re.escape(value)}\n", out), key
    assert re.search(r"decisions:\n  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  gate by gate: passed; waits for approval", out)
    assert server.requests == [("GET", "/admin/candidates/5", None)]


def test_protocol_approve_sends_the_note_and_prints_the_new_status(server, admin_env, capsys):
    rc, out, _ = _run(["approve", "5", "--note", "learnt the capitals", "--url", server.url], capsys)
    assert (rc, out) == (0, "version 5: approved\n")
    assert server.requests == [("POST", "/admin/candidates/5/approve", {"note": "learnt the capitals"})]


def test_protocol_reject_sends_the_reason(server, admin_env, capsys):
    rc, out, _ = _run(["reject", "5", "--reason", "forgets how to sort", "--url", server.url, "--json"], capsys)
    assert rc == 0 and json.loads(out)["status"] == "rejected"
    assert server.requests == [("POST", "/admin/candidates/5/reject", {"reason": "forgets how to sort"})]


def test_protocol_a_409_for_a_candidate_that_is_not_pending_is_surfaced(server, admin_env, refused):
    refused(["approve", "4", "--url", server.url],
            "reverie: error: version 4 is rejected, not pending: there is nothing to approve (HTTP 409)")
    refused(["reject", "4", "--reason", "no", "--url", server.url],
            "not pending: there is nothing to reject (HTTP 409)")
    assert server.candidates[4]["status"] == "rejected"


def test_protocol_a_404_for_an_unknown_version_is_surfaced(server, admin_env, refused):
    refused(["review", "99", "--url", server.url],
            "reverie: error: unknown version 99; known versions: 2, 4, 5 (HTTP 404)")
    refused(["rollback", "99", "--url", server.url], "reverie: error: unknown version 99 (HTTP 404)")  # {"error": ...}


def test_protocol_rollback_to_a_version_never_promoted_is_surfaced_and_to_an_earlier_one_done(server, admin_env,
                                                                                              refused, capsys):
    refused(["rollback", "4", "--url", server.url],
            "reverie: error: version 4 was never promoted (rejected) (HTTP 409)")
    rc, out, _ = _run(["rollback", "2", "--url", server.url], capsys)
    assert (rc, out) == (0, "rolled back: every replica now serves version 2\n")
    assert server.requests[-1] == ("POST", "/admin/rollback", {"version": 2}) and server.promoted == 2


def test_protocol_cycle_starts_a_cycle(server, admin_env, capsys):
    rc, out, _ = _run(["cycle", "--url", server.url], capsys)
    assert (rc, out) == (0, "cycle 8 requested (the controller is collect)\n")
    assert server.requests == [("POST", "/admin/cycle", None)]


def test_protocol_a_wrong_admin_key_is_surfaced_with_the_servers_message(server, monkeypatch, refused):
    monkeypatch.setenv("REVERIE_ADMIN_KEY", "rv-admin-" + "w" * 24)
    refused(["status", "--url", server.url], "reverie: error: invalid API key (HTTP 401)")


def test_protocol_the_admin_key_comes_from_the_key_file_without_the_environment(server, tmp_path, capsys):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"api_key": "rv-" + "u" * 24, "admin_key": KEY}))
    os.chmod(path, 0o600)
    rc, out, _ = _run(["status", "--url", server.url, "--key-file", str(path), "--json"], capsys)
    assert rc == 0 and json.loads(out)["promoted"] == 3


def test_protocol_bad_input_sends_nothing_to_the_server(server, admin_env, refused):
    refused(["approve", "five", "--url", server.url], "the version must be a positive whole number, got 'five'")
    refused(["reject", "5", "--url", server.url], "reject needs --reason")
    assert server.requests == [] and server.candidates[5]["status"] == "pending"


def test_a_server_that_never_answers_is_given_up_on_after_the_timeout():
    from serve.admin import AdminClient
    from reverie.errors import ReverieError

    with socket.socket() as silent:  # accepts connections (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with AdminClient(url, KEY, timeout_s=0.5) as admin, pytest.raises(ReverieError, match="did not answer GET "
                                                                          "/admin/status within 0.5 s"):
            admin.status()


def test_cycle_and_status_views_read_the_controllers_own_shapes():
    from serve.admin import format_cycle, format_status

    assert format_cycle({"cycle": 8, "state": "collect"}) == "cycle 8 requested (the controller is collect)"
    assert format_cycle({"requested": True, "cycle": None}).startswith("cycle requested: the controller starts it")
    running = {"state": "learning", "step": "learn", "cycle": 3, "progress": {"done": 5, "total": 120}}
    assert format_cycle({"requested": True, "cycle": running}) == \
        "cycle requested; the current one: cycle 3: learning, step learn, 5/120"
    idle = {"promoted": 1, "learning": False, "candidates": [],
            "cycle": {"state": "idle", "step": None, "cycle": 2, "progress": {"done": 0, "total": 0},
                      "last": "rejected"}}
    assert format_status(idle).splitlines() == [
        "promoted version: 1", "cycle 2: idle (the last one ended rejected)", "learning: off (reverie serve --no-learn)",
        "no candidates yet"]
    warmed = {**idle, "learning": True, "approval": "auto", "gate_warm": {"version": 1, "seconds": 124.5}}
    assert format_status(warmed).splitlines()[2:4] == ["approval: auto", "gate: version 1 scored as a parent in 124 s"]
