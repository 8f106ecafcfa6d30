"""The weight broadcaster: install a registered version in every serving replica.

Registering weights is apart from distributing them (``reverie.versions``):
a version's safetensors files are written once, under the registry, and every
install (a promotion, a rollback, a replica that restarts) reads those same
files; nothing is re-packed or copied per publish.

``promote(version)`` installs an approved candidate: its files are checked
against the served model (names, shapes, finite values: nothing is touched if
they differ), every replica installs them under one timeout (each drains or
pauses its requests, reloads in place through the vLLM worker extension and
reports its version), and only then is the version promoted in the registry,
so a replica that starts later loads it before it takes traffic.  A replica that starts during a swap
waits for it (the registry's swap lock) and loads what was promoted; one that was starting when the
broadcast went out is installed after the promotion; and a replica finds by itself, at its health check,
that it is behind the promoted version while no swap runs, and catches up.  If any
replica fails or the timeout passes, every replica is put back on the
previous version and ``SwapError`` is raised: the swap fails loudly.

``publish(state_dict=... | checkpoint_dir=...)`` (the admin route) registers
the weights as a new version approved by the caller, then promotes it.
``rollback(version)`` re-installs a version that was promoted before.

Weights travel through ``reverie.weight_sync``: the broadcaster is its sender, every replica a receiver.
With ``transport="auto"`` (the default) a version goes as paths to the registry's files when every replica
is on this node (``shm``), and through Ray's object store when one is elsewhere (``object_store``: each node
writes it into its own shared-memory root); ``shm`` and ``object_store`` can be asked for by name.  Every
replica reports the checksum of what its engine loaded; one that differs from the version's fails the swap,
and every replica is put back on the previous version.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from reverie.files import acquire
from reverie.versions import APPROVED, SWAP_LOCK, Candidate, VersionError, VersionRegistry
from reverie.weight_sync import AUTO, WeightSender
from serve.door import APP_NAME, INSTALL, LLM_DEPLOYMENT, STATUS
from serve.weights import (
    BUCKET_BYTES,
    WeightsMismatch,
    check_files,
    check_state_dict,
    pack_buckets,
    reference_shapes,
)

logger = logging.getLogger("reverie.serve")

DEFAULT_TIMEOUT_S = 120.0


class SwapError(RuntimeError):
    """A swap that did not complete; the replicas serve the previous version."""


class WeightBroadcaster:
    def __init__(self, handle, registry: VersionRegistry | str | Path, *, mode: str = "wait",
                 timeout_s: float = DEFAULT_TIMEOUT_S, bucket_bytes: int = BUCKET_BYTES,
                 restore_timeout_s: float = DEFAULT_TIMEOUT_S, transport: str = AUTO):
        """``handle``: the DeploymentHandle of the ``ReverieLLMServer`` deployment; ``transport``: how weights
        reach the replicas (``reverie.weight_sync.TRANSPORTS``)."""
        self.handle = handle
        self.registry = registry if isinstance(registry, VersionRegistry) else VersionRegistry(registry)
        self.mode = mode
        self.timeout_s = float(timeout_s)  # bounds a swap: drain, pause, reload, resume on every replica
        self.restore_timeout_s = float(restore_timeout_s)  # bounds putting the previous version back
        self.bucket_bytes = int(bucket_bytes)
        self.sender = WeightSender(transport)
        self._reference = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_app(cls, app_name: str = APP_NAME, versions_dir: str | Path = "./reverie-data/versions", **kwargs):
        """From any process attached to the Ray cluster that runs the app."""
        from ray import serve

        return cls(serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=app_name), versions_dir, **kwargs)

    # ------------------------------------------------------------ replicas
    async def _broadcast(self, method: str, kwargs: dict, timeout_s: float) -> list:
        from serve.ray_llm import broadcast

        return await asyncio.wait_for(asyncio.to_thread(broadcast, self.handle, method, kwargs=kwargs), timeout_s)

    async def replicas(self) -> list[dict]:
        return await self._broadcast(STATUS, {}, 30.0)

    async def _install(self, version: int, paths: list[str], timeout_s: float) -> list[dict]:
        """Send ``version`` to every replica; their reports, where one whose checksum is not the version's
        is marked failed."""
        nodes = [r.get("node") for r in await self.replicas()] if self.sender.transport == AUTO else []
        message = await asyncio.to_thread(self.sender.send, version, [str(p) for p in paths],
                                          self.sender.resolve(nodes))
        results = await self._broadcast(
            INSTALL, {"version": version, "message": message, "mode": self.mode, "timeout_s": timeout_s},
            timeout_s + 10.0)
        if not results:
            raise SwapError("no running replicas to install into")
        wrong = {r.get("replica"): r for r in self.sender.check(message, results)}
        return [wrong.get(r.get("replica"), r) for r in results]

    async def _swap(self, version: int, paths: list[str], previous: Candidate) -> dict:
        t0 = time.perf_counter()
        try:
            results = await self._install(version, paths, self.timeout_s)
            failed = [r for r in results if not r.get("ok")]
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - reported below
            logger.warning("swap to version %s: the install did not reach the replicas", version, exc_info=True)
            results, failed = [], [{"replica": "?", "error": f"{type(e).__name__}: {e}"}]
        if failed:
            try:
                await self._install(previous.version, previous.weights, self.restore_timeout_s)
                restored = f"replicas are back on version {previous.version}"
            except Exception as e2:  # noqa: BLE001
                restored = f"restoring version {previous.version} failed too: {e2}"
            errors = "; ".join(f"replica {f.get('replica')}: {f.get('error')}" for f in failed)
            raise SwapError(f"swap to version {version} failed ({errors}); {restored}")
        return {"seconds": time.perf_counter() - t0, "replicas": results}

    # ------------------------------------------------------------ API
    def _reference_shapes(self):
        if self._reference is None:
            self._reference = reference_shapes(self.registry.base().weights)
        return self._reference

    def check(self, version: int) -> Candidate:
        """The registered version, if its files fit the served model (``WeightsMismatch`` otherwise)."""
        c = self.registry.get(int(version))
        check_files(c.weights, self._reference_shapes())
        return c

    async def _install_registered(self, c: Candidate, rollback: bool) -> dict:
        t0 = time.perf_counter()
        async with self._lock:
            # The registry's swap lock: a replica that starts meanwhile waits for it, then loads what is
            # promoted by then (taken in a thread: waiting must not block this process's event loop).
            held = await asyncio.to_thread(acquire, self.registry.root / SWAP_LOCK)
            try:
                previous = self.registry.promoted()
                swap = await self._swap(c.version, c.weights, previous)
                try:
                    self.registry.promote(c.version, rollback=rollback)
                except Exception as e:
                    await self._install(previous.version, previous.weights, self.restore_timeout_s)
                    raise SwapError(f"could not promote version {c.version} ({e}); "
                                    f"replicas are back on version {previous.version}") from e
                # A replica that finished starting (on the previous version) while the swap ran was not in
                # the broadcast: install again where a replica reports another version.
                try:
                    late = [r for r in await self.replicas() if r.get("version") != c.version]
                except Exception:  # noqa: BLE001 - the replicas' own health check catches up
                    late = []
                if late:
                    swap["replicas"] = await self._install(c.version, c.weights, self.timeout_s)
                    swap["late_replicas"] = [r.get("replica") for r in late]
            finally:
                held.close()
        return {"version": c.version, "previous": previous.version, "seconds": time.perf_counter() - t0,
                "swap_seconds": swap["seconds"], "replicas": swap["replicas"],
                **({"late_replicas": swap["late_replicas"]} if "late_replicas" in swap else {})}

    async def promote(self, version: int) -> dict:
        """Install the approved candidate ``version`` everywhere, then promote it."""
        c = await asyncio.to_thread(self.check, version)
        if c.status != APPROVED:
            raise VersionError(f"version {c.version} is {c.status}; only an approved candidate is promoted")
        return await self._install_registered(c, rollback=False)

    async def publish(self, state_dict: Mapping | None = None, *, checkpoint_dir: str | Path | None = None,
                      note: str = "", by: str = "admin") -> dict:
        """Register weights given by hand as a new version (approved by ``by``) and promote it."""
        if (state_dict is None) == (checkpoint_dir is None):
            raise ValueError("give exactly one of state_dict or checkpoint_dir")
        t0 = time.perf_counter()
        if checkpoint_dir is not None:
            d = Path(checkpoint_dir)
            files = sorted(str(p) for p in d.glob("*.safetensors")) if d.is_dir() else []
            if not files:
                raise WeightsMismatch(f"checkpoint {str(d)!r} is not a directory with *.safetensors weights")
            await asyncio.to_thread(check_files, files, self._reference_shapes())
            c = await asyncio.to_thread(self.registry.register, d, source=f"checkpoint:{d.resolve()}", note=note,
                                        parent=self.registry.promoted().version)
        else:
            state = await asyncio.to_thread(check_state_dict, state_dict, self._reference_shapes())
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-publish-", dir=self.registry.root))
            try:
                await asyncio.to_thread(pack_buckets, state, tmp, self.bucket_bytes)
                c = await asyncio.to_thread(self.registry.register, tmp, source="state_dict", note=note, move=True,
                                            parent=self.registry.promoted().version)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        pack_s = time.perf_counter() - t0
        self.registry.set_status(c.version, APPROVED, decision={"action": "publish", "by": by, "note": note})
        result = await self._install_registered(self.registry.get(c.version), rollback=False)
        return {**result, "seconds": time.perf_counter() - t0, "pack_seconds": pack_s, "buckets": len(c.weights)}

    async def rollback(self, version: int) -> dict:
        """Serve ``version`` again: a version that was promoted before (``VersionError`` otherwise)."""
        c = self.registry.get(int(version))
        if c.status not in ("promoted", "rolled-back"):
            raise VersionError(f"version {c.version} was never promoted ({c.status}); "
                               "only a version that served before can be rolled back to")
        return await self._install_registered(c, rollback=True)

    async def versions(self) -> dict:
        summary = self.registry.summary()
        try:
            summary["replicas"] = await self.replicas()
        except Exception as e:  # noqa: BLE001
            summary["replicas"] = []
            summary["replicas_error"] = str(e)
        return summary

    # Synchronous wrappers for scripts.
    def publish_sync(self, state_dict=None, **kwargs) -> dict:
        return asyncio.run(self.publish(state_dict, **kwargs))

    def rollback_sync(self, version: int) -> dict:
        return asyncio.run(self.rollback(version))


__all__ = ["WeightBroadcaster", "SwapError", "VersionError", "WeightsMismatch"]
