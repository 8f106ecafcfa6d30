"""The ingress's body guard: a request body is refused with a 4xx that names the problem before any route,
the engine or the chat template sees it.

Checked for every request with a body (pure ASGI, so the body is read once, bounded, and handed on):
- at most ``MAX_BODY_BYTES`` (413), UTF-8 (400), JSON (400), an object (400), nested at most ``MAX_DEPTH``
  deep (400), with no ``NaN``/``Infinity`` literal anywhere (400: JSON has no such numbers, Python's parser
  accepts them, and a NaN temperature or rating would travel into sampling or the store);
- for generation requests, a ``model`` and strict JSON types for the sampling fields (400: the request
  models would coerce ``"yes"`` to true);
- for chat requests, every message is an object with a role the model's chat template knows and a text
  ``content`` (400): an unknown role must never reach the template, where it would be rendered as text
  that looks like a role tag.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CHAT_PATHS = ("/v1/chat/completions",)
GENERATION_PATHS = (*CHAT_PATHS, "/v1/completions")
# Fields of a generation request whose JSON type is checked strictly (the request models coerce "yes" to
# true and "3" to 3; a client that sends them has a bug worth hearing about).
BOOLEANS = ("stream", "echo", "ignore_eos", "return_token_ids")
NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p")
INTEGERS = ("max_tokens", "max_completion_tokens", "n", "top_logprobs", "seed", "top_k")


class BadBody(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def chat_roles(model_dir: str | Path) -> tuple[str, ...]:
    """The roles the model's chat template has a tag for (``<|user|>`` ... as special tokens, as the tiny
    world's tokenizer has); the OpenAI roles for a model whose tokenizer names none."""
    tokens: list[str] = []
    for name in ("tokenizer.json", "tokenizer_config.json"):
        try:
            config = json.loads((Path(model_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        added = list(config.get("added_tokens") or []) + list((config.get("added_tokens_decoder") or {}).values())
        tokens += [t.get("content", "") for t in added if isinstance(t, dict)]
        for key in ("additional_special_tokens", "extra_special_tokens"):
            extra = config.get(key) or []
            tokens += [t for t in (extra.values() if isinstance(extra, dict) else extra) if isinstance(t, str)]
    tagged = {m.group(1) for t in tokens if (m := re.fullmatch(r"<\|([a-z_]+)\|>", t))}
    roles = tuple(r for r in OPENAI_ROLES if r in tagged)
    return roles or OPENAI_ROLES


def _no_constant(name: str):
    raise BadBody(400, f"the body contains {name}, which is not a JSON number")


def _depth(value, limit: int) -> None:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            raise BadBody(400, f"the body is nested more than {limit} deep")
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]


def _check_generation(value: dict, chat: bool) -> None:
    model = value.get("model")
    if not isinstance(model, str) or not model:
        raise BadBody(400, "model is required: the id of a served model (GET /v1/models lists them)")
    for name in BOOLEANS:
        if name in value and value[name] is not None and not isinstance(value[name], bool):
            raise BadBody(400, f"{name} must be true or false")
    for name in NUMBERS:
        v = value.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise BadBody(400, f"{name} must be a number")
    for name in INTEGERS:
        v = value.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise BadBody(400, f"{name} must be a whole number")
    v = value.get("logprobs")  # chat: whether to return them; completions: how many alternatives
    if v is not None and chat and not isinstance(v, bool):
        raise BadBody(400, "logprobs must be true or false")
    if v is not None and not chat and (isinstance(v, bool) or not isinstance(v, int)):
        raise BadBody(400, "logprobs must be a whole number")


def parse(body: bytes, *, chat: bool = False, generation: bool = False, roles: tuple[str, ...] = OPENAI_ROLES):
    """The parsed body, or ``BadBody`` naming what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise BadBody(413, f"the body is too large: {len(body)} bytes, at most {MAX_BODY_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadBody(400, f"the body is not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except BadBody:
        raise
    except RecursionError:
        raise BadBody(400, f"the body is nested more than {MAX_DEPTH} deep") from None
    except ValueError as e:
        raise BadBody(400, f"the body is not valid JSON: {e}") from None
    _depth(value, MAX_DEPTH)
    if not isinstance(value, dict):
        raise BadBody(400, f"the body must be a JSON object, not {type(value).__name__}")
    if generation or chat:
        _check_generation(value, chat)
    if chat:
        _check_messages(value.get("messages"), roles)
    return value


def _check_messages(messages, roles: tuple[str, ...]) -> None:
    if messages is None:
        return  # the route names the missing field itself
    if not isinstance(messages, list) or not messages:
        raise BadBody(400, "messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadBody(400, f"messages[{i}] must be an object with a role and a content")
        role = m.get("role")
        if not isinstance(role, str):
            raise BadBody(400, f"messages[{i}].role must be one of: {', '.join(roles)}")
        if role not in roles:
            raise BadBody(400, f"messages[{i}].role {role[:40]!r} is not a role of this model's chat template; "
                               f"roles are: {', '.join(roles)}")
        content = m.get("content")
        parts_ok = isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content)
        if not (isinstance(content, str) or parts_ok):
            raise BadBody(400, f"messages[{i}].content must be text (a string, or a list of text parts)")


class BodyGuard:
    """Pure ASGI middleware: reads a request's body (bounded), checks it with ``parse`` and replays it to the
    app; a bad body is answered with ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, app, roles=lambda: OPENAI_ROLES):
        self.app = app
        self.roles = roles  # returns the roles once the ingress has started

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return await _reply(send, 413, f"the body is too large: more than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        path = scope.get("path")
        if body or path in GENERATION_PATHS:
            try:
                parse(body, chat=path in CHAT_PATHS, generation=path in GENERATION_PATHS, roles=tuple(self.roles()))
            except BadBody as e:
                return await _reply(send, e.status, str(e))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _reply(send, status: int, message: str) -> None:
    kind = "request_too_large" if status == 413 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})



class ErrorRedactor:
    """Pure ASGI middleware, outermost: a server error's JSON body keeps its status, type and request id and loses
    the rest.  Ray Serve LLM's handler of last resort writes ``Message: Internal Server Error (Request ID: ...),
    Internal exception: ..., original exception: <the exception's text>``, and the text of an error raised in
    another Ray process is its remote traceback (paths, hosts, pids, data); the log keeps it whole."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict = {}
        chunks: list[bytes] = []

        async def redacting(message):
            if message["type"] == "http.response.start" and message.get("status", 200) >= 500:
                held["start"] = message  # the body decides what is sent
                return None
            if "start" not in held or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            body = redacted(b"".join(chunks))
            headers = [(k, v) for k, v in held["start"].get("headers", []) if k.lower() != b"content-length"]
            await send({**held["start"], "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})

        return await self.app(scope, receive, redacting)


def redacted(body: bytes) -> bytes:
    """A server error's body with its message cut to the first sentence Ray writes (status and request id)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return body
    first = error["message"].split(", Internal exception:", 1)[0].removeprefix("Message: ")
    first = first.split(", original exception:", 1)[0].splitlines()[0] if first else "Internal Server Error"
    return json.dumps({**doc, "error": {**error, "message": first}}).encode()
