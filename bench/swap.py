"""``reverie bench swap``: hot-swaps under streaming load through the real HTTP API.

Every figure is measured in the run that prints it:
- ``swap_seconds_*``: wall time of each ``WeightBroadcaster.publish`` (validate,
  pack into shared memory, install in every replica, durable copy, promote);
  ``install_seconds_median`` is the part the replicas spend switching; ``copy_seconds_median``: copying
  the same ``weight_bytes`` once in memory (a tensor clone each), in this run: the floor under any swap.
- ``requests``/``failed``: streaming completions started during the swap
  window, and those that raised or returned an error.
- ``mixed_version_responses``: completions whose token log-probs do not fit,
  within 1e-3, the weights of the version stamped on them (recomputed in torch
  from the registry's files of that version, ``serve/verify.py``), plus
  responses whose chunks do not all carry the stamp of their
  ``x-reverie-version`` header; ``checked_responses``: completions recomputed
  (every answered one).
- ``tokens_per_second``: completion tokens streamed per second over the swap
  window; ``serve_tokens_per_second_steady`` the same without swaps;
  ``first_token_seconds_*``: from sending a request to its first token, over
  the swap window (what a swap costs a user) and without swaps;
  ``raw_vllm_tokens_per_second``: the same engine arguments and load pattern
  (``concurrency`` requests in flight) on a bare vLLM ``AsyncLLM`` in this
  process, measured before Serve starts and after it stops (the machine is
  shared; the two are averaged); ``serve_to_raw_ratio`` = steady / raw.
- ``cpu_plan``: the core placement both use (``reverie/cpus.py``: the
  engine's worker keeps its cores, everything else runs on the host core);
  null with ``--no-cpu-pinning`` or where it does not apply.
- the swap broken down (medians): ``pack`` (validate + write the buckets to
  shared memory), ``drain`` (in ``wait`` mode, waiting for the in-flight
  requests of the old version to finish: bounded by the longest remaining
  completion; in ``standby`` mode, waiting for the standby engine's last
  requests, of the version before the previous one), ``reload`` (the worker
  extension's in-place reload).  Swaps are ``swap_interval`` seconds apart.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from simulators.tinyworld.build import SHIPPED_MODEL

PROMPT = "<|user|> reverse: m o p i<|end|><|assistant|>"


# Random Llamas with the tiny-world tokenizer (untied embeddings, heads of 64): ``--params`` names one.
SHAPES = {"25M": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8),
          "100M": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=14, num_attention_heads=12)}
PARAMS = ("tiny", *SHAPES)  # tiny: the shipped tiny-world model itself


def build_random_model(out: Path, size: str = "100M", seed: int = 0) -> int:
    """A randomly initialised Llama of ``size`` (:data:`SHAPES`) with the tiny-world tokenizer; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = json.loads((SHIPPED_MODEL / "config.json").read_text())
    shape = SHAPES[size]
    config = LlamaConfig(vocab_size=tok["vocab_size"], **shape, num_key_value_heads=shape["num_attention_heads"],
                         max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=tok["pad_token_id"],
                         eos_token_id=tok["eos_token_id"], bos_token_id=None, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (SHIPPED_MODEL / f).exists():
            shutil.copy(SHIPPED_MODEL / f, out / f)
    return sum(p.numel() for p in model.parameters())


def model_for(params: str, work: Path, progress=print) -> Path:
    """The model a benchmark serves: the shipped one (``tiny``) or a random one of that size, built in ``work``."""
    if params == "tiny":
        return SHIPPED_MODEL
    out = work / f"model-{params.lower()}"
    progress(f"built a random {build_random_model(out, params) / 1e6:.1f}M-parameter model")
    return out


def copy_seconds(state: dict) -> float:
    """Seconds to copy ``state``'s bytes once in memory (a clone of each tensor): the floor under any swap."""
    t0 = time.perf_counter()
    copied = {k: t.clone() for k, t in state.items()}
    seconds = time.perf_counter() - t0
    del copied
    return seconds


def _noisy(state: dict, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}


async def _raw_vllm_tokens_per_second(model_dir: Path, concurrency: int, max_tokens: int, seconds: float,
                                      cpu_plan=None) -> float:
    """The engine in this process, placed on the cores as a Serve replica places it (``cpu_plan``)."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from reverie import cpus
    from reverie.engine import engine_kwargs

    with cpus.restored():
        if cpu_plan is not None:
            cpus.claim_all(cpu_plan)
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(model_dir)))
        if cpu_plan is not None:
            cpus.leave_engine_cores(cpu_plan)
        try:
            params = SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True)
            tokens = 0
            stop = time.perf_counter() + seconds

            async def one(i):
                nonlocal tokens
                n = 0
                while time.perf_counter() < stop:
                    n += 1
                    async for out in engine.generate(PROMPT, params, request_id=f"raw-{i}-{n}"):
                        final = out
                    tokens += len(final.outputs[0].token_ids)

            await one(-1)  # warm up
            tokens = 0
            t0 = time.perf_counter()
            stop = t0 + seconds
            await asyncio.gather(*(one(i) for i in range(concurrency)))
            return tokens / (time.perf_counter() - t0)
        finally:
            engine.shutdown()


class _Load:
    """``concurrency`` clients streaming completions through the HTTP API until stopped."""

    def __init__(self, url: str, key: str, concurrency: int, max_tokens: int, stamped: bool = True,
                 retry_s: float = 0.0):
        self.url, self.key, self.concurrency, self.max_tokens = url, key, concurrency, max_tokens
        self.stamped = stamped  # reverie's API: every answer names its version (a bare vLLM server's does not)
        self.retry_s = retry_s  # a client whose request failed waits this long before its next one
        self.first_tokens: list[tuple[float, float]] = []  # (sent, first token) per answered request
        self.last_token_at = 0.0  # when any stream last received a token
        self.requests = self.failed = self.mixed = self.tokens = 0
        self.versions: set[int] = set()
        self.errors: list[str] = []
        self.mixed_examples: list[str] = []
        self.keep = False  # keep each completion's tokens and log-probs, to be checked against its version
        self.completions: list[tuple] = []

    async def _one(self, client) -> None:
        body = {"model": "reverie", "prompt": PROMPT, "max_tokens": self.max_tokens, "temperature": 1.0,
                "stream": True, "ignore_eos": True, "return_token_ids": True, "logprobs": 0}
        self.requests += 1
        t0 = time.perf_counter()
        try:
            async with client.stream("POST", self.url + "/v1/completions", json=body,
                                     headers={"Authorization": f"Bearer {self.key}"}) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                version = int(r.headers["x-reverie-version"]) if self.stamped else 0
                fingerprints, tokens, done, first_seen = set(), 0, False, False
                prompt_ids, ids, lps = None, [], []
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(str(chunk["error"])[:200])
                    fingerprints.add(chunk.get("system_fingerprint"))
                    if not first_seen:
                        first_seen = True
                        self.first_tokens.append((t0, time.perf_counter()))
                    self.last_token_at = time.perf_counter()
                    for ch in chunk.get("choices", []):
                        tokens += len(ch.get("token_ids") or [])
                        prompt_ids = prompt_ids or ch.get("prompt_token_ids")
                        ids += ch.get("token_ids") or []
                        lps += (ch.get("logprobs") or {}).get("token_logprobs") or []
                        if ch.get("finish_reason") == "abort":
                            raise RuntimeError("the completion was aborted by a swap")
                if not done:
                    raise RuntimeError("stream ended without [DONE]")
            self.versions.add(version)
            self.tokens += tokens
            if self.keep and prompt_ids and ids:
                self.completions.append((version, list(prompt_ids), ids, lps))
            if self.stamped and fingerprints != {f"reverie-v{version}"}:
                self.mixed += 1
                self.mixed_examples.append(f"header v{version}, chunks {sorted(map(str, fingerprints))}")
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            self.failed += 1
            self.errors.append(repr(e)[:300])
            if self.retry_s:
                await asyncio.sleep(self.retry_s)

    @property
    def first_token_seconds(self) -> list[float]:
        """From sending each answered request to its first token."""
        return [first - sent for sent, first in self.first_tokens]

    async def run(self, stop: asyncio.Event) -> None:
        await run_clients(self._one, self.concurrency, stop)


async def run_clients(one, concurrency: int, stop: asyncio.Event) -> None:
    """``concurrency`` clients, each calling ``await one(client)`` (an ``httpx.AsyncClient``) until ``stop``."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def worker():
            while not stop.is_set():
                await one(client)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


async def _measure_load(url, key, concurrency, max_tokens, action, keep: bool = False):
    """Run the load while ``action()`` runs (or for a fixed time if action is a number); (load, seconds)."""
    load = _Load(url, key, concurrency, max_tokens)
    load.keep = keep
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    t0 = time.perf_counter()
    result = await action() if callable(action) else await asyncio.sleep(action)
    stop.set()
    await task
    return load, time.perf_counter() - t0, result


def run_bench(params: str = "100M", replicas: int = 1, concurrency: int = 32, swaps: int = 10,
              max_tokens: int = 32, steady_seconds: float = 20.0, swap_mode: str = "wait", pin_cpus: bool = True,
              swap_interval: float = 1.0, progress=print) -> dict:
    from ray import serve

    from reverie.config import LoopConfig
    from reverie.config import ServeConfig
    from reverie.ray_start import quiet_http_clients, start_ray
    from serve.app import Deployment
    from serve.auth import Keys

    quiet_http_clients()
    work = Path(tempfile.mkdtemp(prefix="reverie-bench-"))
    try:
        model_dir = model_for(params, work, progress)
        from safetensors.torch import load_file

        state = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(f))
        n_params = sum(t.numel() for t in state.values())
        variants = [_noisy(state, 1), _noisy(state, 2)]
        copies = [copy_seconds(v) for v in variants * 3]
        n_bytes = sum(t.numel() * t.element_size() for t in variants[0].values())

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = ServeConfig(model_dir=model_dir, data_dir=str(work / "data"), replicas=replicas, port=port,
                          swap_timeout_s=120.0, swap_mode=swap_mode, pin_cpus=pin_cpus,
                          loop=LoopConfig(learn=False))  # swaps only: no learning loop in the measurement
        plan = cfg.cpu_plan()
        progress("measuring raw vLLM throughput (same engine arguments and core placement, no Serve)")
        raw_tps = asyncio.run(_raw_vllm_tokens_per_second(model_dir, concurrency, max_tokens, steady_seconds, plan))
        progress(f"raw vLLM: {raw_tps:.1f} tokens/s")

        start_ray(num_cpus=max(8, 2 * replicas + 2), cpu_plan=plan)
        keys = Keys(secrets.token_urlsafe(24), secrets.token_urlsafe(24), "bench (in memory)")
        dep = Deployment(cfg, keys.digests())
        try:
            dep.wait_until_running()
            progress(f"serving {replicas} replica(s) at {dep.base_url}")

            async def main():
                url = dep.base_url
                warm, _, _ = await _measure_load(url, keys.api_key, concurrency, max_tokens, 5.0)
                steady, steady_s, _ = await _measure_load(url, keys.api_key, concurrency, max_tokens, steady_seconds)
                broadcaster = dep.broadcaster()
                timings: list[dict] = []

                async def do_swaps():
                    await asyncio.sleep(1.0)
                    for i in range(swaps):
                        t0 = time.perf_counter()
                        r = await broadcaster.publish(variants[i % 2], note=f"bench {i}")
                        reps = r["replicas"]
                        timings.append({"total": time.perf_counter() - t0, "install": r["swap_seconds"],
                                        "pack": r["pack_seconds"],
                                        "drain": max(x.get("drain_seconds", 0.0) for x in reps),
                                        "reload": max(x.get("load_seconds", 0.0) for x in reps)})
                        progress(f"swap {i + 1}/{swaps}: version {r['version']} in {timings[-1]['total']:.2f} s")
                        await asyncio.sleep(swap_interval)

                load, load_s, _ = await _measure_load(url, keys.api_key, concurrency, max_tokens, do_swaps,
                                                      keep=True)
                return steady, steady_s, load, load_s, timings

            steady, steady_s, load, load_s, timings = asyncio.run(main())
            from serve.verify import mismatched

            progress(f"checking {len(load.completions)} completions against their versions' weights")
            wrong = mismatched(load.completions, dep.registry, model_dir)
            load.mixed += len(wrong)
            load.mixed_examples += [f"v{c[0]}: log-probs do not fit its weights" for c in wrong[:3]]
        finally:
            dep.shutdown()
            serve.shutdown()
            import ray

            ray.shutdown()
        # The machine is shared: raw throughput is measured before and after the Serve run, and averaged.
        progress("measuring raw vLLM throughput again")
        raw_after = asyncio.run(_raw_vllm_tokens_per_second(model_dir, concurrency, max_tokens, steady_seconds, plan))
        raw_mean = (raw_tps + raw_after) / 2
        totals = [t["total"] for t in timings]
        steady_tps = steady.tokens / steady_s
        report = {
            "params": int(n_params), "replicas": replicas, "swaps": len(timings),
            "swap_seconds_median": statistics.median(totals), "swap_seconds_max": max(totals),
            "weight_bytes": n_bytes, "copy_seconds_median": statistics.median(copies),
            "requests": load.requests, "failed": load.failed, "mixed_version_responses": load.mixed,
            "checked_responses": len(load.completions),
            "tokens_per_second": load.tokens / load_s,
            "first_token_seconds_median": _median(load.first_token_seconds),
            "first_token_seconds_max": max(load.first_token_seconds, default=None),
            "first_token_seconds_median_steady": _median(steady.first_token_seconds),
            "raw_vllm_tokens_per_second": raw_mean,
            "serve_tokens_per_second_steady": steady_tps,
            "serve_to_raw_ratio": steady_tps / raw_mean if raw_mean else None,
            "install_seconds_median": statistics.median(t["install"] for t in timings),
            "pack_seconds_median": statistics.median(t["pack"] for t in timings),
            "drain_seconds_median": statistics.median(t["drain"] for t in timings),
            "reload_seconds_median": statistics.median(t["reload"] for t in timings),
            "reload_seconds_max": max(t["reload"] for t in timings),
            "raw_vllm_tokens_per_second_before": raw_tps, "raw_vllm_tokens_per_second_after": raw_after,
            "versions_seen": len(load.versions), "concurrency": concurrency, "max_tokens": max_tokens,
            "swap_mode": swap_mode, "swap_interval_seconds": swap_interval,
            "cpu_plan": {"engine": list(plan.engine), "host": list(plan.host)} if plan else None,
            "steady_failed": steady.failed,
        }
        if load.errors:
            report["first_errors"] = load.errors[:3]
        if load.mixed_examples:
            report["first_mixed"] = load.mixed_examples[:3]
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
