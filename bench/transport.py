"""``reverie bench transport``: how long a swap takes by each weight transport (``reverie/weight_sync.py``),
measured in one run.

1. One node (a private Ray): two replicas; swaps alternate between the ``shm`` transport (the replicas map the
   registry's files) and the ``object_store`` one (the bytes go through Ray's object store and each replica
   writes them into its node's shared-memory root).
2. Two nodes (``ray.cluster_utils.Cluster``: a head and two ``serving`` nodes on this machine): one replica per
   node; ``object_store`` swaps (``shm`` cannot cross nodes and is refused).

Per transport: ``swap_seconds_median`` (the whole publish: check, register, install everywhere, promote),
``install_seconds_median`` (the part the replicas spend), ``receive_seconds_median`` (the slowest replica's
fetch into shared memory: 0 for ``shm``), ``load_seconds_median`` (the slowest replica's engine reload, which
includes checksumming what it loads), and ``checksums_match`` (every replica reported the version's checksum).
No client load runs: this isolates the transport (``reverie bench swap`` measures swaps under load).
"""
from __future__ import annotations

import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _swaps(dep, variants, transports: list[str], progress) -> dict[str, list[dict]]:
    from reverie.weight_sync import WeightSender

    out: dict[str, list[dict]] = {t: [] for t in set(transports)}
    for i, transport in enumerate(transports):
        broadcaster = dep.broadcaster(transport=transport)
        t0 = time.perf_counter()
        r = asyncio.run(broadcaster.publish(variants[i % 2], note=f"bench transport {i}"))
        total = time.perf_counter() - t0
        checksum = WeightSender("shm").send(r["version"], dep.registry.get(r["version"]).weights).checksum
        reps = r["replicas"]
        out[transport].append({
            "total": total, "install": r["swap_seconds"],
            "receive": max(x.get("receive_seconds", 0.0) for x in reps),
            "load": max(x.get("load_seconds", 0.0) for x in reps),
            "match": all(x.get("checksum") == checksum and x.get("transport") == transport for x in reps),
            "nodes": len({x.get("node") for x in reps}),
        })
        progress(f"{transport} swap to version {r['version']}: {total:.2f} s ({len(reps)} replicas)")
    return out


def _summary(runs: list[dict]) -> dict:
    return {"swaps": len(runs),
            "swap_seconds_median": statistics.median(x["total"] for x in runs),
            "install_seconds_median": statistics.median(x["install"] for x in runs),
            "receive_seconds_median": statistics.median(x["receive"] for x in runs),
            "load_seconds_median": statistics.median(x["load"] for x in runs),
            "checksums_match": all(x["match"] for x in runs),
            "replica_nodes": max(x["nodes"] for x in runs)}


def _deploy(model_dir: Path, work: Path, name: str):
    import socket

    from reverie.config import LoopConfig, ServeConfig
    from serve.app import Deployment
    from serve.auth import Keys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(model_dir=model_dir, data_dir=str(work / name), replicas=2, port=port, swap_timeout_s=300.0,
                      loop=LoopConfig(learn=False))
    keys = Keys(secrets.token_urlsafe(24), secrets.token_urlsafe(24), "bench (in memory)")
    dep = Deployment(cfg, keys.digests())
    dep.wait_until_running()
    return dep


def run_transport_bench(params: str = "tiny", swaps: int = 4, progress=print) -> dict:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from reverie.ray_start import quiet_http_clients, start_ray
    from reverie.weight_sync import OBJECT_STORE, SHM, shm_root
    from bench.swap import _noisy, copy_seconds, model_for
    from serve.weights import load_state_files

    quiet_http_clients()
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="reverie-bench-transport-"))
    try:
        model_dir = model_for(params, work, progress)
        state = load_state_files(sorted(str(f) for f in model_dir.glob("*.safetensors")))
        variants = [_noisy(state, 1), _noisy(state, 2)]
        n_bytes = sum(t.numel() * t.element_size() for t in state.values())

        progress("one node: two replicas, shm and object_store swaps in turn")
        start_ray(num_cpus=8)
        dep = _deploy(model_dir, work, "one-node")
        try:
            one = _swaps(dep, variants, [SHM, OBJECT_STORE] * swaps, progress)
        finally:
            dep.shutdown()
            serve.shutdown()
            ray.shutdown()

        progress("two nodes: a head and two serving nodes, one replica each, object_store swaps")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
        nodes = [cluster.add_node(num_cpus=2, resources={"serving": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        try:
            start_ray(cluster.address)
            dep = _deploy(model_dir, work, "two-nodes")
            try:
                two = _swaps(dep, variants, [OBJECT_STORE] * swaps, progress)
            finally:
                dep.shutdown()
                serve.shutdown()
                ray.shutdown()
        finally:
            cluster.shutdown()
            for n in nodes:
                shutil.rmtree(shm_root(n.node_id), ignore_errors=True)
        return {
            "params": int(sum(t.numel() for t in state.values())), "weight_bytes": n_bytes,
            "copy_seconds_median": statistics.median(copy_seconds(v) for v in variants * 2),
            "one_node": {t: _summary(runs) for t, runs in one.items()},
            "two_nodes": {t: _summary(runs) for t, runs in two.items()},
            "seconds": time.perf_counter() - t_start,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
