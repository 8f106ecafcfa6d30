"""Assembling and running the serving application (used by ``reverie serve``, the tests and the benchmark)."""
from __future__ import annotations

import os
from pathlib import Path

from reverie.config import ServeConfig
from reverie.engine import engine_kwargs
from reverie.ray_start import REPO_ROOT, check_shared, placed
from serve.guard import chat_roles

from serve.door import APP_NAME, INGRESS_DEPLOYMENT, LLM_DEPLOYMENT  # noqa: F401 - APP_NAME: serve.app's too

MODEL_ID = "reverie"

def llm_config(cfg: ServeConfig):
    from ray.serve.llm import LLMConfig

    kw = engine_kwargs(cfg.model_dir, seed=cfg.seed)
    kw.pop("model")
    kw["worker_extension_cls"] = "serve.weights.WeightSwapExtension"
    kw.update(cfg.extra_engine_kwargs)
    return LLMConfig(
        model_loading_config={"model_id": cfg.model_id, "model_source": str(Path(cfg.model_dir).resolve())},
        accelerator_config={"kind": "cpu"},
        engine_kwargs=kw,
        callback_config={"callback_class": "serve.ray_llm.LocalModelFiles"},
        # On a cluster with serving nodes, a replica takes one node's ``serving`` slot (cluster.yaml).
        deployment_config={"num_replicas": cfg.replicas, "health_check_period_s": 10,
                           "graceful_shutdown_timeout_s": 30, "ray_actor_options": placed("serving", units=1)},
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "VLLM_CONFIGURE_LOGGING": "0",
                                  "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
    )


def build_application(cfg: ServeConfig, key_digests: dict):
    """The Serve application: ``ReverieIngress`` in front of ``cfg.replicas`` ``ReverieLLMServer`` replicas."""
    from ray import serve
    from serve.ray_llm import build_llm_deployment, make_fastapi_ingress, to_model_metadata

    from actors.controller import CONTROLLER_NAME
    from serve.ingress import ENDPOINTS, ReverieIngress, make_app
    from serve.replica import ReverieLLMServer

    conf = llm_config(cfg)
    versions_dir = str(cfg.resolved_versions_dir())
    llm = build_llm_deployment(
        conf, name_prefix="", deployment_cls=ReverieLLMServer,
        override_serve_options={"name": LLM_DEPLOYMENT},
        bind_kwargs={"versions_dir": versions_dir, "store_name": cfg.store_name,
                     "pin_cpus": cfg.cpu_plan() is not None, "standby": cfg.swap_mode == "standby"},
    )
    ingress_cls = make_fastapi_ingress(ReverieIngress, endpoint_map=ENDPOINTS, app=make_app())
    ingress = serve.deployment(ingress_cls, name=INGRESS_DEPLOYMENT, num_replicas=1, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0,
                                                  "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}})
    return ingress.bind(
        llm_deployments={cfg.model_id: llm},
        model_cards={cfg.model_id: to_model_metadata(cfg.model_id, conf)},
        key_digests=key_digests, versions_dir=versions_dir, store_name=cfg.store_name,
        swap_mode=cfg.swap_mode, swap_timeout_s=cfg.swap_timeout_s, weight_transport=cfg.weight_transport,
        redact_feedback=cfg.redact_feedback,
        controller_name=CONTROLLER_NAME if cfg.loop.learn else None, roles=chat_roles(cfg.model_dir),
    )


class Deployment:
    """A running system: the store actor, the version registry, the Serve app and (unless learning is off)
    the controller that runs the loop.  ``detached``: the controller outlives the driver (``reverie serve``)."""

    def __init__(self, cfg: ServeConfig, key_digests: dict, detached: bool = False):
        from ray import serve

        from actors.controller import start_controller
        from actors.store import start_store
        from reverie.versions import VersionRegistry

        from simulators.world import load_world

        self.cfg = cfg
        if cfg.loop.learn:
            load_world(cfg.world_name())  # a world that cannot load is refused before anything starts
        self.registry = VersionRegistry(cfg.resolved_versions_dir())
        self.registry.ensure_base(cfg.model_dir)
        check_shared(self.registry.root, cfg.model_dir)  # on a cluster: every node reaches both (ReverieError)
        self.store = start_store(cfg.data_dir, name=cfg.store_name, flush_seconds=cfg.store_flush_seconds)
        # One HTTP proxy, on the head: the API's address is the head's (``HeadOnly``); on every node, simulated
        # nodes of one machine would all bind the same port.
        serve.start(proxy_location="HeadOnly", http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build_application(cfg, key_digests), name=APP_NAME, route_prefix="/", blocking=False)
        self.base_url = f"http://{cfg.host}:{cfg.port}"
        self.controller = start_controller(cfg, APP_NAME, detached=detached) if cfg.loop.learn else None

    def wait_until_running(self, timeout_s: float = 900.0) -> None:
        """Until the Serve application runs; ``RuntimeError`` with Serve's last words if it failed to deploy
        or did not start in time."""
        import time

        from ray import serve

        deadline = time.time() + timeout_s
        while (st := serve.status().applications.get(APP_NAME)) is None or st.status != "RUNNING":
            if st is not None and st.status == "DEPLOY_FAILED":
                last = st.message.splitlines()[-1] if st.message else ""
                raise RuntimeError(f"the application failed to start: {last}")
            if time.time() > deadline:
                raise RuntimeError(f"the application did not start in {timeout_s:.0f} s: {st}")
            time.sleep(1)

    def llm_handle(self):
        from ray import serve

        return serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=APP_NAME)

    def broadcaster(self, **kwargs):
        from serve.broadcaster import WeightBroadcaster

        kwargs.setdefault("mode", self.cfg.swap_mode)
        kwargs.setdefault("timeout_s", self.cfg.swap_timeout_s)
        kwargs.setdefault("transport", self.cfg.weight_transport)
        return WeightBroadcaster(self.llm_handle(), self.registry, **kwargs)

    def shutdown(self) -> None:
        import ray
        from ray import serve

        if self.controller is not None:
            try:
                ray.get(self.controller.stop.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - it is killed below either way
                pass
            ray.kill(self.controller)
        try:
            serve.delete(APP_NAME)
        finally:
            try:
                ray.get(self.store.close.remote(), timeout=60)
            finally:
                ray.kill(self.store)
