"""``reverie bench load``: many clients through the real HTTP API while versions are swapped, then the store
is checked against what the clients were answered.

Every figure is measured in the run that prints it:
- ``requests``, ``failed``: requests sent, and those that raised, got a non-200 answer or a stream that ended
  without ``[DONE]``; ``p50_ms``/``p99_ms``: latency of the answered ones (request sent to last byte).
- ``acknowledged``: answered requests (a whole body, or a stream to ``[DONE]``); ``recorded``: those whose
  response id is in the store's ``interactions`` table once the load is over; ``lost_records`` =
  acknowledged - recorded; ``duplicate_records``: rows of the table beyond one per id.
- ``swaps``: versions published under the load (``swap_every`` seconds apart, alternating two perturbations
  of the served model; the load goes on past ``seconds`` until ``min_swaps`` were tried); ``swap_failures``:
  publishes that raised.
- ``mixed_version_responses``: completions whose every token's log-prob does not match, within 1e-3, the
  weights of the version stamped on the response (recomputed in torch from the registry's files for that
  version): a response computed, even in part, by other weights than its stamp says.
  ``checked_responses`` is how many were recomputed (every answered completion).

The requests mix streamed and whole completions and chats, sampled at temperature 1 with a seed each, so
the answers differ and the engine's batches mix them.
"""
from __future__ import annotations

import asyncio
import json
import random
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["copy : a b c", "reverse : m o p i", "sort : d b a c", "copy : x y z w"]


class _Clients:
    def __init__(self, url: str, key: str, concurrency: int, max_tokens: int, seed: int):
        self.url, self.key, self.concurrency, self.max_tokens = url, key, concurrency, max_tokens
        self.rng = random.Random(seed)
        self.requests = self.failed = 0
        self.latencies: list[float] = []
        self.acknowledged: list[str] = []
        self.completions: list[tuple[int, list[int], list[int], list[float]]] = []  # version, prompt, ids, lps
        self.errors: list[str] = []

    async def _one(self, client) -> None:
        kind = self.rng.choice(("stream", "whole", "chat", "chat-stream"))
        seed = self.rng.randrange(2**31)
        prompt = self.rng.choice(PROMPTS)
        headers = {"Authorization": f"Bearer {self.key}"}
        if kind.startswith("chat"):
            path = "/v1/chat/completions"
            body = {"model": "reverie", "messages": [{"role": "user", "content": prompt}], "seed": seed,
                    "max_tokens": self.max_tokens, "temperature": 1.0, "stream": kind == "chat-stream"}
        else:
            path = "/v1/completions"
            body = {"model": "reverie", "prompt": f"<|user|> {prompt}<|end|><|assistant|>", "seed": seed,
                    "max_tokens": self.max_tokens, "temperature": 1.0, "logprobs": 0, "return_token_ids": True,
                    "stream": kind == "stream"}
        self.requests += 1
        t0 = time.perf_counter()
        try:
            if body["stream"]:
                async with client.stream("POST", self.url + path, json=body, headers=headers) as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    version = int(r.headers["x-reverie-version"])
                    chunks, done = [], False
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                raise RuntimeError(str(chunk["error"])[:200])
                            chunks.append(chunk)
                    if not done:
                        raise RuntimeError("stream ended without [DONE]")
            else:
                r = await client.post(self.url + path, json=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]!r}")
                version = int(r.headers["x-reverie-version"])
                chunks = [r.json()]
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            self.failed += 1
            self.errors.append(repr(e)[:300])
            return
        self.latencies.append(time.perf_counter() - t0)
        self.acknowledged.append(chunks[0]["id"])
        if path == "/v1/completions":
            prompt_ids, ids, lps = None, [], []
            for c in chunks:
                for ch in c.get("choices", []):
                    prompt_ids = prompt_ids or ch.get("prompt_token_ids")
                    ids += ch.get("token_ids") or []
                    lps += (ch.get("logprobs") or {}).get("token_logprobs") or []
            if prompt_ids and ids:
                self.completions.append((version, list(prompt_ids), ids, lps))

    async def run(self, stop: asyncio.Event) -> None:
        from bench.swap import run_clients

        await run_clients(self._one, self.concurrency, stop)


