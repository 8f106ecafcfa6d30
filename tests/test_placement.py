"""Each kind of actor asks for the node type that cluster.yaml declares for it, when the cluster offers it: on a
simulated multi-node cluster (``ray.cluster_utils.Cluster``) the learner lands on the ``learner`` node, and the
experience store and the controller on the head; where the cluster lacks a node type, nothing is asked for."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    from reverie.ray_start import start_ray

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    learner_node = c.add_node(num_cpus=2, resources={"learner": 1})
    c.add_node(num_cpus=2, resources={"simulator": 4})
    c.wait_for_nodes()
    start_ray(c.address)
    yield c, learner_node.node_id, c.head_node.node_id
    ray.shutdown()
    c.shutdown()


def _node_of(actor) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=300)


def test_the_learner_lands_on_the_learner_node_and_the_store_and_the_controller_on_the_head(cluster, tmp_path):
    import ray

    from actors.controller import start_controller
    from actors.learner import start_learner
    from actors.store import start_store
    from learner.loop import LearnConfig
    from reverie.config import ServeConfig
    from simulators.tinyworld.build import SHIPPED_MODEL

    _, learner_node, head = cluster
    learner = start_learner(str(SHIPPED_MODEL), LearnConfig(steps=1, batch_size=2), str(tmp_path / "ckpt"), None,
                            0, None, sampler="torch")
    assert _node_of(learner) == learner_node
    store = start_store(str(tmp_path / "data"), name="placement-test-store")
    assert _node_of(store) == head
    cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"), store_name="placement-test-store")
    controller = start_controller(cfg)
    try:
        assert _node_of(controller) == head
    finally:
        ray.kill(controller)


def test_without_the_node_types_nothing_is_asked_for(cluster):
    from reverie.ray_start import placed

    assert placed("serving") == {}  # this cluster has no serving node
    assert placed("learner") == {"resources": {"learner": 0.001}}
    assert placed("head") == {"resources": {"node:__internal_head__": 0.001}}
