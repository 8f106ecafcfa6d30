"""One serving replica: Ray Serve LLM's ``LLMServer`` (a vLLM engine) plus
reverie's version gate, experience capture and weight installation.

Version discipline:
- A request passes the gate, is stamped with the replica's current version,
  and holds the gate until its last token is sent.
- ``reverie_install`` closes the gate (new requests wait, they do not fail),
  drains in-flight requests (``mode="wait"``, the default) or pauses/aborts
  them (``"keep"``/``"abort"``, vLLM's other pause modes), reloads the weights
  through the worker extension, and reopens the gate.  In ``wait`` mode no
  response is ever produced by two versions.
- Every step has a timeout; on any failure the previous weights are put back
  and the replica keeps serving the previous version.
- ``start`` loads the promoted version before the replica takes traffic
  (Serve routes to a replica only once its constructor has returned).
"""
from __future__ import annotations

import asyncio
import logging
import time

import msgpack

from ray import serve
from ray.serve.llm import LLMServer

from actors.versions import VersionRegistry
from serve.capture import Capture

logger = logging.getLogger("reverie.serve")

PAUSE_MODES = ("wait", "keep", "abort")
MARKER = "__reverie__"


class _Gate:
    def __init__(self):
        self.open = asyncio.Event()
        self.open.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.inflight = 0

    async def enter(self) -> None:
        while not self.open.is_set():
            await self.open.wait()
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


