"""Weights across nodes, on a simulated multi-node cluster (``ray.cluster_utils.Cluster``): a head, two
``serving`` nodes and a ``learner`` node, as cluster.yaml declares them.  Each serving node gets one replica; a swap reaches both
through Ray's object store, each node writes it into its own shared-memory root, and every replica reports the
checksum of the version; the shared-memory transport is refused across nodes instead of reading the head's
files.  Every node of the simulated cluster is a process tree on this machine: what differs between them is
the Ray node id, which is all that scopes a shared-memory root (``reverie.weight_sync.shm_root``).  The
system is started as a user starts it on a cluster: ``reverie serve --address`` in its own process, the loop
on; one loop cycle runs end to end on it."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving import (ADMIN_KEY, API_KEY, ctrl_c_stops_it, free_port, max_diff, perturbed_state, served, torch_logprobs,
                     torch_model)


ROOT = Path(__file__).resolve().parent.parent


class Joined:
    """The system that ``reverie serve --address`` runs on the cluster, seen from this test, a second driver:
    its version registry and a broadcaster into its replicas, as the serving process has them."""

    def __init__(self, cfg):
        from reverie.versions import VersionRegistry

        self.cfg = cfg
        self.registry = VersionRegistry(cfg.resolved_versions_dir())
        self.base_url = f"http://{cfg.host}:{cfg.port}"

    def broadcaster(self, **kwargs):
        from ray import serve

        from serve.broadcaster import WeightBroadcaster
        from serve.door import APP_NAME, LLM_DEPLOYMENT

        kwargs.setdefault("mode", self.cfg.swap_mode)
        kwargs.setdefault("timeout_s", self.cfg.swap_timeout_s)
        kwargs.setdefault("transport", self.cfg.weight_transport)
        return WeightBroadcaster(serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=APP_NAME), self.registry,
                                 **kwargs)


class ClusterApp:
    def __init__(self, dep, serving_nodes, head):
        import openai

        self.dep, self.serving_nodes, self.head = dep, serving_nodes, head
        self.url = dep.base_url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def cluster_app(tmp_path_factory):
    """``reverie serve --address`` joins a cluster of a head, two serving nodes and a learner node, as a user
    runs it (the loop on); the test then joins the same cluster to look inside."""
    import ray
    from ray.cluster_utils import Cluster

    from reverie.config_file import build_config, load_config
    from reverie.ray_start import start_ray
    from reverie.weight_sync import shm_root
    from serve.auth import ADMIN_ENV, API_ENV
    from simulators.tinyworld.build import SHIPPED_MODEL

    tmp = tmp_path_factory.mktemp("cluster")
    config = tmp / "reverie.yaml"
    config.write_text(f"model_dir: {SHIPPED_MODEL}\ndata_dir: {tmp / 'data'}\nreplicas: 2\nport: {free_port()}\n"
                      "swap_timeout_s: 120\nstore_flush_seconds: 0.5\n"
                      "loop: {min_feedback: 2, poll_s: 1.0, steps: 40, checkpoint_every: 20}\n"
                      "gate: {retention_items: 60, heldout_items: 32}\n")
    cfg = build_config(load_config(config), {"pin_cpus": False}, source=config)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    nodes = [c.add_node(num_cpus=2, resources={"serving": 1}) for _ in range(2)]
    c.add_node(num_cpus=2, resources={"learner": 1})
    c.wait_for_nodes()
    log = open(tmp / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "reverie.cli", "serve", "--address", c.address, "--config",
                             str(config)], cwd=ROOT, env={**os.environ, API_ENV: API_KEY, ADMIN_ENV: ADMIN_KEY},
                            stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=ctrl_c_stops_it)
    try:
        out, watchdog = [], threading.Timer(600, proc.kill)  # a start that hangs fails the test, not the suite
        watchdog.start()
        while (line := proc.stdout.readline()) and "Ctrl-C" not in line:
            out.append(line)
        watchdog.cancel()
        log.seek(0)
        assert f"at http://127.0.0.1:{cfg.port}/v1" in "".join(out), "".join(out) + log.read()[-3000:]
        start_ray(c.address)
        yield ClusterApp(Joined(cfg), {n.node_id for n in nodes}, c.head_node.node_id)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ray.shutdown()
        c.shutdown()
        log.close()
        for n in nodes:
            shutil.rmtree(shm_root(n.node_id), ignore_errors=True)
    assert proc.returncode == 0  # ``reverie serve`` stopped cleanly on Ctrl-C


def _replicas(app) -> list[dict]:
    return asyncio.run(app.dep.broadcaster().replicas())


def test_reverie_serve_address_joins_the_cluster_and_answers_through_the_head(cluster_app):
    r = cluster_app.client.chat.completions.create(model="reverie", messages=[{"role": "user", "content": "sort: b a"}],
                                                   max_tokens=4, temperature=0)
    assert r.system_fingerprint == f"reverie-v{cluster_app.dep.registry.promoted().version}"


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



def test_a_loop_cycle_runs_end_to_end_on_the_cluster(cluster_app):
    """Feedback through the head's API becomes a candidate learnt on the learner node, gated and promoted by
    the controller on the head, and installed into the replicas of both serving nodes through the object
    store: the rule is then followed through the API."""
    import random
    import time

    import httpx

    from simulators.tinyworld import world as W
    from simulators.tinyworld.evaluate import eval_items
    from simulators.tinyworld.text import spaced

    app = cluster_app
    base = app.dep.registry.base().version
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if app.dep.registry.promoted().version != base:  # another test of this module swapped: learn from the base
        r = httpx.post(app.url + "/admin/rollback", json={"version": base}, headers=admin, timeout=300)
        assert r.status_code == 200, r.text
    before = {c["version"] for c in httpx.get(app.url + "/admin/status", headers=admin, timeout=60).json()["candidates"]}
    rng, rule = random.Random(7), W.rule_text(*W.NEW_RULE)
    for _ in range(2):
        asked = "copy : " + spaced("".join(rng.choice(W.LETTERS) for _ in range(rng.randint(3, 6))))
        r = app.client.chat.completions.create(model="reverie", messages=[{"role": "user", "content": asked}],
                                               temperature=0, max_tokens=24)
        fb = httpx.post(app.url + "/v1/feedback", json={"response_id": r.id, "rule": rule},
                        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        assert fb.status_code == 201, fb.text
    deadline, s = time.time() + 900, None
    while time.time() < deadline:
        s = httpx.get(app.url + "/admin/status", headers=admin, timeout=60).json()
        ended = [c for c in s.get("candidates", []) if c["version"] not in before and c["status"] != "candidate"]
        if ended and (ended[0]["status"] == "rejected" or s["promoted"] == ended[0]["version"]):
            break
        time.sleep(2)
    else:
        pytest.fail(f"no candidate was gated in time; last status: {s}")
    cand = ended[0]
    assert cand["parent"] == base and s["promoted"] == cand["version"], cand  # passed the gate, approval "auto"
    assert cand["lessons"]["counts"] == {"rule": 2}
    from reverie.weight_sync import WeightSender, shm_root

    expected = WeightSender("shm").send(cand["version"], app.dep.registry.get(cand["version"]).weights).checksum
    assert sorted((r["node"], r["version"], r["checksum"]) for r in _replicas(app)) == \
        sorted((n, cand["version"], expected) for n in app.serving_nodes)
    for node in app.serving_nodes:  # it came through the object store: each node wrote its own copy
        assert f"v{cand['version']:08d}-{expected[:12]}" in {p.name for p in shm_root(node).glob("replica-*/v*")}
    items = eval_items("rule", "student", 24)
    right = sum(it.verify(app.client.chat.completions.create(model="reverie", messages=list(it.prompt),
                                                             temperature=0, max_tokens=32).choices[0].message.content)
                for it in items)
    assert right / len(items) >= 0.9
