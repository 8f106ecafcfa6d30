"""The Ray Serve LLM internals reverie touches, and nothing else: a Ray upgrade that moves them changes this
file alone.  Tested with Ray 2.60.0 (``ray[serve,llm]``); each name below is not part of Ray's public API
(``ray.serve.llm`` exports ``LLMConfig`` and ``LLMServer``, which reverie imports from there).

- ``broadcast``: call a method on every replica of a deployment (the weight broadcaster's install and status);
  Ray's, after the handle's request router is built on the router's own event loop (see below).
- ``build_llm_deployment``, ``make_fastapi_ingress``, ``to_model_metadata``: assembling the application with
  reverie's replica and ingress classes.
- ``OpenAiIngress`` and its routing helpers, ``ErrorInfo``/``ErrorResponse``/``OpenAIHTTPException``: the
  OpenAI-compatible front door that ``serve/ingress.py`` extends, and the errors a replica yields.
- ``ENGINE_START_TIMEOUT_S``: the bound on an engine's start, for a replica's standby engine.
- ``CallbackBase``: ``LocalModelFiles``, the engine-start hook that skips Ray LLM's node initialisation.
- ``LLMServer._start_engine``: overridden in ``serve/replica.py`` without Ray LLM's usage-telemetry actor.
"""
from __future__ import annotations

import asyncio
import time

from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.serve.constants import ENGINE_START_TIMEOUT_S
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ErrorInfo,
    ErrorResponse,
    OpenAIHTTPException,
    to_model_metadata,
)
from ray.llm._internal.serve.core.ingress.ingress import (
    DEFAULT_ENDPOINTS,
    DEFAULT_LLM_ROUTER_HTTP_TIMEOUT,
    OpenAiIngress,
    init,
    make_fastapi_ingress,
    router_request_timeout,
)
from ray.llm._internal.serve.core.server.builder import build_llm_deployment
from ray.llm._internal.serve.utils.broadcast import broadcast as _ray_broadcast

ROUTER_READY_TIMEOUT_S = 60.0


async def _request_router_built(router) -> bool:
    return router.request_router is not None  # the property builds it, here on the router's own loop


class LocalModelFiles(CallbackBase):
    """Each engine's start without Ray LLM's node initialisation: a task per node that imports vLLM to
    "download" the model and the tokenizer, for each engine started, a standby engine's too (a two-replica
    application of the tiny model took 165.5 s of CPU to start with them, 131.8 s without:
    ``bench/results/suite-time/2026-12-06-app-start-processes.txt``).  reverie's models are directories at the same path on every node, checked before
    anything starts (``reverie.ray_start.check_shared``), so there is nothing to download."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


def broadcast(handle, method_name: str, args=None, kwargs=None):
    """Call ``method_name`` on every replica behind ``handle`` (from a thread, not an event loop); their results.

    Ray 2.60's ``broadcast`` waits for the handle's request router by reading a property that builds it, from
    the calling thread: where the router heard of the replicas before its routing config (and no update has
    followed), it is built there and fails with ``RuntimeError: no running event loop`` (the first swap of a
    demo run failed so).  So the property is read on the router's own loop first, until the router is built."""
    if not handle.is_initialized:
        handle._init(_run_router_in_separate_loop=True)  # as Ray's broadcast would
    router = getattr(handle._router, "_asyncio_router", None)
    if router is not None:
        deadline = time.monotonic() + ROUTER_READY_TIMEOUT_S
        while not asyncio.run_coroutine_threadsafe(_request_router_built(router), router._event_loop).result(
                timeout=ROUTER_READY_TIMEOUT_S):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the handle's request router was not ready in {ROUTER_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
    return _ray_broadcast(handle, method_name, args=args, kwargs=kwargs)


__all__ = ["DEFAULT_ENDPOINTS", "DEFAULT_LLM_ROUTER_HTTP_TIMEOUT", "ENGINE_START_TIMEOUT_S", "ErrorInfo",
           "ErrorResponse", "OpenAIHTTPException", "OpenAiIngress", "broadcast", "build_llm_deployment", "init",
           "LocalModelFiles", "make_fastapi_ingress", "router_request_timeout", "to_model_metadata"]
