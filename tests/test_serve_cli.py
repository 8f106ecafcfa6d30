"""``reverie serve`` as a user runs it: bad input exits 2 with one line; a real run prints the URL and where
the keys are (never the keys), answers through the ``openai`` client, and on Ctrl-C flushes the experience
store and exits 0.  It also keeps the engine's cores to the engine (reverie/cpus.py)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from serving import ctrl_c_stops_it
from simulators.tinyworld.build import SHIPPED_MODEL

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "reverie.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120, **kw)


@pytest.mark.parametrize("args,match", [
    (["serve", "--model", "/no/such/model"], "does not exist"),
    (["serve", "--replicas", "0"], "--replicas"),
    (["serve", "--port", "http"], "--port"),
    (["serve", "--swap-mode", "sometimes"], "--swap-mode"),
    (["serve", "--swap-timeout", "-1"], "--swap-timeout"),
    (["serve", "--world", "chatty"], "--world must be one of tiny, chat, none, or a plug-in as package.module:Class"),
    (["serve", "--world", "no.such:World"], "world 'no.such:World': cannot load no.such:World"),
    (["bench", "swap", "--params", "7B"], "--params"),
    (["bench", "swap", "--concurrency", "0"], "--concurrency"),
    (["bench", "swap", "--swap-interval", "soon"], "--swap-interval"),
    (["bench", "swap", "--swap-mode", "sometimes"], "--swap-mode"),
    (["bench", "cycle", "--model", "nosuch"], "model directory 'nosuch' does not exist (nor is it a model name"),
    (["bench", "cycle", "--model", str(SHIPPED_MODEL), "--rule", "rhymes"], "--rule must be one of ends_with, "),
])
def test_bad_input_exits_2_with_one_line(args, match, tmp_path, capsys):
    from reverie.cli import main

    extra = ["--data-dir", str(tmp_path / "d")] if args[0] == "serve" else ["--json"]
    assert main([*args, *extra]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("reverie: error:") and match in lines[0], err
    assert not (tmp_path / "d").exists()


def _check_the_engine_keeps_its_cores(root: int) -> None:
    """One replica, no --address: the engine's worker runs on the plan's engine cores, every other process
    that ``reverie serve`` started (Ray, Serve, the replica, the engine's scheduler) on the host cores."""
    import psutil

    from reverie import cpus

    plan = cpus.plan()
    if plan is None:
        return
    workers, others = [], {}
    for child in psutil.Process(root).children(recursive=True):
        try:
            masks = set().union(*(os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{child.pid}/task")))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if cpus._title(child.pid).startswith(cpus.WORKER_TITLE):
            workers.append(os.sched_getaffinity(child.pid))  # its main thread runs the model
        else:
            others[f"{child.pid} {cpus._title(child.pid)[:60]}"] = masks
    assert workers and all(m <= set(plan.engine) for m in workers), workers
    assert others and all(m == set(plan.host) for m in others.values()), others


def test_serve_prints_url_and_key_location_records_and_stops_cleanly_on_ctrl_c(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("REVERIE_API_KEY", "REVERIE_ADMIN_KEY")}
    key_file = tmp_path / "keys.json"
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reverie.cli", "serve", "--model", str(SHIPPED_MODEL), "--port", str(port),
         "--data-dir", str(data), "--key-file", str(key_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_stops_it)
    try:
        lines = []
        deadline = time.time() + 400
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1" in out, out
        assert str(key_file) in out
        keys = json.loads(key_file.read_text())
        assert (key_file.stat().st_mode & 0o777) == 0o600
        assert keys["api_key"] not in out and keys["admin_key"] not in out
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=keys["api_key"], max_retries=0)
        r = client.chat.completions.create(model="reverie", messages=[{"role": "user", "content": "sort: b a"}],
                                           max_tokens=4, temperature=0)
        assert r.system_fingerprint.startswith("reverie-v")
        _check_the_engine_keeps_its_cores(proc.pid)
        proc.send_signal(signal.SIGINT)
        # Alone it stops well within 120 s; late in the full suite (2026-11-27, twice) it took longer, for a reason
        # not yet found: this bound is for a hang, not for speed.
        rest_out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert keys["api_key"] not in rest_out + err and keys["admin_key"] not in rest_out + err
    from actors.store import read_table

    assert r.id in read_table(str(data), "interactions").column("id").to_pylist()  # flushed on shutdown
