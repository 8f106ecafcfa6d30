"""``reverie bench cycle``: from a rule given through ``/v1/feedback`` to the first answer that follows it,
served by a promoted version, on the running system with the tiny world (auto-approval).

Every figure is measured in the run that prints it:
- ``feedback_to_served_seconds``: from the moment ``POST /v1/feedback`` returned to the first chat
  response whose ``x-reverie-version`` is the new version and whose answer follows the rule (a held-out
  copy task is asked every second through the public API);
- ``steps``: the controller's own time per step of that cycle (collect, learn, gate, swap), from its status;
- ``peak_rss_bytes``: the peak, over the run, of the summed resident memory of this process and every
  process it started (Ray's daemons, Serve's proxy and replicas, the vLLM engine, the store, the controller,
  the learner), sampled every half second;
- ``api_rule_accuracy_before`` / ``_after``: greedy accuracy on held-out rule items through the API;
  ``api_retention_*``: the same on 24 held-out items of each base skill, before the feedback and after the
  new version serves;
- ``failed_requests``: requests of the probe that raised.
"""
from __future__ import annotations

import os
import random
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path

from simulators.tinyworld.build import SHIPPED_MODEL

TARGET_SECONDS = 180.0
TARGET_RSS_BYTES = 8 << 30


def _pss(pid: int) -> int:
    """The proportional set size of ``pid`` in bytes (``/proc/PID/smaps_rollup``: every page shared by n
    processes counts 1/n to each), or 0 where the kernel does not say (the process is gone, or no Linux)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class _PeakRss:
    """Samples the memory of this process and all its descendants every ``every`` seconds: ``peak`` is the
    peak of their summed RSS (a page that n processes share, such as torch's libraries in every Ray worker,
    counts n times), ``peak_pss`` the peak of their summed proportional set size (each page once: what the
    process tree takes from the machine; 0 where the kernel has no ``smaps_rollup``)."""

    def __init__(self, every: float = 0.5):
        import psutil

        self.every, self.peak, self.peak_pss, self._stop = every, 0, 0, threading.Event()
        self._me = psutil.Process(os.getpid())
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        import psutil

        rss = pss = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
            pss += _pss(p.pid)
        return rss, pss

    def _run(self):
        while not self._stop.is_set():
            rss, pss = self._sample()
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def run_bench(steps: int = 300, timeout_s: float = 1200.0, pin_cpus: bool = True, dream: bool = False,
              progress=print) -> dict:
    """``dream``: before the rule, users play tool episodes through the API, so the cycle also dreams on them
    (a rollout engine and a simulator run: the whole system's memory is measured)."""
    import httpx
    import openai
    from ray import serve

    from reverie.config import LoopConfig, ServeConfig
    from reverie.ray_start import quiet_http_clients, start_ray
    from serve.app import Deployment
    from serve.auth import Keys
    from simulators.tinyworld import world as W
    from simulators.tinyworld.evaluate import eval_items
    from simulators.tinyworld.skills import BASE_SKILLS
    from simulators.tinyworld.text import spaced

    quiet_http_clients()
    work = Path(tempfile.mkdtemp(prefix="reverie-bench-cycle-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(work / "data"), port=port, pin_cpus=pin_cpus,
                      loop=LoopConfig(approval="auto", min_feedback=1, poll_s=0.5, steps=steps,
                                      min_episodes=10**6, dream_episodes=64))  # asks join the feedback's cycle
    keys = Keys(secrets.token_urlsafe(24), secrets.token_urlsafe(24), "bench (in memory)")
    t_start = time.perf_counter()
    with _PeakRss() as rss:
        start_ray(num_cpus=8, cpu_plan=cfg.cpu_plan())
        dep = Deployment(cfg, keys.digests())
        try:
            dep.wait_until_running()
            client = openai.OpenAI(base_url=dep.base_url + "/v1", api_key=keys.api_key, max_retries=0, timeout=60)
            admin = {"Authorization": f"Bearer {keys.admin_key}"}
            items = eval_items("rule", "student", 24)

            def accuracy(batch=items) -> float:
                right = 0
                for it in batch:
                    r = client.chat.completions.create(model="reverie", messages=list(it.prompt), temperature=0,
                                                       max_tokens=32)
                    right += it.verify(r.choices[0].message.content)
                return right / len(batch)

            def retention() -> dict:
                return {s: accuracy(eval_items(s, None, 24)) for s in BASE_SKILLS}

            before, retained_before = accuracy(), retention()
            base = httpx.get(dep.base_url + "/admin/status", headers=admin, timeout=30).json()["promoted"]
            rng = random.Random(0)
            if dream:
                from simulators.tinyworld.skills import new_tools_task
                from simulators.tinyworld.tools_env import EVAL_MAX_TURNS, ToolsEnv

                for _ in range(4):  # an agent's client runs the model's tool calls in the environment
                    env = ToolsEnv(new_tools_task(rng), max_turns=EVAL_MAX_TURNS)
                    env.reset()
                    while True:
                        msgs = [dict(m, tool_call_id="call-0") if m["role"] == "tool" else dict(m)
                                for m in env.transcript]
                        reply = client.chat.completions.create(model="reverie", messages=msgs, temperature=0,
                                                               max_tokens=24).choices[0].message.content
                        if env.step(reply).done:
                            break
                time.sleep(2 * cfg.store_flush_seconds)  # recorded before the rule arrives
            asked = client.chat.completions.create(
                model="reverie", messages=[{"role": "user", "content": "copy : " + spaced("mopik")}], temperature=0,
                max_tokens=24)
            r = httpx.post(dep.base_url + "/v1/feedback", headers={"Authorization": f"Bearer {keys.api_key}"},
                           json={"response_id": asked.id, "rule": W.rule_text(*W.NEW_RULE)}, timeout=30)
            r.raise_for_status()
            t_feedback = time.perf_counter()
            progress("rule given; waiting for a promoted version that follows it")
            served_at, failed, probes, version = None, 0, 0, base
            while time.perf_counter() - t_feedback < timeout_s:
                it = rng.choice(items)
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="reverie", messages=list(it.prompt), temperature=0, max_tokens=32)
                    probes += 1
                    version = int(raw.headers["x-reverie-version"])
                    if version != base and it.verify(raw.parse().choices[0].message.content):
                        served_at = time.perf_counter()
                        break
                except Exception:  # noqa: BLE001 - counted
                    failed += 1
                time.sleep(1.0)
            status = httpx.get(dep.base_url + "/admin/status", headers=admin, timeout=30).json()
            cycle = next((c for c in status["cycles"] if c.get("candidate") == version), status["cycle"])
            after, retained_after = accuracy(), retention()
        finally:
            dep.shutdown()
            serve.shutdown()
            import ray

            ray.shutdown()
    seconds = None if served_at is None else served_at - t_feedback
    return {
        "feedback_to_served_seconds": seconds,
        "steps": {k: round(v, 3) for k, v in (cycle.get("seconds") or {}).items()},
        "learner_steps": steps,
        "dream": cycle.get("dream") or None,
        "version": version,
        "base_version": base,
        "api_rule_accuracy_before": before,
        "api_rule_accuracy_after": after,
        "api_retention_before": retained_before,
        "api_retention_after": retained_after,
        "api_retention_avg_before": sum(retained_before.values()) / len(retained_before),
        "api_retention_avg_after": sum(retained_after.values()) / len(retained_after),
        "probes": probes,
        "failed_requests": failed,
        "peak_rss_bytes": rss.peak,
        "peak_rss_gib": round(rss.peak / (1 << 30), 3),
        "target_seconds": TARGET_SECONDS,
        "target_rss_bytes": TARGET_RSS_BYTES,
        "met": seconds is not None and seconds <= TARGET_SECONDS and rss.peak <= TARGET_RSS_BYTES,
        "wall_seconds": time.perf_counter() - t_start,
        "cpu_plan": (lambda p: None if p is None else {"engine": list(p.engine), "host": list(p.host)})(cfg.cpu_plan()),
    }


__all__ = ["run_bench"]
