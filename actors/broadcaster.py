"""The weight broadcaster: install a new policy version in every serving replica.

``publish(state_dict=... | checkpoint_dir=...)``:
1. checks names and shapes against the served model (nothing is touched if they differ);
2. takes a fresh version id (``VersionCounter``: never reused, survives restarts);
3. packs the tensors into safetensors buckets in shared memory (``/dev/shm``);
4. asks every replica to install them (each drains or pauses its requests,
   reloads in place through the vLLM worker extension, and reports its new
   version), all under one timeout;
5. writes the buckets durably under the registry and promotes the version,
   so a replica that starts later loads it before taking traffic.
If any replica fails or the timeout passes, every replica is put back on the
previous version and ``SwapError`` is raised: the swap fails loudly.

``rollback(version)`` re-installs an earlier version from its durable copy.
Transport here is shared memory into vLLM's in-place ``reload_weights``
(CPU, one node); the GPU path (vLLM's NCCL weight-transfer engine) is not
built on this machine, which has no GPU.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from actors.versions import VersionError, VersionInfo, VersionRegistry
from serve.weights import (
    BUCKET_BYTES,
    SHM_ROOT,
    WeightsMismatch,
    check_state_dict,
    load_state_files,
    pack_buckets,
    reference_shapes,
)

DEFAULT_TIMEOUT_S = 120.0


class SwapError(RuntimeError):
    """A swap that did not complete; the replicas serve the previous version."""


class WeightBroadcaster:
    def __init__(self, handle, registry: VersionRegistry | str | Path, *, mode: str = "wait",
                 timeout_s: float = DEFAULT_TIMEOUT_S, bucket_bytes: int = BUCKET_BYTES,
                 restore_timeout_s: float = DEFAULT_TIMEOUT_S):
        """``handle``: the DeploymentHandle of the ``ReverieLLMServer`` deployment."""
        self.handle = handle
        self.registry = registry if isinstance(registry, VersionRegistry) else VersionRegistry(registry)
        self.mode = mode
        self.timeout_s = float(timeout_s)  # bounds a swap: drain, pause, reload, resume on every replica
        self.restore_timeout_s = float(restore_timeout_s)  # bounds putting the previous version back
        self.bucket_bytes = int(bucket_bytes)
        self._reference = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_app(cls, app_name: str = "reverie", versions_dir: str | Path = "./reverie-data/versions", **kwargs):
        """From any process attached to the Ray cluster that runs the app."""
        from ray import serve

        from serve.app import LLM_DEPLOYMENT

        return cls(serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=app_name), versions_dir, **kwargs)

    # ------------------------------------------------------------ replicas
    async def _broadcast(self, method: str, kwargs: dict, timeout_s: float) -> list:
        from ray.llm._internal.serve.utils.broadcast import broadcast

        return await asyncio.wait_for(asyncio.to_thread(broadcast, self.handle, method, kwargs=kwargs), timeout_s)

    async def replicas(self) -> list[dict]:
        return await self._broadcast("reverie_status", {}, 30.0)

    async def _install(self, version: int, paths: list[str], timeout_s: float) -> list[dict]:
        results = await self._broadcast(
            "reverie_install", {"version": version, "paths": [str(p) for p in paths], "mode": self.mode,
                                "timeout_s": timeout_s}, timeout_s + 10.0)
        if not results:
            raise SwapError("no running replicas to install into")
        return results

    async def _swap(self, version: int, paths: list[str], previous: VersionInfo) -> dict:
        t0 = time.perf_counter()
        try:
            results = await self._install(version, paths, self.timeout_s)
            failed = [r for r in results if not r.get("ok")]
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - reported below
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
            self._reference = reference_shapes(self.registry.get(self.registry.summary()["base"]).weights)
        return self._reference

    async def publish(self, state_dict: Mapping | None = None, *, checkpoint_dir: str | Path | None = None,
                      note: str = "") -> dict:
        if (state_dict is None) == (checkpoint_dir is None):
            raise ValueError("give exactly one of state_dict or checkpoint_dir")
        t0 = time.perf_counter()
        source = "state_dict"
        if checkpoint_dir is not None:
            d = Path(checkpoint_dir)
            files = sorted(str(p) for p in d.glob("*.safetensors")) if d.is_dir() else []
            if not files:
                raise WeightsMismatch(f"checkpoint {str(d)!r} is not a directory with *.safetensors weights")
            state_dict = await asyncio.to_thread(load_state_files, files)
            source = f"checkpoint:{d.resolve()}"
        state = await asyncio.to_thread(check_state_dict, state_dict, self._reference_shapes())
        async with self._lock:
            with _file_lock(self.registry.root / "swap.lock"):
                previous = self.registry.promoted()
                version = self.registry.allocate()
                shm = SHM_ROOT / f"reverie-{os.getpid()}-{uuid.uuid4().hex[:8]}-v{version}"
                durable = None
                try:
                    paths = await asyncio.to_thread(pack_buckets, state, shm, self.bucket_bytes)
                    pack_s = time.perf_counter() - t0
                    # The durable copy (for restarts and rollbacks) is written while the replicas install.
                    durable = asyncio.ensure_future(asyncio.to_thread(self.registry.write_version, version, paths))
                    try:
                        swap = await self._swap(version, [str(p) for p in paths], previous)
                    except BaseException:
                        with contextlib.suppress(BaseException):
                            shutil.rmtree(await durable, ignore_errors=True)
                        raise
                    try:
                        final = await durable
                        info = self.registry.add(version, final, source, note)
                        self.registry.promote(version)
                    except Exception as e:
                        await self._install(previous.version, previous.weights, self.restore_timeout_s)
                        raise SwapError(f"could not store version {version} durably ({e}); "
                                        f"replicas are back on version {previous.version}") from e
                    done_s = time.perf_counter() - t0
                    # Replicas now point at the durable copy (their restore point), so the shared memory can go.
                    await self._broadcast("reverie_repoint", {"version": version, "paths": info.weights}, 30.0)
                finally:
                    shutil.rmtree(shm, ignore_errors=True)
        return {"version": version, "previous": previous.version, "seconds": done_s,
                "pack_seconds": pack_s, "swap_seconds": swap["seconds"], "replicas": swap["replicas"],
                "buckets": len(paths)}

    async def rollback(self, version: int) -> dict:
        info = self.registry.get(int(version))  # VersionError if unknown
        t0 = time.perf_counter()
        async with self._lock:
            with _file_lock(self.registry.root / "swap.lock"):
                previous = self.registry.promoted()
                swap = await self._swap(info.version, info.weights, previous)
                self.registry.promote(info.version)
        return {"version": info.version, "previous": previous.version, "seconds": time.perf_counter() - t0,
                "replicas": swap["replicas"]}

    async def versions(self) -> dict:
        summary = self.registry.summary()
        try:
            summary["replicas"] = await self.replicas()
        except Exception as e:  # noqa: BLE001
            summary["replicas"] = []
            summary["replicas_error"] = str(e)
        return summary

    # Synchronous wrappers for scripts and the learner.
    def publish_sync(self, state_dict=None, **kwargs) -> dict:
        return asyncio.run(self.publish(state_dict, **kwargs))

    def rollback_sync(self, version: int) -> dict:
        return asyncio.run(self.rollback(version))


class _file_lock:
    """Serialises swaps from several processes (the ingress, a learner) on one registry."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.f = open(self.path, "a")
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        self.f.close()


__all__ = ["WeightBroadcaster", "SwapError", "VersionError", "WeightsMismatch"]
