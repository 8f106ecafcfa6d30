"""One way weights move, whatever carries them: a sender, receivers, typed messages, several transports.

A version's weights are a few safetensors files ("buckets", ``serve/weights.py``) written once under the version
registry.  The sender describes them in a :class:`WeightMessage`: the version, each bucket's name, size and
checksum, and where its bytes are, by transport:

- ``shm``: files on the sender's node (its shared-memory root, or the registry on that node's disk, mapped from
  the page cache).  Only a receiver on the same node reads them; one on another node refuses the message
  rather than read a path that, there, names something else or nothing.
- ``object_store``: the bytes in Ray's object store, put once per version by the sender (its process owns them
  while they may be fetched).  A receiver on any node fetches them and writes them into its own node's
  shared-memory root (:func:`shm_root`, one per node), from which its engine maps them.
- ``nccl``: vLLM's NCCL weight-transfer engine, GPU to GPU.  A slot: refused with one line here (no GPU on the
  machines this was built on); the message and the checksums stay the same when it is filled.
- ``auto``: ``shm`` when every receiver is on the sender's node, ``object_store`` otherwise.

After an install every receiver reports the checksum of the tensors its engine was given (:func:`digest`, over
names, dtypes, shapes and bytes in file order), and the sender compares them with the version's
(:meth:`WeightSender.check`): a receiver that loaded anything else fails the install.

This module imports no torch and no Ray at import time: it is the vocabulary both ends speak.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SHM, OBJECT_STORE, NCCL, AUTO = "shm", "object_store", "nccl", "auto"
TRANSPORTS = (AUTO, SHM, OBJECT_STORE, NCCL)
SHM_ROOT_ENV = "REVERIE_SHM_ROOT"  # where the per-node roots go (default /dev/shm, else the temp directory)
KEEP_VERSIONS = 3  # versions a receiver keeps in its shared-memory root (the active, the standby, the previous)


class TransportError(RuntimeError):
    """A message this receiver cannot read (another node's files, a transport that is not built, lost bytes)."""


@dataclass(frozen=True)
class Bucket:
    """One safetensors file of a version: its name, size, the checksum of its tensors and where its bytes are
    (``path`` on the sender's node for ``shm``, ``ref`` an ObjectRef for ``object_store``)."""
    name: str
    nbytes: int
    checksum: str
    path: str | None = None
    ref: object = None


@dataclass(frozen=True)
class WeightMessage:
    """What a receiver needs to install ``version``: its buckets, in load order, and where they are."""
    version: int
    transport: str
    node: str  # the sender's Ray node id
    buckets: tuple[Bucket, ...]
    checksum: str  # over the buckets' checksums, in order: what every receiver must report back

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def describe(self) -> str:
        return f"version {self.version} ({len(self.buckets)} bucket(s), {self.nbytes / 2**20:.1f} MiB, {self.transport})"


@dataclass(frozen=True)
class Received:
    """A receiver's local copy of a message: files its engine can map, and the checksum it must report."""
    version: int
    paths: tuple[str, ...]
    checksum: str
    transport: str
    seconds: float = 0.0


def node_id() -> str:
    """This process's Ray node id ("local" outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - no Ray here
        pass
    return "local"


def shm_root(node: str | None = None) -> Path:
    """The shared-memory root of ``node`` (this process's by default): one directory per Ray node, so nodes
    simulated on one machine never read each other's files, as separate machines could not."""
    base = Path(os.environ.get(SHM_ROOT_ENV) or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()))
    return base / "reverie-weights" / (node or node_id())[:16]


# ------------------------------------------------------------------ checksums
def digest(items: Iterable[tuple[str, object]]) -> str:
    """The checksum of named tensors, in the order given: name, dtype, shape and raw bytes of each."""
    d = Digesting(items)
    for _ in d:
        pass
    return d.hexdigest()


class Digesting:
    """Wraps a stream of named tensors and checksums what passes through it (what an engine was given)."""

    def __init__(self, items: Iterable[tuple[str, object]]):
        import torch

        self._items, self._torch = items, torch
        self._h = hashlib.sha256()
        self.count = 0

    def __iter__(self) -> Iterator[tuple[str, object]]:
        torch = self._torch
        for name, t in self._items:
            c = t.detach().contiguous().cpu()
            self._h.update(f"{name}|{str(c.dtype).removeprefix('torch.')}|{tuple(c.shape)}|".encode())
            self._h.update(memoryview(c.reshape(-1).view(torch.uint8).numpy()))
            self.count += 1
            yield name, t

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def tensors_of(paths: Iterable[str]) -> Iterator[tuple[str, object]]:
    """The tensors of safetensors files, in file order and each file's own order."""
    from safetensors import safe_open

    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                yield k, f.get_tensor(k)


def combine(checksums: Iterable[str]) -> str:
    """One checksum for a whole version: over its buckets' checksums in load order."""
    return hashlib.sha256("|".join(checksums).encode()).hexdigest()


def file_checksum(path: str) -> str:
    return digest(tensors_of([path]))


# ------------------------------------------------------------------ the two ends
class WeightSender:
    """Describes registered versions as messages for ``transport``; bytes are put in the object store once per
    version and kept while the version may still be installed (the last ``keep`` versions sent)."""

    def __init__(self, transport: str = AUTO, keep: int = KEEP_VERSIONS):
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weight transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.keep = keep
        self._checksums: dict[str, tuple[int, float, str]] = {}  # path -> (size, mtime, checksum)
        self._sent: dict[tuple[int, str], WeightMessage] = {}  # (version, transport) -> message

    def resolve(self, receiver_nodes: Iterable[str]) -> str:
        """The transport for receivers on ``receiver_nodes`` (``auto``: shm when all are on this node)."""
        if self.transport != AUTO:
            return self.transport
        here = node_id()
        return SHM if all(n == here for n in receiver_nodes) else OBJECT_STORE

    def _checksum(self, path: str) -> str:
        st = os.stat(path)
        known = self._checksums.get(path)
        if known and known[:2] == (st.st_size, st.st_mtime):
            return known[2]
        c = file_checksum(path)
        self._checksums[path] = (st.st_size, st.st_mtime, c)
        return c

    def send(self, version: int, files: Iterable[str], transport: str | None = None) -> WeightMessage:
        """The message for ``version``'s safetensors ``files`` over ``transport`` (the sender's own by default,
        never ``auto`` here: resolve it first)."""
        transport = transport or (self.transport if self.transport != AUTO else SHM)
        key = (int(version), transport)
        if key in self._sent and [b.path for b in self._sent[key].buckets if b.path] in ([], [str(f) for f in files]):
            return self._sent[key]
        if transport == NCCL:
            raise TransportError("the nccl weight transport (vLLM's NCCL weight-transfer engine, GPU to GPU) is not "
                                 "built in this version; use shm or object_store")
        files = [str(f) for f in files]
        buckets = []
        for f in files:
            checksum = self._checksum(f)
            if transport == SHM:
                buckets.append(Bucket(Path(f).name, os.path.getsize(f), checksum, path=f))
            else:
                import numpy as np
                import ray

                data = np.fromfile(f, dtype=np.uint8)
                buckets.append(Bucket(Path(f).name, int(data.size), checksum, ref=ray.put(data)))
        message = WeightMessage(int(version), transport, node_id(), tuple(buckets),
                                combine(b.checksum for b in buckets))
        self._sent[key] = message
        for old in sorted({v for v, _ in self._sent})[:-self.keep]:  # the object store frees what no one holds
            for k in [k for k in self._sent if k[0] == old]:
                del self._sent[k]
        return message

    @staticmethod
    def check(message: WeightMessage, reports: Iterable[dict]) -> list[dict]:
        """The reports (``{"replica", "ok", "checksum", ...}``) whose receiver did not load ``message``'s
        weights, each with an ``error`` saying so."""
        bad = []
        for r in reports:
            if r.get("ok") and r.get("checksum") != message.checksum:
                bad.append({**r, "ok": False, "error": f"it loaded weights with checksum {str(r.get('checksum'))[:12]}, "
                                                        f"not version {message.version}'s {message.checksum[:12]}"})
        return bad


@dataclass
class WeightReceiver:
    """Turns messages into files this node's engine can map, under ``root`` (default: this node's
    shared-memory root), in a folder of its own (``name``: receivers on one node never share files)."""
    root: Path | None = None
    name: str = "receiver"
    _held: dict[int, Path] = field(default_factory=dict)

    def receive(self, message: WeightMessage) -> Received:
        import time

        t0 = time.perf_counter()
        if message.transport == SHM:
            here = node_id()
            if message.node != here:
                raise TransportError(f"version {message.version} is in shared memory on node {message.node[:12]}, "
                                     f"not on this node ({here[:12]}); send it through the object store")
            paths = tuple(b.path for b in message.buckets)
            missing = [p for p in paths if not p or not os.path.isfile(p)]
            if missing:
                raise TransportError(f"version {message.version}'s file {missing[0]!r} is not on this node")
        elif message.transport == OBJECT_STORE:
            paths = self._fetch(message)
        else:
            raise TransportError(f"this receiver cannot read the {message.transport!r} transport")
        return Received(message.version, paths, message.checksum, message.transport, time.perf_counter() - t0)

    def _fetch(self, message: WeightMessage) -> tuple[str, ...]:
        import numpy as np
        import ray

        root = (self.root or shm_root()) / self.name
        d = root / f"v{message.version:08d}-{message.checksum[:12]}"
        paths = tuple(str(d / b.name) for b in message.buckets)
        if not all(os.path.isfile(p) and os.path.getsize(p) == b.nbytes for p, b in zip(paths, message.buckets)):
            tmp = Path(tempfile.mkdtemp(prefix=".receiving-", dir=self._ready(root)))
            try:
                for b in message.buckets:
                    data = ray.get(b.ref, timeout=300)
                    np.asarray(data, dtype=np.uint8).tofile(tmp / b.name)
                shutil.rmtree(d, ignore_errors=True)
                os.replace(tmp, d)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self._held[message.version] = d
        return paths

    @staticmethod
    def _ready(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        return root

    def release(self, keep: Iterable[int] = ()) -> None:
        """Remove the received copies of versions not in ``keep`` (the versions this receiver's engines hold;
        nothing kept: all of them, and the receiver's folder)."""
        keep = set(keep)
        for v in [v for v in self._held if v not in keep]:
            d = self._held.pop(v)
            shutil.rmtree(d, ignore_errors=True)
            if not self._held:
                with contextlib.suppress(OSError):
                    d.parent.rmdir()


__all__ = ["AUTO", "NCCL", "OBJECT_STORE", "SHM", "TRANSPORTS", "Bucket", "Received", "TransportError", "WeightMessage",
           "WeightReceiver", "WeightSender", "digest", "Digesting", "node_id", "shm_root", "tensors_of"]
