"""``serve.ray_llm.broadcast``: the weight broadcaster's call to every replica of a deployment, made from a
thread (the broadcaster runs it with ``asyncio.to_thread``), on a real Serve application of two replicas."""
from __future__ import annotations

import threading

import pytest


@pytest.fixture(scope="module")
def app():
    import ray
    from ray import serve

    from reverie.ray_start import start_ray

    @serve.deployment(num_replicas=2)
    class Echo:
        def __init__(self):
            self.name = serve.get_replica_context().replica_id.unique_id

        def whoami(self, suffix: str = "") -> str:
            return self.name + suffix

    start_ray(num_cpus=4)
    serve.run(Echo.bind(), name="broadcast-test", route_prefix=None)
    yield "broadcast-test"
    serve.shutdown()
    ray.shutdown()


def _in_a_thread(fn):
    """``fn()`` in a thread with no event loop, as ``asyncio.to_thread`` runs it: its result or its error."""
    out = {}

    def run():
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001 - returned to the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_a_broadcast_reaches_every_replica_once(app):
    from ray import serve

    from serve.ray_llm import broadcast

    handle = serve.get_deployment_handle("Echo", app_name=app)
    names = _in_a_thread(lambda: broadcast(handle, "whoami", kwargs={"suffix": "!"}))
    assert len(names) == 2 and len(set(names)) == 2 and all(n.endswith("!") for n in names), names


def test_a_broadcast_from_a_thread_works_when_the_routing_config_arrived_after_the_replica_list(app):
    """Seen in the demo's controller: a new handle's router had heard of the replicas, then of its routing
    config, and no update had followed, so nothing had built its request router on the router's own loop;
    Ray's broadcast, polling from a thread, built it there and failed with ``RuntimeError: no running event
    loop`` (the run's first swap failed and its cycle was lost).  That state lasts until the next update from
    Serve's controller; here it is set up on a handle whose router is ready, by dropping the request router
    it built (Ray 2.60's router keeps the replica list it was told and builds the request router on demand)."""
    import time

    from ray import serve

    from serve.ray_llm import broadcast

    handle = serve.get_deployment_handle("Echo", app_name=app)
    if not handle.is_initialized:  # Serve hands out one handle per deployment in a process
        handle._init(_run_router_in_separate_loop=True)
    router = handle._router._asyncio_router
    deadline = time.monotonic() + 60
    while router._request_router is None or not router._running_replicas:
        assert time.monotonic() < deadline, "the handle's router never heard of the replicas"
        time.sleep(0.05)
    router._request_router = None  # told of the replicas and of its config, not yet built
    names = _in_a_thread(lambda: broadcast(handle, "whoami"))
    assert len(set(names)) == 2, names
