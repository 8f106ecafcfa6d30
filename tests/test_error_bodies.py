"""What a client reads when something unexpected fails behind the API: Ray Serve LLM's handler of last resort answers
500 with the exception's own text appended ("original exception: ..."), which for an error raised in another Ray
process is its whole remote traceback.  ``serve.guard.ErrorRedactor`` (outermost, as ``serve/ingress.py``'s
``make_app`` mounts it) keeps the status, the type and the request id, and drops the rest; the log keeps it all."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException
from starlette.testclient import TestClient

from serve.guard import ErrorRedactor

TRACEBACK = ('ray::ExperienceStore.append() (pid=4242, ip=10.0.0.7, actor_id=ab12)\n  File "/srv/secret/actors/'
             'store.py", line 88, in append\n    raise OSError("disk full at /data/tenant-a")\nOSError: disk full')


def app_with_rays_handlers() -> TestClient:
    from ray.llm._internal.serve.core.ingress.middleware import add_exception_handling_middleware

    app = FastAPI()
    add_exception_handling_middleware(app)

    @app.post("/v1/feedback")
    async def feedback():
        raise RuntimeError(TRACEBACK)

    @app.post("/admin/rollback")
    async def rollback():
        raise HTTPException(status_code=409, detail="version 3 was never promoted")

    @app.get("/v1/models")
    async def models():
        return {"data": []}

    app.add_middleware(ErrorRedactor)
    return TestClient(app, raise_server_exceptions=False)


def test_a_500_names_no_remote_traceback_path_or_exception_text_only_its_request_id():
    r = app_with_rays_handlers().post("/v1/feedback", json={})
    assert r.status_code == 500 and r.headers["content-length"] == str(len(r.content))
    error = r.json()["error"]
    assert error["message"].startswith("Internal Server Error (Request ID: ") and error["code"] == 500
    for leaked in ("Traceback", "File ", "/srv/secret", "pid=", "disk full", "original exception"):
        assert leaked not in r.text, leaked
    assert "\n" not in error["message"]


def test_what_is_not_a_server_error_passes_untouched():
    client = app_with_rays_handlers()
    refused = client.post("/admin/rollback", json={})
    assert refused.status_code == 409 and "version 3 was never promoted" in refused.text
    ok = client.get("/v1/models")
    assert ok.status_code == 200 and ok.json() == {"data": []}
