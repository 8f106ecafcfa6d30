"""Keeping a CPU engine's compute cores to the engine.

vLLM on CPU binds its model worker's OpenMP threads to some cores and leaves
the others for its scheduler and frontend, but nothing keeps the rest of the
machine off the worker's cores.  Under Ray Serve the HTTP proxy, the ingress,
the replica and the engine's scheduler then take turns on them.  Measured on
this 2-core machine (random 100M-parameter Llama, 32 streams): the worker got
69% of its core and Serve streamed 128 tokens/s; with everything else moved to
the other core, the worker got 99.9% and Serve streamed 187 tokens/s.

The plan, on a machine without a GPU and with at least two cores: the engine's
worker gets every core but the last; everything else (Ray's daemons, Serve's
proxy and replicas, the engine's scheduler and frontend) gets the last one.
It is applied where reverie starts the Ray itself for one engine (``reverie
serve`` without ``--address`` and one replica, ``reverie bench swap``);
``REVERIE_CPU_PINNING=0`` turns it off.  Linux only.

Without a plan (several replicas on one machine, ``--no-cpu-pinning``, a
cluster) a replica's engine binds none of its threads (``unbound``): vLLM's
own "auto" binding picks the cores of each engine alone, the same ones for
every replica on a machine (seen: each replica's worker bound to core 0 of
this 2-core machine, in every test module that serves).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("reverie.cpus")

WORKER_TITLE = "VLLM::Worker"  # the process title vLLM gives its model worker
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


@dataclass(frozen=True)
class CpuPlan:
    engine: tuple[int, ...]
    host: tuple[int, ...]

    @property
    def all(self) -> set[int]:
        return set(self.engine) | set(self.host)

    def bind_value(self) -> str:
        """The engine's cores as vLLM reads them from ``VLLM_CPU_OMP_THREADS_BIND``."""
        return ",".join(map(str, self.engine))


def _machine_cpus() -> list[int]:
    """Every core this container may use (not just the current process's mask)."""
    try:
        text = Path("/sys/fs/cgroup/cpuset.cpus.effective").read_text().strip()
        cpus: list[int] = []
        for part in filter(None, text.split(",")):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
        if cpus:
            return sorted(cpus)
    except (OSError, ValueError):
        pass
    return list(range(os.cpu_count() or 1))


def plan() -> CpuPlan | None:
    """The split for this machine, or None where it does not apply."""
    if os.environ.get("REVERIE_CPU_PINNING", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    cpus = _machine_cpus()
    if len(cpus) < 2:
        return None
    return CpuPlan(engine=tuple(cpus[:-1]), host=tuple(cpus[-1:]))


def _pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (affinity is per thread on Linux); threads that end meanwhile are skipped."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, PermissionError):
            os.sched_setaffinity(int(tid), cpus)


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def claim_all(p: CpuPlan) -> None:
    """Before this process starts an engine: let it (and so the engine it spawns) use every core,
    and tell vLLM which cores its worker binds to."""
    os.environ[BIND_ENV] = p.bind_value()
    _pin_process(os.getpid(), p.all)


def leave_engine_cores(p: CpuPlan) -> bool:
    """After this process started an engine: move this process and its descendants, except the engine's
    workers, to the host cores.  False (and nothing moved) if no worker is found."""
    children = _descendants(os.getpid())
    workers = [c for c in children if _title(c).startswith(WORKER_TITLE)]
    if not workers:
        logger.warning("no %s process found under pid %s; CPU placement left as it is", WORKER_TITLE, os.getpid())
        return False
    for pid in [os.getpid(), *children]:
        if pid not in workers:
            with contextlib.suppress(FileNotFoundError):
                _pin_process(pid, set(p.host))
    return True


def background(lower: int = 10) -> set[int]:
    """This process (a learner: background work beside the serving engines) may run on every core of the machine,
    under a plan the engine's too, ``lower`` steps of niceness below what it had (each thread: niceness is per
    thread on Linux, and threads started later inherit it), so that the serving path wins every core it wants; the
    cores.  Only for a process reverie started."""
    cores = set(_machine_cpus())
    _pin_process(os.getpid(), cores)
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(tid), min(19, os.getpriority(os.PRIO_PROCESS, int(tid)) + lower))
    return cores


UNBOUND = "nobind"  # vLLM's value for "bind no OpenMP thread"


def unbound() -> None:
    """Without a plan, the engine this process starts next binds none of its threads: every process may run on
    every core.  vLLM's own default ("auto") binds the model worker of each engine to the cores it picks alone,
    the same ones for every replica on a machine (seen: both replicas' workers on core 0 of a 2-core machine).
    A ``VLLM_CPU_OMP_THREADS_BIND`` set by the user is kept."""
    os.environ.setdefault(BIND_ENV, UNBOUND)


@contextlib.contextmanager
def restored():
    """This process's core mask and ``VLLM_CPU_OMP_THREADS_BIND`` are put back as they were after the block."""
    mask, bind = os.sched_getaffinity(0), os.environ.get(BIND_ENV)
    try:
        yield
    finally:
        _pin_process(os.getpid(), mask)
        if bind is None:
            os.environ.pop(BIND_ENV, None)
        else:
            os.environ[BIND_ENV] = bind


@contextlib.contextmanager
def host_only(p: CpuPlan | None):
    """Processes this one spawns inside the block (a local Ray's daemons, and so its workers) start on
    the host cores; this process's own mask is restored afterwards."""
    if p is None:
        yield
        return
    with restored():
        _pin_process(os.getpid(), set(p.host))
        yield
