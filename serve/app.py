"""Assembling and running the serving application (used by ``reverie serve``, the tests and the benchmark)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from reverie.engine import engine_kwargs

APP_NAME = "reverie"
MODEL_ID = "reverie"
LLM_DEPLOYMENT = "ReverieLLMServer"
INGRESS_DEPLOYMENT = "ReverieIngress"
REPO_ROOT = Path(__file__).resolve().parent.parent
# What a replica does with in-flight requests during a swap (serve/replica.py): drain them (wait), pause and
# continue them on the new weights (keep), end them (abort), or load into a second engine and switch (standby).
SWAP_MODES = ("wait", "keep", "abort", "standby")


@dataclass
class ServeConfig:
    model_dir: Path
    data_dir: str = "./reverie-data"
    versions_dir: Path | None = None  # default: <data_dir>/versions (must be a local path)
    replicas: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    model_id: str = MODEL_ID
    swap_mode: str = "wait"
    swap_timeout_s: float = 120.0
    store_name: str = "reverie-experience-store"
    store_flush_seconds: float = 1.0
    seed: int = 0
    # Keep the engine's compute cores to the engine (reverie/cpus.py); only with one replica on this node.
    pin_cpus: bool = False
    extra_engine_kwargs: dict = field(default_factory=dict)

    def cpu_plan(self):
        from reverie import cpus

        return cpus.plan() if self.pin_cpus and self.replicas == 1 else None

    def resolved_versions_dir(self) -> Path:
        if self.versions_dir is not None:
            return Path(self.versions_dir).resolve()
        if "://" in self.data_dir:
            raise ValueError("with a remote --data-dir, give a local --versions-dir")
        return (Path(self.data_dir) / "versions").resolve()


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
        deployment_config={"num_replicas": cfg.replicas, "health_check_period_s": 10,
                           "graceful_shutdown_timeout_s": 30},
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "VLLM_CONFIGURE_LOGGING": "0",
                                  "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
    )


def build_application(cfg: ServeConfig, key_digests: dict):
    """The Serve application: ``ReverieIngress`` in front of ``cfg.replicas`` ``ReverieLLMServer`` replicas."""
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment

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
        swap_mode=cfg.swap_mode, swap_timeout_s=cfg.swap_timeout_s,
    )


def init_ray(address: str | None = None, num_cpus: int | None = None, cpu_plan=None):
    """Join ``address``, or start a private local Ray (never ``address='auto'``: another Ray may run here).
    With a ``cpu_plan`` (reverie/cpus.py), a private Ray's processes start on the plan's host cores."""
    import ray

    from reverie.cpus import host_only

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
    if address:
        ray.init(address=address, runtime_env=env, namespace="reverie", log_to_driver=False)
    else:
        with host_only(cpu_plan):
            ray.init(num_cpus=num_cpus or max(8, os.cpu_count() or 2), include_dashboard=False, runtime_env=env,
                     namespace="reverie", log_to_driver=False)


class Deployment:
    """A running application: the store actor, the version registry and the Serve app."""

    def __init__(self, cfg: ServeConfig, key_digests: dict):
        from ray import serve

        from actors.store import start_store
        from actors.versions import VersionRegistry

        self.cfg = cfg
        self.registry = VersionRegistry(cfg.resolved_versions_dir())
        self.registry.ensure_base(cfg.model_dir)
        self.store = start_store(cfg.data_dir, name=cfg.store_name, flush_seconds=cfg.store_flush_seconds)
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build_application(cfg, key_digests), name=APP_NAME, route_prefix="/", blocking=False)
        self.base_url = f"http://{cfg.host}:{cfg.port}"

    def llm_handle(self):
        from ray import serve

        return serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=APP_NAME)

    def broadcaster(self, **kwargs):
        from actors.broadcaster import WeightBroadcaster

        kwargs.setdefault("mode", self.cfg.swap_mode)
        kwargs.setdefault("timeout_s", self.cfg.swap_timeout_s)
        return WeightBroadcaster(self.llm_handle(), self.registry, **kwargs)

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(APP_NAME)
        finally:
            try:
                ray.get(self.store.close.remote(), timeout=60)
            finally:
                ray.kill(self.store)
