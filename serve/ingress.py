"""The HTTP front door: Ray Serve LLM's OpenAI ingress, extended with auth,
version headers, feedback and the admin routes.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (from ``OpenAiIngress``), ``POST /v1/feedback``,
``GET /admin/versions``, ``POST /admin/publish``, ``POST /admin/rollback``, and the loop's
``GET /admin/status``, ``POST /admin/cycle``, ``GET /admin/candidates/{V}``,
``POST /admin/candidates/{V}/approve`` and ``.../reject``; ``GET /admin/review`` is the review page
(static; it holds no data and asks for the admin key, which it sends to the JSON routes).

Admin errors are one sentence in ``{"detail": ...}``: 404 for a version that
does not exist, 409 for a decision its status does not allow (approving a
rejected candidate, rolling back to a version that never served), 503 when the
controller does not answer in time.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Optional

import msgpack
from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import JSONResponse, Response, StreamingResponse

from reverie.ray_start import serve_replicas_on_loopback
from reverie.versions import PROMOTED, ROLLED_BACK, VersionError, VersionRegistry
from reverie.versions import redact_feedback as redact_feedback_of
from serve.auth import AuthMiddleware
from serve.broadcaster import SwapError, WeightBroadcaster
from serve.door import MARKER
from serve.guard import OPENAI_ROLES, BodyGuard, ErrorRedactor
from serve.ray_llm import (
    DEFAULT_ENDPOINTS,
    DEFAULT_LLM_ROUTER_HTTP_TIMEOUT,
    ErrorResponse,
    OpenAiIngress,
    OpenAIHTTPException,
    init,
    router_request_timeout,
)
from serve.weights import WeightsMismatch

serve_replicas_on_loopback()  # in the ingress replica's process, before it serves (reverie/ray_start.py)

VERSION_HEADER = "x-reverie-version"
REPLICA_DIED_RETRIES = 2  # a request whose replica died before it answered anything is sent again this often
logger = logging.getLogger("reverie.serve")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=200)
    rating: Optional[float] = Field(default=None, ge=-1.0, le=1.0)
    correction: Optional[str] = Field(default=None, max_length=100_000)
    rule: Optional[str] = Field(default=None, max_length=100_000)
    approved: Optional[bool] = None

    @model_validator(mode="after")
    def _something(self):
        if self.rating is None and self.correction is None and self.rule is None and self.approved is None:
            raise ValueError("feedback needs at least one of rating, correction, rule, approved")
        return self


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(min_length=1, description="a local directory with *.safetensors weights of the served model")
    note: str = Field(default="", max_length=1000)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=10_000)


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=10_000)


CONTROLLER_TIMEOUT_S = 30.0


class ReverieIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, key_digests: dict, versions_dir: str,
                 store_name: str, store_namespace: str = "reverie", swap_mode: str = "wait",
                 swap_timeout_s: float = 120.0, weight_transport: str = "auto",
                 controller_name: str | None = None, lora_paths=None,
                 roles: tuple[str, ...] = OPENAI_ROLES, redact_feedback: bool = False):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        _DIGESTS.clear()
        _DIGESTS.update(key_digests)
        _ROLES[:] = list(roles)
        self._store_name, self._store_namespace = store_name, store_namespace
        self._store = None
        self._controller_name = controller_name
        self._shown = redact_feedback_of if redact_feedback else (lambda public: public)
        (handle,) = llm_deployments.values()
        self._registry = VersionRegistry(versions_dir)
        self._broadcaster = WeightBroadcaster(handle, self._registry, mode=swap_mode, timeout_s=swap_timeout_s,
                                              transport=weight_transport)

    async def _controller(self, method: str, *args):
        """Call the controller actor (bounded); None when the loop is off."""
        if not self._controller_name:
            return None
        import ray

        try:
            handle = ray.get_actor(self._controller_name, namespace=self._store_namespace)
            return await asyncio.wait_for(getattr(handle, method).remote(*args), CONTROLLER_TIMEOUT_S)
        except (asyncio.TimeoutError, ValueError, ray.exceptions.RayError) as e:
            raise HTTPException(status_code=503, detail=f"the controller did not answer: {type(e).__name__}") from None

    def _candidate(self, version: int):
        try:
            return self._registry.get(version)
        except VersionError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    def _store_handle(self):
        if self._store is None:
            import ray

            self._store = ray.get_actor(self._store_name, namespace=self._store_namespace)
        return self._store

    # ------------------------------------------------------------ generation
    async def _opened(self, body, call_method: str, raw_request):
        """(the replica's stream, its version marker, its first item).  A replica that dies before the first
        item reached this ingress (killed, crashed) has sent the client nothing yet: the request is sent again,
        to a live replica, up to ``REPLICA_DIED_RETRIES`` times.  Should the dead replica have handed its record
        to the store just before it died (a whole answer is recorded before it is returned), that record stays:
        an answer no client received, under its own id."""
        import ray

        for attempt in range(REPLICA_DIED_RETRIES + 1):
            gen = self._get_response(body=body, call_method=call_method, raw_request=raw_request)
            try:
                marker = await gen.__anext__()
                if isinstance(marker, ErrorResponse):
                    return gen, marker, None
                return gen, marker, await gen.__anext__()
            except ray.exceptions.RayActorError as e:
                await gen.aclose()
                if attempt == REPLICA_DIED_RETRIES:
                    raise
                logger.warning("a replica died before answering (%s); sending the request again", type(e).__name__)

    async def _process_llm_request(self, body, call_method: str, raw_request=None) -> Response:
        async with router_request_timeout(DEFAULT_LLM_ROUTER_HTTP_TIMEOUT):
            gen, marker, first = await self._opened(body, call_method, raw_request)
            if isinstance(marker, ErrorResponse):
                raise OpenAIHTTPException(message=marker.error.message, status_code=marker.error.code,
                                          type=marker.error.type)
            headers = {VERSION_HEADER: str(marker[MARKER]["version"])}
            chunk = first[0] if isinstance(first, list) and first else first
            if isinstance(chunk, ErrorResponse):
                await gen.aclose()
                raise OpenAIHTTPException(message=chunk.error.message, status_code=chunk.error.code,
                                          type=chunk.error.type)
            if isinstance(first, dict):
                await gen.aclose()
                return JSONResponse(content=first, headers=headers)

            async def events():
                try:
                    for item in [first]:
                        for event in item if isinstance(item, list) else [item]:
                            yield event if isinstance(event, str) else f"data: {event.model_dump_json()}\n\n"
                    async for item in gen:
                        for event in item if isinstance(item, list) else [item]:
                            yield event if isinstance(event, str) else f"data: {event.model_dump_json()}\n\n"
                finally:
                    await gen.aclose()

            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------ feedback
    async def feedback(self, body: FeedbackRequest) -> JSONResponse:
        store = self._store_handle()
        interaction = await store.get.remote("interactions", body.response_id)
        if interaction is None:
            raise HTTPException(status_code=404, detail=f"unknown response_id {body.response_id!r}")
        record = {"id": f"fb-{uuid.uuid4().hex}", "response_id": body.response_id, "created": time.time(),
                  "version": interaction.get("version"), "rating": body.rating, "correction": body.correction,
                  "rule": body.rule, "approved": body.approved}
        await store.append.remote("feedback", [msgpack.packb(record, use_bin_type=True)])
        return JSONResponse(status_code=201, content={"id": record["id"], "response_id": body.response_id,
                                                      "version": record["version"]})

    # ------------------------------------------------------------ admin
    async def admin_versions(self) -> JSONResponse:
        summary = await self._broadcaster.versions()
        summary["versions"] = [self._shown(v) for v in summary["versions"]]  # redacted as every admin route is
        return JSONResponse(summary)

    async def admin_publish(self, body: PublishRequest, request: Request) -> JSONResponse:
        try:
            result = await self._broadcaster.publish(checkpoint_dir=body.checkpoint, note=body.note,
                                                     by=request.scope.get("reverie_key", "admin"))
        except WeightsMismatch as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        except SwapError as e:
            raise HTTPException(status_code=500, detail=str(e)) from None
        return JSONResponse(status_code=201, content=result)

    async def admin_rollback(self, body: RollbackRequest) -> JSONResponse:
        c = self._candidate(body.version)
        if c.status not in (PROMOTED, ROLLED_BACK):
            raise HTTPException(status_code=409, detail=f"version {c.version} was never promoted ({c.status}); "
                                                        "only a version that served before can be rolled back to")
        try:
            result = await self._broadcaster.rollback(body.version)
        except VersionError as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        except SwapError as e:
            raise HTTPException(status_code=500, detail=str(e)) from None
        return JSONResponse(result)

    # ------------------------------------------------------------ the loop
    async def admin_status(self) -> JSONResponse:
        status = await self._controller("status")
        if status is None:  # serving only: the registry is the whole story
            status = {"promoted": self._registry.promoted().version,
                      "cycle": {"state": "off", "step": None, "cycle": 0, "progress": {"done": 0, "total": 0}},
                      "candidates": [c.public() for c in self._registry.all()], "learning": False,
                      "requested": False}
        return JSONResponse({**status, "candidates": [self._shown(c) for c in status.get("candidates", [])]})

    async def admin_cycle(self) -> JSONResponse:
        result = await self._controller("request_cycle")
        if result is None:
            raise HTTPException(status_code=409, detail="learning is off (reverie serve --no-learn): there is no cycle to run")
        return JSONResponse(status_code=202, content=result)

    async def admin_candidate(self, version: int) -> JSONResponse:
        c = self._candidate(version)
        return JSONResponse({**self._shown(c.public()), "review": self._registry.review(version)})

    async def _decide(self, request: Request, version: int, approve: bool, note: str) -> JSONResponse:
        self._candidate(version)
        try:
            c = self._registry.decide(version, approve, by=request.scope.get("reverie_key", "admin"), note=note)
        except VersionError as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        return JSONResponse(self._shown(c.public()))

    async def admin_approve(self, version: int, request: Request, body: Optional[DecisionRequest] = None) -> JSONResponse:
        return await self._decide(request, version, True, body.note if body else "")

    async def admin_reject(self, version: int, body: RejectRequest, request: Request) -> JSONResponse:
        return await self._decide(request, version, False, body.reason)

    async def admin_review(self) -> Response:
        """The review page (``serve/review.html``): static, no data in it, so served without the key (see
        ``serve/auth.py``); it asks for the admin key and calls the routes above with it."""
        from pathlib import Path

        from starlette.responses import HTMLResponse

        page = (Path(__file__).parent / "review.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "frame-ancestors 'none'",
                                           "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"})


_DIGESTS: dict = {}
_ROLES: list = []  # the chat template's roles (module state, like the digests)


def key_digests() -> dict:
    """The digests this process's ingress was started with (module state: the app is pickled, the module is not)."""
    return _DIGESTS

ENDPOINTS = {
    "models": DEFAULT_ENDPOINTS["models"],
    "model_data": DEFAULT_ENDPOINTS["model_data"],
    "completions": DEFAULT_ENDPOINTS["completions"],
    "chat": DEFAULT_ENDPOINTS["chat"],
    "feedback": lambda app: app.post("/v1/feedback", status_code=201),
    "admin_versions": lambda app: app.get("/admin/versions"),
    "admin_publish": lambda app: app.post("/admin/publish", status_code=201),
    "admin_rollback": lambda app: app.post("/admin/rollback"),
    "admin_status": lambda app: app.get("/admin/status"),
    "admin_cycle": lambda app: app.post("/admin/cycle", status_code=202),
    "admin_candidate": lambda app: app.get("/admin/candidates/{version}"),
    "admin_approve": lambda app: app.post("/admin/candidates/{version}/approve"),
    "admin_reject": lambda app: app.post("/admin/candidates/{version}/reject"),
    "admin_review": lambda app: app.get("/admin/review"),
}


def make_app():
    app = init()
    app.add_middleware(BodyGuard, roles=lambda: _ROLES or OPENAI_ROLES)  # inner: runs once the key passed
    app.add_middleware(AuthMiddleware, digests=key_digests)
    app.add_middleware(ErrorRedactor)  # outermost: a server error's body names no remote traceback
    return app
