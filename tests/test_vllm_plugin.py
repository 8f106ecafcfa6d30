"""The vLLM plugin (reverie/vllm_plugin.py): a CPU engine sleeps between requests instead of spinning."""
from __future__ import annotations

import os
import time

import psutil
import pytest

from reverie.vllm_plugin import CPU_DEFAULT_S, ENV, window


def test_the_busy_window_is_short_on_cpu_vllms_own_on_gpu_and_a_bad_setting_says_what_was_wrong():
    assert window(on_cpu=True, value="") == CPU_DEFAULT_S
    assert window(on_cpu=False, value="") is None  # a GPU server keeps vLLM's own
    assert window(on_cpu=False, value="0.01") == 0.01
    assert window(on_cpu=True, value="0") == 0.0
    assert window(on_cpu=True, value="vllm") is None
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match=f"^{ENV} must be a number of seconds >= 0 or 'vllm', got '{bad}'$"):
            window(on_cpu=True, value=bad)


def _cpu_seconds(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def test_a_cpu_engine_sleeps_between_requests_instead_of_spinning(llm):
    """vLLM 0.32's worker spins on sched_yield for 1 s after each message (so under a request a second it
    never sleeps); with the plugin it sleeps 2 ms after the answer."""
    from vllm import SamplingParams

    engine = psutil.Process(os.getpid()).children(recursive=True)
    assert engine, "the engine runs in processes of its own (vLLM's multiprocessing executor)"
    llm.generate(["<|user|> copy: a b c<|end|><|assistant|>"], SamplingParams(max_tokens=4), use_tqdm=False)
    time.sleep(0.05)
    before, start = _cpu_seconds(engine), time.perf_counter()
    time.sleep(0.8)
    used = _cpu_seconds(engine) - before
    share = used / (time.perf_counter() - start)
    assert share < 0.25, f"the idle engine's processes used {share:.2f} of a core in the 0.8 s after an answer"


def test_a_cpu_engine_runs_its_model_worker_in_the_engine_core_process(llm):
    """One process per engine, not two (reverie/vllm_plugin.py ``keep_one_process_worker``): measured, the tiny
    model's engine then starts in 14.9 s against 22.8 s and holds 827 MB less."""
    assert llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend == "uni"
    names = [p.name() for p in psutil.Process().children(recursive=True)]
    assert "VLLM::Worker" not in names and names.count("VLLM::EngineCore") >= 1, names
