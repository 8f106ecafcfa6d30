"""``reverie bench swap --swap-mode restart``: what a user does without hot-swap, measured.

Without reverie, new weights reach a served model by restarting its server on them.  This benchmark runs
vLLM's own OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``, the engine
arguments reverie uses: ``reverie/engine.py``) on a loopback port under the same streaming load as
``reverie bench swap`` (``concurrency`` clients, the same prompt and length), and ``restarts`` times stops
it and starts it again on the next weights, as a deployment script would.  Measured in the run:

- ``seconds_without_service_*``: from the old server's last token to the new server's first one: no client
  is answered in between (``stop_seconds_median``: the old server's shutdown, SIGTERM and at most
  ``STOP_GRACE_S`` before SIGKILL; ``start_seconds_median``: the new one's start until it answers);
- ``failed``: requests that failed, those cut mid-stream by the stop and those refused while no server
  listened (``refused``; a failed client waits ``RETRY_S`` before it asks again, as a client with a retry
  would, so ``refused`` counts attempts, about ``concurrency`` per ``RETRY_S`` without service);
- ``copy_seconds_median``: copying the same weight bytes once in memory (the floor under any swap);
- ``tokens_per_second``: completion tokens streamed per second over the whole window, restarts included.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RETRY_S = 1.0
READY_TIMEOUT_S = 600.0
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(model_dir: Path, port: int, api_key: str) -> list[str]:
    """vLLM's OpenAI server with reverie's engine arguments, on loopback, as model ``reverie``."""
    from reverie.engine import engine_kwargs

    kw = engine_kwargs(model_dir)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", kw["model"],
            "--served-model-name", "reverie", "--host", "127.0.0.1", "--port", str(port), "--api-key", api_key,
            "--dtype", kw["dtype"], "--max-model-len", str(kw["max_model_len"]), "--seed", str(kw["seed"]),
            "--gpu-memory-utilization", str(kw["gpu_memory_utilization"]), "--disable-uvicorn-access-log"]
    if kw.get("enforce_eager"):
        argv.append("--enforce-eager")
    if kw.get("kv_cache_memory_bytes"):
        argv += ["--kv-cache-memory-bytes", str(kw["kv_cache_memory_bytes"])]
    return argv


class Server:
    """One vLLM server process; ``stop`` ends it (SIGTERM, then SIGKILL) and waits."""

    def __init__(self, model_dir: Path, port: int, api_key: str, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(server_argv(model_dir, port, api_key), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, "VLLM_CONFIGURE_LOGGING": "1"})

    async def ready(self, api_key: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        import httpx

        deadline = time.perf_counter() + timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the vLLM server exited with status {self.proc.returncode} before it was ready")
                try:
                    r = await client.get(self.url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"})
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the vLLM server was not ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:  # under load vLLM's graceful shutdown outlasted 60 s here: a deploy script would not wait
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=60)
        self._log.close()


def _weights_dirs(model_dir: Path, work: Path, n: int) -> tuple[list[Path], list[float], int, int]:
    """``n`` copies of ``model_dir`` with noisy weights (as ``bench swap`` publishes), the seconds to copy the
    weights once in memory, the weights' bytes and their parameter count."""
    from safetensors.torch import load_file, save_file

    from bench.swap import _noisy, copy_seconds

    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(f))
    copies, dirs = [], []
    for i in range(n):
        variant = _noisy(state, i + 1)
        copies.append(copy_seconds(variant))
        d = work / f"weights-{i}"
        shutil.copytree(model_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
        save_file({k: t.contiguous() for k, t in variant.items()}, d / "model.safetensors")
        dirs.append(d)
    return (dirs, copies, sum(t.numel() * t.element_size() for t in state.values()),
            sum(t.numel() for t in state.values()))


def run_restart_bench(params: str = "tiny", concurrency: int = 32, restarts: int = 3, max_tokens: int = 32,
                      interval: float = 5.0, progress=print) -> dict:
    """Serve, load, and restart the server on new weights ``restarts`` times; the report."""
    from bench.swap import _Load, model_for, run_clients

    work = Path(tempfile.mkdtemp(prefix="reverie-bench-restart-"))
    try:
        model_dir = model_for(params, work, progress)
        dirs, copies, n_bytes, n_params = _weights_dirs(model_dir, work, restarts)
        key, port = secrets.token_urlsafe(24), _port()

        async def main():
            server = Server(model_dir, port, key, work / "server.log")
            await server.ready(key)
            progress(f"vLLM server ready at {server.url}")
            load = _Load(server.url, key, concurrency, max_tokens, stamped=False, retry_s=RETRY_S)
            stop = asyncio.Event()
            clients = asyncio.create_task(run_clients(load._one, concurrency, stop))
            t_start = time.perf_counter()
            gaps, phases = [], []  # phases: (seconds to stop the old server, seconds until the new one is ready)
            try:
                await asyncio.sleep(interval)
                for i, d in enumerate(dirs):
                    t0 = time.perf_counter()
                    await asyncio.to_thread(server.stop)
                    spawned = time.perf_counter()
                    last_old = load.last_token_at  # the old server's last token: service ends here
                    server = Server(d, port, key, work / "server.log")
                    await server.ready(key)
                    phases.append((spawned - t0, time.perf_counter() - spawned))

                    def first_new() -> float | None:  # the first token of a request sent to the new server
                        return min((f for sent, f in load.first_tokens if sent >= spawned), default=None)

                    while first_new() is None and time.perf_counter() - t0 < READY_TIMEOUT_S:
                        await asyncio.sleep(0.05)
                    gaps.append(first_new() - last_old)
                    progress(f"restart {i + 1}/{len(dirs)}: no service for {gaps[-1]:.1f} s")
                    await asyncio.sleep(interval)
            finally:
                stop.set()
                await clients
                seconds = time.perf_counter() - t_start
                await asyncio.to_thread(server.stop)
            return load, gaps, phases, seconds

        load, gaps, phases, seconds = asyncio.run(main())
        return {
            "kind": "restart", "params": n_params,
            "restarts": len(gaps), "concurrency": concurrency, "max_tokens": max_tokens,
            "seconds_without_service_median": statistics.median(gaps), "seconds_without_service_max": max(gaps),
            "stop_seconds_median": statistics.median(p[0] for p in phases),
            "start_seconds_median": statistics.median(p[1] for p in phases),
            "requests": load.requests, "failed": load.failed,
            "refused": sum(e.startswith("ConnectError") for e in load.errors),  # asked while no server listened
            "tokens_per_second": load.tokens / seconds,
            "weight_bytes": n_bytes, "copy_seconds_median": statistics.median(copies),
            "retry_seconds": RETRY_S, "errors": sorted(set(e.split("(")[0] for e in load.errors))[:5],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