def run_load(concurrency: int = 64, seconds: float = 60.0, swap_every: float = 10.0, max_tokens: int = 16,
             replicas: int = 1, seed: int = 0, min_swaps: int = 0, progress=print) -> dict:
    import ray
    import torch
    from ray import serve
    from safetensors.torch import load_file

    from actors.store import read_table
    from reverie.config import LoopConfig, ServeConfig
    from reverie.ray_start import quiet_http_clients, start_ray
    from serve.app import Deployment
    from serve.auth import Keys
    from serve.verify import mismatched
    from simulators.tinyworld.build import SHIPPED_MODEL

    quiet_http_clients()
    work = Path(tempfile.mkdtemp(prefix="reverie-bench-load-"))
    state = {}
    for f in sorted(Path(SHIPPED_MODEL).glob("*.safetensors")):
        state.update(load_file(f))
    variants = []
    for s in (1, 2):
        g = torch.Generator().manual_seed(s)
        variants.append({k: (v + 0.02 * torch.randn(v.shape, generator=g)).contiguous() for k, v in state.items()})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(work / "data"), replicas=replicas, port=port,
                      swap_timeout_s=120.0, loop=LoopConfig(learn=False))
    start_ray(num_cpus=max(8, 2 * replicas + 2))
    keys = Keys(secrets.token_urlsafe(24), secrets.token_urlsafe(24), "bench (in memory)")
    dep = Deployment(cfg, keys.digests())
    try:
        dep.wait_until_running()
        progress(f"serving {replicas} replica(s) at {dep.base_url}; {concurrency} clients for {seconds:.0f} s")
        swaps: list[int] = []
        swap_errors: list[str] = []

        async def main():
            clients = _Clients(dep.base_url, keys.api_key, concurrency, max_tokens, seed)
            stop = asyncio.Event()
            task = asyncio.create_task(clients.run(stop))
            t0 = time.perf_counter()
            broadcaster = dep.broadcaster()
            i = 0  # swaps tried

            def more() -> bool:
                return time.perf_counter() - t0 < seconds or i < min_swaps

            while more():
                await asyncio.sleep(min(swap_every, max(0.0, seconds - (time.perf_counter() - t0))))
                if not more():
                    break
                try:
                    r = await broadcaster.publish(variants[i % 2], note=f"bench load {i}")
                    swaps.append(r["version"])
                    progress(f"swap {len(swaps)}: version {r['version']} in {r['seconds']:.1f} s "
                             f"({clients.requests} requests, {clients.failed} failed)")
                except Exception as e:  # noqa: BLE001 - counted
                    swap_errors.append(repr(e)[:300])
                i += 1
            stop.set()
            await task
            return clients, time.perf_counter() - t0

        clients, elapsed = asyncio.run(main())
        ray.get(dep.store.flush.remote())
        ids = read_table(cfg.data_dir, "interactions", columns=["id"]).column("id").to_pylist()
        stored = set(ids)
        acknowledged = set(clients.acknowledged)
        progress(f"checking {len(clients.completions)} completions against their versions' weights")
        mixed = len(mismatched(clients.completions, dep.registry, Path(SHIPPED_MODEL)))
    finally:
        dep.shutdown()
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    lat = sorted(clients.latencies)
    report = {
        "requests": clients.requests, "failed": clients.failed,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "swaps": len(swaps), "swap_failures": len(swap_errors),
        "acknowledged": len(acknowledged), "recorded": len(acknowledged & stored),
        "lost_records": len(acknowledged - stored), "duplicate_records": len(ids) - len(stored),
        "mixed_version_responses": mixed, "checked_responses": len(clients.completions),
        "concurrency": concurrency, "seconds": elapsed, "swap_every": swap_every, "min_swaps": min_swaps,
        "max_tokens": max_tokens,
        "replicas": replicas,
    }
    if clients.errors:
        report["first_errors"] = clients.errors[:3]
    if swap_errors:
        report["first_swap_errors"] = swap_errors[:3]
    return report
