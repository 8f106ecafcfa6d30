"""CPU placement (reverie/cpus.py): the engine's worker keeps its cores; everything else moves to the host cores."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from reverie import cpus

needs_two_cores = pytest.mark.skipif(cpus.plan() is None, reason="placement applies on a CPU-only machine with 2+ cores")


def _child(title: str) -> subprocess.Popen:
    code = f"import setproctitle, time; setproctitle.setproctitle({title!r}); time.sleep(120)"
    p = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while time.time() < deadline and cpus._title(p.pid) != title:
        time.sleep(0.05)
    return p


def _mask(pid: int) -> set[int]:
    return set().union(*(os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")))


def test_plan_gives_the_engine_every_core_but_the_last():
    p = cpus.plan()
    if p is None:
        pytest.skip("no plan on this machine")
    assert p.host == (max(p.all),) and set(p.engine) == p.all - set(p.host)
    assert p.bind_value() == ",".join(map(str, sorted(p.engine)))


def test_plan_is_off_when_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("REVERIE_CPU_PINNING", "0")
    assert cpus.plan() is None


@needs_two_cores
def test_leave_engine_cores_moves_this_process_and_children_but_not_the_worker(monkeypatch):
    p = cpus.plan()
    before = os.sched_getaffinity(0)
    monkeypatch.delenv(cpus.BIND_ENV, raising=False)
    worker, other = _child(cpus.WORKER_TITLE), _child("some-helper")
    try:
        cpus.claim_all(p)
        assert os.environ[cpus.BIND_ENV] == p.bind_value() and os.sched_getaffinity(0) == p.all
        assert cpus.leave_engine_cores(p) is True
        assert _mask(os.getpid()) == set(p.host)
        assert _mask(other.pid) == set(p.host)
        assert _mask(worker.pid) == p.all  # untouched
    finally:
        for c in (worker, other):
            c.kill()
            c.wait()
        cpus._pin_process(os.getpid(), before)


@needs_two_cores
def test_without_a_worker_nothing_is_moved():
    """In a process of its own: this test process may hold an engine started by another test (the session's
    engine has a worker), and then a worker would rightly be found."""
    code = """
import os, subprocess, sys, time
import setproctitle
from reverie import cpus
def mask(pid):
    return set().union(*(os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")))
before = mask(os.getpid())
other = subprocess.Popen([sys.executable, "-c", "import setproctitle, time; setproctitle.setproctitle('some-helper'); time.sleep(120)"])
while cpus._title(other.pid) != "some-helper":
    time.sleep(0.05)
try:
    print(cpus.leave_engine_cores(cpus.plan()), mask(os.getpid()) == before and mask(other.pid) == before)
finally:
    other.kill()
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "True"], run.stdout + run.stderr[-2000:]  # nothing found, nothing moved


@needs_two_cores
def test_host_only_starts_children_on_the_host_cores_and_restores_this_process():
    p = cpus.plan()
    before = os.sched_getaffinity(0)
    with cpus.host_only(p):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _mask(child.pid) == set(p.host)
        assert os.sched_getaffinity(0) == before
    finally:
        child.kill()
        child.wait()
