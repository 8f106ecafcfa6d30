"""API keys: where they come from, and the check at the door.

Keys come from the environment (``REVERIE_API_KEY``, ``REVERIE_ADMIN_KEY``) or
from a key file (JSON ``{"api_key": ..., "admin_key": ...}``, mode 0600).
With neither, ``reverie serve`` generates both and writes the file.  Only
SHA-256 digests of the keys travel to the Serve replicas (their configuration
is visible in Ray's state), and keys are never logged.

``/v1/*`` needs ``Authorization: Bearer <api key>`` (the admin key works there
too); ``/admin/*`` needs the admin key: the user key there gives 403, no key
or a wrong key 401.  The one exception is ``GET /admin/review``, the review
page: a browser cannot send a bearer header when it navigates to a page, and
the page is static (it holds no data); it asks for the admin key and sends it
with every call it makes to the JSON routes, which all need it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from reverie.errors import ReverieError

API_ENV = "REVERIE_API_KEY"
ADMIN_ENV = "REVERIE_ADMIN_KEY"
DEFAULT_KEY_FILE = Path.home() / ".config" / "reverie" / "keys.json"
# (method, exact path) served without a key: static pages that hold no data.
OPEN_ROUTES = frozenset({("GET", "/admin/review")})


@dataclass(frozen=True)
class Keys:
    api_key: str
    admin_key: str
    source: str  # "environment", or the key file's path

    def digests(self) -> dict[str, str]:
        return {"api": digest(self.api_key), "admin": digest(self.admin_key)}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check(key: str, what: str) -> str:
    if len(key) < 16:
        raise ReverieError(f"the {what} must be at least 16 characters long")
    return key


def load_keys(key_file: str | Path | None = None, *, generate: bool = True) -> tuple[Keys, bool]:
    """(keys, generated): from the environment, else the key file, else newly generated into the key file."""
    api, admin = os.environ.get(API_ENV), os.environ.get(ADMIN_ENV)
    if api or admin:
        if not (api and admin):
            raise ReverieError(f"set both {API_ENV} and {ADMIN_ENV}, or neither")
        if api == admin:
            raise ReverieError(f"{API_ENV} and {ADMIN_ENV} must differ")
        return Keys(_check(api, API_ENV), _check(admin, ADMIN_ENV), "environment"), False
    path = Path(key_file) if key_file else DEFAULT_KEY_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ReverieError(f"key file {path} is readable by other users; run: chmod 600 {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            keys = Keys(_check(str(data["api_key"]), "api_key"), _check(str(data["admin_key"]), "admin_key"), str(path))
        except (ValueError, KeyError, TypeError):
            raise ReverieError(f"key file {path} must be JSON with 'api_key' and 'admin_key'") from None
        if keys.api_key == keys.admin_key:
            raise ReverieError(f"the api_key and admin_key in {path} must differ")
        return keys, False
    if not generate:
        raise ReverieError(f"no keys: set {API_ENV} and {ADMIN_ENV}, or write {path}")
    keys = Keys("rv-" + secrets.token_urlsafe(32), "rv-admin-" + secrets.token_urlsafe(32), str(path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"api_key": keys.api_key, "admin_key": keys.admin_key}, f)
    return keys, True


class AuthMiddleware:
    """Pure ASGI middleware: deny by default; digests are compared in constant time."""

    def __init__(self, app, digests: "callable"):
        self.app = app
        self._digests = digests  # returns the key digests once the ingress has started

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if (scope.get("method"), path) in OPEN_ROUTES:
            return await self.app(scope, receive, send)
        need = "admin" if path.startswith("/admin") else "api"
        token = None
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                text = value.decode("latin-1")
                if text[:7].lower() == "bearer ":
                    token = text[7:].strip()
                break
        digests = self._digests()
        if not digests:
            return await _reply(send, 503, "server is starting", "service_unavailable")
        if token is None:
            return await _reply(send, 401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error")
        d = digest(token)
        is_admin = hmac.compare_digest(d, digests["admin"])
        is_api = hmac.compare_digest(d, digests["api"])
        if need == "admin" and not is_admin:
            if is_api:
                return await _reply(send, 403, "this route needs the admin key", "permission_error")
            return await _reply(send, 401, "invalid API key", "authentication_error")
        if need == "api" and not (is_api or is_admin):
            return await _reply(send, 401, "invalid API key", "authentication_error")
        # Who decided, for the record: the key's role and a short digest prefix, never the key.
        scope["reverie_key"] = f"{'admin' if is_admin else 'api'} key {d[:8]}"
        return await self.app(scope, receive, send)


async def _reply(send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
