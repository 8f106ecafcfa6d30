"""The Ray Serve LLM internals reverie touches, and nothing else: a Ray upgrade that moves them changes this
file alone.  Tested with Ray 2.60.0 (``ray[serve,llm]``); each name below is not part of Ray's public API
(``ray.serve.llm`` exports ``LLMConfig`` and ``LLMServer``, which reverie imports from there).

- ``broadcast``: call a method on every replica of a deployment (the weight broadcaster's install and status).
- ``build_llm_deployment``, ``make_fastapi_ingress``, ``to_model_metadata``: assembling the application with
  reverie's replica and ingress classes.
- ``OpenAiIngress`` and its routing helpers, ``ErrorInfo``/``ErrorResponse``/``OpenAIHTTPException``: the
  OpenAI-compatible front door that ``serve/ingress.py`` extends, and the errors a replica yields.
- ``ENGINE_START_TIMEOUT_S``: the bound on an engine's start, for a replica's standby engine.
"""
from __future__ import annotations

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
from ray.llm._internal.serve.utils.broadcast import broadcast

__all__ = ["DEFAULT_ENDPOINTS", "DEFAULT_LLM_ROUTER_HTTP_TIMEOUT", "ENGINE_START_TIMEOUT_S", "ErrorInfo",
           "ErrorResponse", "OpenAIHTTPException", "OpenAiIngress", "broadcast", "build_llm_deployment", "init",
           "make_fastapi_ingress", "router_request_timeout", "to_model_metadata"]