class ReverieLLMServer(LLMServer):
    async def __init__(self, llm_config, *, versions_dir: str, store_name: str | None = None,
                   store_namespace: str = "reverie", pin_cpus: bool = False, engine_cls=None, model_downloader=None):
        from reverie import cpus

        self._cpu_plan = cpus.plan() if pin_cpus else None
        if self._cpu_plan is not None:
            cpus.claim_all(self._cpu_plan)  # the engine this replica spawns may bind to the engine cores
        self._registry = VersionRegistry(versions_dir)
        self._gate = _Gate()
        self._swap_lock = asyncio.Lock()
        self._version: int | None = None
        self._weights: list[str] | None = None
        self._store_name = store_name
        self._store_namespace = store_namespace
        self._store = None
        try:
            rid = serve.get_replica_context().replica_id
            self._replica, self._actor_name = rid.unique_id, rid.to_full_id_str()
        except Exception:
            self._replica, self._actor_name = "local", None
        await super().__init__(llm_config, engine_cls=engine_cls, model_downloader=model_downloader)

    async def start(self):
        await super().start()
        if self._cpu_plan is not None:
            from reverie import cpus

            cpus.leave_engine_cores(self._cpu_plan)
        info = self._registry.promoted()
        if info.source != "base":
            result = await self._load(info.weights, timeout_s=300.0)
            if not result["ok"]:
                raise RuntimeError(f"replica could not load promoted version {info.version}: {result['error']}")
        self._version, self._weights = info.version, info.weights
        logger.info("replica %s serving version %s", self._replica, self._version)

    # ------------------------------------------------------------ requests
    def _store_handle(self):
        if self._store is None and self._store_name:
            import ray

            self._store = ray.get_actor(self._store_name, namespace=self._store_namespace)
        return self._store

    async def _record(self, cap: Capture) -> None:
        store = self._store_handle()
        if store is None or not cap.complete:
            return
        try:
            await store.append.remote("interactions", [msgpack.packb(cap.record(), use_bin_type=True)])
        except Exception as e:  # the user still gets the answer; the loss is loud in the log
            logger.error("could not record interaction %s: %s", cap.id, e)

    async def _serve(self, kind: str, request, raw_request_info):
        from ray.llm._internal.serve.core.configs.openai_api_models import ErrorResponse

        await self._gate.enter()
        try:
            version = self._version
            yield {MARKER: {"version": version, "replica": self._replica}}
            cap = Capture(kind, request, version, self._replica, self._llm_config.model_id)
            stream = await self._run_request(
                request, engine_method="chat" if kind == "chat" else "completions",
                batch_output_stream=True, raw_request_info=raw_request_info,
            )
            async for item in stream:
                if isinstance(item, list):
                    out, done = [], False
                    for event in item:
                        if isinstance(event, str):
                            event, is_done = cap.rewrite_sse(event)
                            done = done or is_done
                        out.append(event)
                    if done:
                        await self._record(cap)
                    yield out
                elif isinstance(item, ErrorResponse):
                    yield item
                else:
                    payload = item.model_dump()
                    cap.absorb(payload)
                    cap.scrub(payload)
                    await self._record(cap)
                    yield payload
        finally:
            self._gate.leave()

    async def chat(self, request, raw_request_info=None):
        async for item in self._serve("chat", request, raw_request_info):
            yield item

    async def completions(self, request, raw_request_info=None):
        async for item in self._serve("completion", request, raw_request_info):
            yield item

    # ------------------------------------------------------------ versions
    async def _load(self, paths: list[str], timeout_s: float) -> dict:
        results = await asyncio.wait_for(
            self.engine.collective_rpc(method="reverie_load_weights", args=(list(paths),), timeout=timeout_s),
            timeout=timeout_s,
        )
        bad = [r for r in results if not (isinstance(r, dict) and r.get("ok"))]
        if bad or not results:
            return {"ok": False, "error": str(bad[0].get("error") if bad and isinstance(bad[0], dict) else bad or "no workers")}
        return {"ok": True, "seconds": max(r["seconds"] for r in results)}

    async def reverie_install(self, version: int, paths: list[str], mode: str = "wait", timeout_s: float = 60.0) -> dict:
        """Install ``paths`` as ``version``; returns a status dict (never raises)."""
        if mode not in PAUSE_MODES:
            return {"replica": self._replica, "ok": False, "version": self._version, "error": f"unknown mode {mode!r}"}
        t0 = time.perf_counter()
        async with self._swap_lock:
            previous, previous_weights = self._version, self._weights
            if version == previous and list(paths) == list(previous_weights or []):
                return {"replica": self._replica, "ok": True, "version": version, "previous": previous, "seconds": 0.0}
            self._gate.open.clear()
            touched = False
            steps: dict[str, float] = {}
            try:
                t = time.perf_counter()
                if mode == "wait":
                    await asyncio.wait_for(self._gate.idle.wait(), timeout=timeout_s)
                steps["drain_seconds"] = time.perf_counter() - t
                t = time.perf_counter()
                await asyncio.wait_for(self.engine.pause(mode=mode, clear_cache=True), timeout=timeout_s)
                steps["pause_seconds"] = time.perf_counter() - t
                touched = True
                t = time.perf_counter()
                result = await self._load(paths, timeout_s)
                if not result["ok"]:
                    raise RuntimeError(result["error"])
                steps["load_seconds"] = time.perf_counter() - t
                self._version, self._weights = int(version), list(paths)
                return {"replica": self._replica, "ok": True, "version": self._version, "previous": previous,
                        "seconds": time.perf_counter() - t0, **steps}
            except Exception as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if touched and previous_weights:
                    try:
                        restored = await self._load(previous_weights, max(timeout_s, 60.0))
                        if not restored["ok"]:
                            raise RuntimeError(restored["error"])
                    except Exception as e2:
                        error += f"; restoring version {previous} also failed: {e2}"
                logger.error("replica %s: swap to version %s failed: %s", self._replica, version, error)
                return {"replica": self._replica, "ok": False, "version": self._version, "previous": previous,
                        "error": error, "seconds": time.perf_counter() - t0}
            finally:
                try:
                    await asyncio.wait_for(self.engine.resume(), timeout=max(timeout_s, 60.0))
                finally:
                    self._gate.open.set()

    async def reverie_repoint(self, version: int, paths: list[str]) -> dict:
        """Same weights, durable location: the restore point after the shared-memory copy is removed."""
        if self._version == version:
            self._weights = list(paths)
        return await self.reverie_status()

    async def reverie_status(self) -> dict:
        return {"replica": self._replica, "actor": self._actor_name, "version": self._version,
                "inflight": self._gate.inflight,
                "swapping": self._swap_lock.locked()}
