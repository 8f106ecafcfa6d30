"""One serving replica: Ray Serve LLM's ``LLMServer`` (a vLLM engine) plus
reverie's version gate, experience capture and weight installation.

Version discipline:
- A request passes the active engine's gate, is stamped with that engine's
  version, runs on that engine, and holds the gate until its last token is sent.
- ``reverie_install`` in ``wait`` mode (the default) closes the gate (new
  requests wait, they do not fail), drains in-flight requests, reloads the
  weights through the worker extension, and reopens the gate.  ``keep`` and
  ``abort`` (vLLM's other pause modes) pause or end in-flight requests
  instead.  In ``wait`` mode no response is ever produced by two versions.
- ``standby`` mode (chosen when the replica starts: it keeps a second engine):
  the new version is loaded into the idle engine while the active one goes on
  serving, then new requests switch to it; requests already running finish on
  the engine and version they started on.  No request waits for a drain and
  no response mixes versions; the cost is a second engine's memory.  A
  rollback to the version the standby still holds is a switch, not a reload.
- Every step has a timeout; on any failure the replica keeps serving the
  previous version (in ``wait``/``keep``/``abort`` the previous weights are
  reloaded; in ``standby`` the active engine was never touched).
- ``start`` loads the promoted version before the replica takes traffic
  (Serve routes to a replica only once its constructor has returned).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ray import serve
from ray.serve.llm import LLMServer

from reverie.config import SWAP_MODES
from reverie.files import acquire
from reverie.ray_start import serve_replicas_on_loopback
from reverie.versions import SWAP_LOCK, VersionRegistry
from reverie.weight_sync import SHM, WeightMessage, WeightReceiver, WeightSender, node_id
from serve.capture import Capture
from serve.door import MARKER

logger = logging.getLogger("reverie.serve")
serve_replicas_on_loopback()  # in every LLM replica's process, before it serves (the ingress calls it too)

STORE_WAIT_S = 2.0  # the longest an answer waits for the experience store


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


@dataclass
class _Slot:
    """An engine, its gate, the version it holds (None while its weights are unknown), the local files it
    loaded them from and their checksum (``reverie.weight_sync``)."""
    engine: Any
    gate: _Gate = field(default_factory=_Gate)
    version: int | None = None
    weights: list[str] | None = None
    checksum: str | None = None

    def holds(self, version: int, checksum: str) -> bool:
        return self.version == version and self.checksum == checksum

    def set(self, version: int | None, paths: list[str] | None = None, checksum: str | None = None) -> None:
        self.version, self.weights, self.checksum = version, paths, checksum


class ReverieLLMServer(LLMServer):
    async def __init__(self, llm_config, *, versions_dir: str, store_name: str | None = None,
                   store_namespace: str = "reverie", pin_cpus: bool = False, standby: bool = False,
                   engine_cls=None, model_downloader=None):
        from reverie import cpus

        self._cpu_plan = cpus.plan() if pin_cpus else None
        if self._cpu_plan is not None:
            cpus.claim_all(self._cpu_plan)  # the engines this replica spawns may bind to the engine cores
        else:
            cpus.unbound()  # not to the cores vLLM picks for every replica alike
        self._registry = VersionRegistry(versions_dir)
        self._with_standby = standby
        self._active: _Slot | None = None
        self._spare: _Slot | None = None  # the standby engine, in standby mode
        self._swap_lock = asyncio.Lock()
        self._broken: str | None = None  # why this replica must not serve (a swap and its restore failed)
        self._catching_up: asyncio.Task | None = None
        self._store_name = store_name
        self._store_namespace = store_namespace
        self._store = None
        try:
            rid = serve.get_replica_context().replica_id
            self._replica, self._actor_name = rid.unique_id, rid.to_full_id_str()
        except Exception:
            self._replica, self._actor_name = "local", None
        # Weights sent through the object store land in this node's shared-memory root, in a folder of its own.
        self._receiver = WeightReceiver(name=f"replica-{self._replica}")
        await super().__init__(llm_config, engine_cls=engine_cls, model_downloader=model_downloader)

    async def _start_engine(self):
        """``LLMServer``'s, less its usage report: Ray LLM would start a detached actor on the head node to count
        deployments (4.5 s of CPU and 382 MB, in ``bench/results/suite-time/2026-12-06-app-start-processes.txt``);
        reverie reports no usage anywhere."""
        await self.engine.start()

    async def start(self):
        await super().start()
        slots = [_Slot(self.engine)]
        if self._with_standby:
            from serve.ray_llm import ENGINE_START_TIMEOUT_S

            spare = self._engine_cls(self._llm_config)
            await asyncio.wait_for(spare.start(), timeout=ENGINE_START_TIMEOUT_S)
            slots.append(_Slot(spare))
        if self._cpu_plan is not None:
            from reverie import cpus

            cpus.leave_engine_cores(self._cpu_plan)
        # A swap running now holds the registry's swap lock: wait for it, then load what it promoted (a swap
        # that starts while this replica loads waits in turn).
        held = await asyncio.to_thread(acquire, self._registry.root / SWAP_LOCK)
        try:
            info = self._registry.promoted()
            local = await asyncio.to_thread(WeightSender(SHM).send, info.version, info.weights)
            for slot in slots:
                if info.source != "base":
                    result = await self._load(slot.engine, info.weights, timeout_s=300.0)
                    if not result["ok"] or result["checksum"] != local.checksum:
                        raise RuntimeError(f"replica could not load promoted version {info.version}: "
                                           f"{result.get('error') or 'it loaded other weights than the registry holds'}")
                slot.set(info.version, list(info.weights), local.checksum)
        finally:
            held.close()
        self._active = slots[0]
        self._spare = slots[1] if len(slots) > 1 else None
        logger.info("replica %s serving version %s%s", self._replica, info.version,
                    " (with a standby engine)" if self._spare else "")

    async def __del__(self) -> None:
        """Serve's shutdown of this replica: its received copies leave the node's shared memory with it."""
        receiver = getattr(self, "_receiver", None)
        if receiver is not None:
            receiver.release()
        await super().__del__()

    async def check_health(self) -> None:
        if self._broken:  # its weights are unknown: Serve replaces it, and the new one loads the promoted version
            raise RuntimeError(self._broken)
        await super().check_health()
        if self._spare is not None:
            await self._spare.engine.check_health()
        self._catch_up()

    def _catch_up(self) -> None:
        """Behind the promoted version while no swap runs (it was starting when a swap's broadcast went out):
        install the promoted version, holding the swap lock so that no swap interleaves."""
        if self._active is None or self._swap_lock.locked() or self._catching_up is not None:
            return
        info = self._registry.promoted()
        if self._active.version == info.version:
            return
        held = acquire(self._registry.root / SWAP_LOCK, wait=False)
        if held is None:
            return  # a swap is running: it installs here, or the next check looks again
        info = self._registry.promoted()  # under the lock: what is promoted now

        async def install():
            try:
                logger.warning("replica %s is on version %s, behind the promoted %s: installing it", self._replica,
                               self._active.version, info.version)
                local = await asyncio.to_thread(WeightSender(SHM).send, info.version, info.weights)
                result = await self.reverie_install(info.version, local, mode="wait", timeout_s=120.0)
                if not result["ok"]:
                    logger.error("replica %s could not catch up: %s", self._replica, result.get("error"))
            finally:
                held.close()
                self._catching_up = None

        self._catching_up = asyncio.get_running_loop().create_task(install())

    # ------------------------------------------------------------ requests
    def _store_handle(self):
        if self._store is None and self._store_name:
            import ray

            self._store = ray.get_actor(self._store_name, namespace=self._store_namespace)
        return self._store

    def _submit(self, cap: Capture):
        """Hand the interaction to the store actor; the call's reference, or None without a store.  The call
        survives a store restart (the actor's tasks are retried) and does not need this coroutine to wait."""
        try:
            store = self._store_handle()
            if store is None:
                return None
            ref = store.append.remote("interactions", [msgpack.packb(cap.record(), use_bin_type=True)])
        except Exception as e:  # noqa: BLE001 - the user still gets the answer; the loss is loud in the log
            logger.error("could not record interaction %s: %s", cap.id, e)
            return None

        def done(f):
            if not f.cancelled() and f.exception() is not None:
                logger.error("could not record interaction %s: %s", cap.id, f.exception())

        ref.future().add_done_callback(done)
        return ref

    async def _record(self, cap: Capture) -> None:
        """Record the interaction before its last chunk goes out, waiting at most ``STORE_WAIT_S`` for the
        store: a slow or restarting store delays an answer by that much, never more, and the record still
        lands when the store catches up."""
        ref = self._submit(cap)
        if ref is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(ref.future())), STORE_WAIT_S)
        except asyncio.TimeoutError:
            logger.warning("the experience store is slow: interaction %s is queued for it", cap.id)
        except Exception:  # noqa: BLE001 - logged by _submit's callback
            pass

    async def _enter(self) -> _Slot:
        """Pass the active engine's gate; if the active engine changed while waiting, go to the new one."""
        while True:
            slot = self._active
            await slot.gate.enter()
            if slot is self._active:
                return slot
            slot.gate.leave()

    async def _run_on(self, engine, request, engine_method: str, raw_request_info):
        """``LLMServer._run_request`` on a given engine: the engine is fixed before any await, so a switch in
        standby mode cannot move a stamped request to another engine."""
        await self._maybe_add_request_id_to_request(request)
        await self._maybe_resolve_lora_from_multiplex()
        stream = getattr(engine, engine_method)(request, raw_request_info)
        return self._batch_output_stream(stream) if getattr(request, "stream", False) else stream

    async def _serve(self, kind: str, request, raw_request_info):
        from serve.ray_llm import ErrorInfo, ErrorResponse

        slot = await self._enter()
        cap, recorded, ended = None, False, "cancelled"
        try:
            version = slot.version
            if version is None or self._broken:  # never stamp a response with weights nobody registered
                yield ErrorResponse(error=ErrorInfo(
                    message="this replica is being replaced after a failed swap; retry", type="ServiceUnavailable",
                    code=503))
                return
            yield {MARKER: {"version": version, "replica": self._replica}}
            cap = Capture(kind, request, version, self._replica, self._llm_config.model_id)
            stream = await self._run_on(slot.engine, request, "chat" if kind == "chat" else "completions",
                                        raw_request_info)
            async for item in stream:
                if isinstance(item, list):
                    out, done = [], False
                    for event in item:
                        if isinstance(event, str):
                            event, is_done = cap.rewrite_sse(event)
                            done = done or is_done
                        out.append(event)
                    if done and not recorded:
                        await self._record(cap)
                        recorded = True
                    yield out
                elif isinstance(item, ErrorResponse):
                    cap.error = item.error.message
                    yield item
                else:
                    payload = item.model_dump()
                    cap.absorb(payload)
                    cap.scrub(payload)
                    await self._record(cap)
                    recorded = True
                    yield payload
            ended = "error" if cap.error else "incomplete"
        except Exception as e:
            ended = "error"
            if cap is not None:
                cap.error = cap.error or f"{type(e).__name__}: {e}"
            raise
        finally:
            # A stream that sent something and did not finish (the client went away, the engine failed) is
            # recorded too, with what was sent; a request refused before any output is not.
            if cap is not None and not recorded and cap.started_output:
                cap.finish_reason = cap.finish_reason if cap.finish_reason and not cap.error else ended
                self._submit(cap)  # no waiting here: the request may be cancelled
            slot.gate.leave()

    async def chat(self, request, raw_request_info=None):
        async for item in self._serve("chat", request, raw_request_info):
            yield item

    async def completions(self, request, raw_request_info=None):
        async for item in self._serve("completion", request, raw_request_info):
            yield item

    # ------------------------------------------------------------ versions
    @staticmethod
    async def _load(engine, paths: list[str], timeout_s: float) -> dict:
        """Reload ``engine`` from local ``paths``; ``{"ok", "seconds", "checksum"}`` (of what its workers were
        given; workers that disagree fail the load)."""
        results = await asyncio.wait_for(
            engine.collective_rpc(method="reverie_load_weights", args=(list(paths),), timeout=timeout_s),
            timeout=timeout_s,
        )
        bad = [r for r in results if not (isinstance(r, dict) and r.get("ok"))]
        if bad or not results:
            return {"ok": False, "error": str(bad[0].get("error") if bad and isinstance(bad[0], dict) else bad or "no workers")}
        checksums = {r.get("checksum") for r in results}
        if len(checksums) != 1:
            return {"ok": False, "error": f"the engine's workers loaded different weights ({len(checksums)} checksums)"}
        return {"ok": True, "seconds": max(r["seconds"] for r in results), "checksum": checksums.pop()}

    def _status(self, ok: bool, previous, t0: float, **extra) -> dict:
        return {"replica": self._replica, "node": node_id(), "ok": ok, "version": self._active.version,
                "checksum": self._active.checksum, "previous": previous, "seconds": time.perf_counter() - t0, **extra}

    async def reverie_install(self, version: int, message: WeightMessage, mode: str = "wait",
                              timeout_s: float = 60.0) -> dict:
        """Install the weights ``message`` describes (``reverie.weight_sync``) as ``version``; returns a status
        dict with the checksum of what the engine loaded (never raises)."""
        t0 = time.perf_counter()
        if mode not in SWAP_MODES:
            return self._status(False, None, t0, error=f"unknown mode {mode!r}")
        if mode == "standby" and self._spare is None:
            return self._status(False, None, t0, error="this replica was started without a standby engine")
        if not isinstance(message, WeightMessage) or message.version != version:
            return self._status(False, None, t0, error=f"not a weight message for version {version}")
        async with self._swap_lock:
            previous = self._active.version
            if self._active.holds(version, message.checksum):
                return self._status(True, previous, t0, transport=message.transport)
            try:
                received = await asyncio.wait_for(asyncio.to_thread(self._receiver.receive, message), timeout_s)
                steps = {"receive_seconds": received.seconds, "transport": message.transport}
                paths, left = list(received.paths), max(0.001, timeout_s - received.seconds)
                if mode == "standby":
                    steps.update(await self._install_standby(int(version), paths, left))
                else:
                    steps.update(await self._install_in_place(int(version), paths, mode, left))
                keep = {self._active.version, self._spare.version if self._spare else None}
                await asyncio.to_thread(self._receiver.release, keep)
                return self._status(True, previous, t0, **steps)
            except Exception as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                logger.error("replica %s: swap to version %s failed: %s", self._replica, version, error)
                return self._status(False, previous, t0, error=error)

    async def _install_in_place(self, version: int, paths: list[str], mode: str, timeout_s: float) -> dict:
        """Close the gate, drain (wait) or pause (keep/abort), reload, reopen.  On failure the previous
        weights are reloaded before the error is raised."""
        slot = self._active
        previous_weights, previous_checksum = slot.weights, slot.checksum
        slot.gate.open.clear()
        touched = False
        steps: dict[str, float] = {}
        deadline = time.perf_counter() + timeout_s  # one bound for the whole swap: drain, pause and reload

        def left() -> float:
            return max(0.001, deadline - time.perf_counter())

        try:
            t = time.perf_counter()
            if mode == "wait":
                await asyncio.wait_for(slot.gate.idle.wait(), timeout=left())
            steps["drain_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            await asyncio.wait_for(slot.engine.pause(mode=mode, clear_cache=True), timeout=left())
            steps["pause_seconds"] = time.perf_counter() - t
            touched = True
            t = time.perf_counter()
            result = await self._load(slot.engine, paths, left())
            if not result["ok"]:
                raise RuntimeError(result["error"])
            steps["load_seconds"] = time.perf_counter() - t
            slot.set(version, paths, result["checksum"])
            self._broken = None  # whatever failed before, this engine now holds a registered version
            return steps
        except Exception as e:
            if touched and previous_weights:
                try:
                    restored = await self._load(slot.engine, previous_weights, max(timeout_s, 60.0))
                    if not restored["ok"]:
                        raise RuntimeError(restored["error"])
                    if restored["checksum"] != previous_checksum:
                        raise RuntimeError("the previous version's files changed since they were loaded")
                except Exception as e2:
                    # The engine holds weights of no known version: this replica stops serving for good.
                    self._broken = f"swap to version {version} failed and restoring version {slot.version} " \
                                   f"failed too: {e2}"
                    slot.set(None)
                    logger.error("replica %s: %s; it refuses requests until Serve replaces it", self._replica,
                                 self._broken)
                    raise RuntimeError(f"{e}; restoring the previous version also failed: {e2}") from e
            raise
        finally:
            try:
                await asyncio.wait_for(slot.engine.resume(), timeout=max(timeout_s, 60.0))
            finally:
                slot.gate.open.set()

    async def _install_standby(self, version: int, paths: list[str], timeout_s: float) -> dict:
        """Load into the standby engine (after its last requests of an older version finish), then switch
        new requests to it.  The active engine is not touched until the switch."""
        spare = self._spare
        steps: dict[str, float] = {}
        deadline = time.perf_counter() + timeout_s  # one bound for the whole swap

        def left() -> float:
            return max(0.001, deadline - time.perf_counter())

        t = time.perf_counter()
        await asyncio.wait_for(spare.gate.idle.wait(), timeout=left())
        steps["drain_seconds"] = time.perf_counter() - t
        if spare.version != version:  # a rollback to the version it still holds needs no reload
            spare.set(None)  # unknown until the reload succeeds
            t = time.perf_counter()
            try:
                # No request runs here; pausing clears its prefix cache, computed with the old weights.
                await asyncio.wait_for(spare.engine.pause(mode="wait", clear_cache=True), timeout=left())
                result = await self._load(spare.engine, paths, left())
                if not result["ok"]:
                    raise RuntimeError(result["error"])
            finally:
                await asyncio.wait_for(spare.engine.resume(), timeout=max(timeout_s, 60.0))
            steps["load_seconds"] = time.perf_counter() - t
            spare.set(version, paths, result["checksum"])
        # The switch: from here new requests run on the new version; running ones finish where they are.
        self._active, self._spare = spare, self._active
        self.engine = spare.engine  # LLMServer's own routes (health, models) follow the active engine
        return steps

    async def reverie_status(self) -> dict:
        return {"replica": self._replica, "actor": self._actor_name, "node": node_id(),
                "version": self._active.version, "checksum": self._active.checksum,
                "standby_version": self._spare.version if self._spare else None,
                "inflight": self._active.gate.inflight + (self._spare.gate.inflight if self._spare else 0),
                "swapping": self._swap_lock.locked()}
