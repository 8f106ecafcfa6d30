"""A vLLM general plugin (entry point ``vllm.general_plugins``): a CPU engine stops spinning between requests.

vLLM's engine process and its model worker wait for each other's messages on a
shared-memory queue.  After every message a reader spins on ``sched_yield`` for
``busy_loop_s`` (1 s, fixed in vLLM 0.32) before it sleeps on a socket, so an
engine that gets a request more often than once a second never sleeps: it
holds a core whether it has work or not (vLLM issues 19036 and 28836; open
pull requests 52814 and 51950 make the window a setting).  A GPU server has
cores to spare; a CPU machine that also trains does not: in ``reverie demo``
the worker's spinning took the core the learner steps on.  On this 2-core
machine an idle engine's processes use 1.00 of a core in the 0.8 s after an
answer with vLLM's window and under 0.25 with this one
(tests/test_vllm_plugin.py).

Since reverie's CPU engines run their one model worker in the engine core's
process (``keep_one_process_worker`` below), that queue is left only where an
engine has several workers or runs on a GPU; the window is still set wherever
it exists.

vLLM loads this plugin in every process it starts (engine core, workers).
On CPU the window becomes ``REVERIE_VLLM_BUSY_LOOP_S`` seconds (default
0.002: a decode step's gap under load is shorter, so a busy engine still
spins; between requests it sleeps).  On a GPU vLLM's own window stays unless
the variable is set.  ``REVERIE_VLLM_BUSY_LOOP_S=vllm`` leaves it alone
everywhere.
"""
from __future__ import annotations

import math
import os

ENV = "REVERIE_VLLM_BUSY_LOOP_S"
CPU_DEFAULT_S = 0.002


def window(on_cpu: bool, value: str | None = None) -> float | None:
    """The reader's busy window in seconds, or None to keep vLLM's (``value``: the environment's setting)."""
    value = os.environ.get(ENV) if value is None else value
    if value is None or value.strip() == "":
        return CPU_DEFAULT_S if on_cpu else None
    if value.strip().lower() == "vllm":
        return None
    try:
        s = float(value)
    except ValueError:
        s = math.nan
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{ENV} must be a number of seconds >= 0 or 'vllm', got {value!r}")
    return s


def apply(seconds: float) -> None:
    """Every shared-memory queue reader in this process spins at most ``seconds`` after a message."""
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    wait = getattr(SpinCondition.wait, "__wrapped__", SpinCondition.wait)

    def short_wait(self, timeout_ms=None):
        if self.is_reader and self.busy_loop_s > seconds:
            self.busy_loop_s = seconds  # readers made before this plugin loaded too
        return wait(self, timeout_ms)

    short_wait.__wrapped__ = wait  # applied twice, it still wraps vLLM's own once
    SpinCondition.wait = short_wait


def keep_one_process_worker() -> None:
    """An engine of one worker on CPU asked for vLLM's ``uni`` executor keeps it: its model worker runs in the
    engine core's own process instead of a process of its own.

    vLLM's CPU platform turns ``uni`` into ``mp`` whenever the engine core has a process of its own (a serving
    replica's always does), so that the worker is started after vLLM has set its OpenMP environment (the
    preloaded ``libgomp``; the thread binding).  The engine core process is itself started after that
    environment is set, by the process that made the configuration, so the worker finds it there too; what
    ``mp`` adds is one more process importing vLLM and torch, and a shared-memory queue between the two.
    Measured on this 2-core machine (bench/results/suite-time/2026-12-06-engine-one-process.txt): the tiny
    model's offline engine started in 14.9 s against 22.8 s, its processes took 15.6 s of CPU against 23.1 s and
    one process of 827 MB fewer."""
    from vllm.platforms.cpu import CpuPlatform

    check = CpuPlatform.check_and_update_config.__func__
    if getattr(check, "keeps_uni", False):
        return

    def check_and_update_config(cls, vllm_config) -> None:
        parallel = vllm_config.parallel_config
        asked = parallel.distributed_executor_backend
        check(cls, vllm_config)
        if asked == "uni" and parallel.world_size == 1:
            parallel.distributed_executor_backend = "uni"

    check_and_update_config.keeps_uni = True
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


def register() -> None:
    """vLLM's entry point: runs once in each process vLLM starts."""
    from vllm.platforms import current_platform

    seconds = window(current_platform.is_cpu())
    if seconds is not None:
        apply(seconds)
    if current_platform.is_cpu():
        keep_one_process_worker()
