"""Weights across nodes, on a simulated multi-node cluster (``ray.cluster_utils.Cluster``): a head and two
``serving`` nodes, as cluster.yaml declares them.  Each serving node gets one replica; a swap reaches both
through Ray's object store, each node writes it into its own shared-memory root, and every replica reports the
checksum of the version; the shared-memory transport is refused across nodes instead of reading the head's
files.  Every node of the simulated cluster is a process tree on this machine: what differs between them is
the Ray node id, which is all that scopes a shared-memory root (``reverie.weight_sync.shm_root``)."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from serving import ADMIN_KEY, API_KEY, free_port, max_diff, perturbed_state, served, torch_logprobs, torch_model


class ClusterApp:
    def __init__(self, dep, serving_nodes, head):
        import openai

        self.dep, self.serving_nodes, self.head = dep, serving_nodes, head
        self.url = dep.base_url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def cluster_app(tmp_path_factory):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from reverie.config import LoopConfig, ServeConfig
    from reverie.ray_start import start_ray
    from reverie.weight_sync import shm_root
    from serve.app import Deployment
    from serve.auth import Keys
    from simulators.tinyworld.build import SHIPPED_MODEL

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    nodes = [c.add_node(num_cpus=2, resources={"serving": 1}) for _ in range(2)]
    c.wait_for_nodes()
    start_ray(c.address)
    cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path_factory.mktemp("cluster-data")), replicas=2,
                      port=free_port(), swap_timeout_s=120.0, store_flush_seconds=0.5, loop=LoopConfig(learn=False))
    dep = Deployment(cfg, Keys(API_KEY, ADMIN_KEY, "test").digests())
    try:
        dep.wait_until_running(timeout_s=600)
        yield ClusterApp(dep, {n.node_id for n in nodes}, c.head_node.node_id)
    finally:
        dep.shutdown()
        serve.shutdown()
        ray.shutdown()
        c.shutdown()
        for n in nodes:
            shutil.rmtree(shm_root(n.node_id), ignore_errors=True)


def _replicas(app) -> list[dict]:
    return asyncio.run(app.dep.broadcaster().replicas())


def test_each_serving_node_gets_one_replica_and_nothing_else_serves(cluster_app):
    replicas = _replicas(cluster_app)
    assert sorted(r["node"] for r in replicas) == sorted(cluster_app.serving_nodes)


def test_a_swap_reaches_both_serving_nodes_through_the_object_store_with_the_versions_checksum(cluster_app):
    from reverie.weight_sync import WeightSender, shm_root

    app = cluster_app
    state = perturbed_state(seed=11)
    result = asyncio.run(app.dep.broadcaster().publish(state, note="across nodes"))  # transport: auto
    v = result["version"]
    expected = WeightSender("shm").send(v, app.dep.registry.get(v).weights).checksum
    assert sorted((r["node"], r["version"], r["transport"], r["checksum"]) for r in result["replicas"]) == \
        sorted((n, v, "object_store", expected) for n in app.serving_nodes)
    for node in app.serving_nodes:  # each node wrote the version into its own shared-memory root
        held = [p.name for p in shm_root(node).glob("replica-*/v*")]
        assert held == [f"v{v:08d}-{expected[:12]}"], (node, held)
    model = torch_model(state)
    for _ in range(4):  # answers from both replicas
        version, prompt_ids, ids, lps = served(app)
        assert version == v and max_diff(lps, torch_logprobs(model, prompt_ids, ids)) < 1e-4


def test_shared_memory_is_not_read_across_nodes_the_swap_fails_and_nothing_changes(cluster_app):
    from serve.broadcaster import SwapError

    app = cluster_app
    before = app.dep.registry.promoted().version
    with pytest.raises(SwapError, match="in shared memory on node .*send it through the object store"):
        asyncio.run(app.dep.broadcaster(transport="shm").publish(perturbed_state(seed=12)))
    assert app.dep.registry.promoted().version == before
    assert [r["version"] for r in _replicas(app)] == [before, before]
    assert served(app)[0] == before

