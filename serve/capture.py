"""Experience capture for one request: what to ask the engine for, what to keep,
what to show the user.

The engine is always asked for the prompt and completion token ids
(``return_token_ids``) and the sampled tokens' log-probs, because the store
records them; the user sees them only if they asked.  Every response and every
stream chunk gets ``system_fingerprint = "reverie-v<version>"``.

The response id is the server's (``chatcmpl-<uuid>`` or ``cmpl-<uuid>``), made
here: the engine's own id follows the client's ``X-Request-Id`` header, so two
clients (or one, twice) could share it.  The engine's id is kept in the record
as ``request_id``.
"""
from __future__ import annotations

import json
import time
import uuid

FINGERPRINT = "reverie-v{}"

_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "seed", "stop",
                    "presence_penalty", "frequency_penalty")


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content)


class Capture:
    def __init__(self, kind: str, request, version: int, replica: str, model: str):
        self.kind = kind
        self.version = version
        self.replica = replica
        self.model = model
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.fingerprint = FINGERPRINT.format(version)
        self.stream = bool(getattr(request, "stream", False))
        # What the user asked to see, before the capture options are forced on.
        self.want_token_ids = bool(getattr(request, "return_token_ids", False))
        self.want_logprobs = bool(request.logprobs) if kind == "chat" else request.logprobs is not None
        self.sampling = {f: getattr(request, f, None) for f in _SAMPLING_FIELDS if getattr(request, f, None) is not None}
        if kind == "chat":
            dumped = request.model_dump(include={"messages"})["messages"]
            self.messages = [{"role": str(m.get("role")), "content": _text(m.get("content"))} for m in dumped]
            self.prompt = None
            request.logprobs = True
            if request.top_logprobs is None:
                request.top_logprobs = 0
        else:
            self.messages = None
            p = request.prompt
            self.prompt = p if isinstance(p, str) else json.dumps(p)
            if request.logprobs is None:
                request.logprobs = 0
        request.return_token_ids = True
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.request_id: str | None = None  # the engine's id (from the client's X-Request-Id, if it sent one)
        self.error: str | None = None
        self.prompt_token_ids: list[int] | None = None
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None

    # ------------------------------------------------------------ absorbing
    def _absorb_choice(self, choice: dict) -> None:
        if choice.get("index", 0) != 0:  # one row per interaction: the first choice is recorded
            return
        if self.kind == "chat":
            part = choice.get("message") or choice.get("delta") or {}
            self.text.append(part.get("content") or "")
            lp = (choice.get("logprobs") or {}).get("content") or []
            self.logprobs += [float(x["logprob"]) for x in lp]
        else:
            self.text.append(choice.get("text") or "")
            lp = (choice.get("logprobs") or {}).get("token_logprobs") or []
            self.logprobs += [float(x) for x in lp if x is not None]
        self.token_ids += list(choice.get("token_ids") or [])
        if choice.get("prompt_token_ids") and self.prompt_token_ids is None:
            self.prompt_token_ids = list(choice["prompt_token_ids"])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def absorb(self, payload: dict) -> None:
        """Take what is worth recording from a response or a stream chunk."""
        self.request_id = self.request_id or payload.get("id")
        if payload.get("prompt_token_ids") and self.prompt_token_ids is None:
            self.prompt_token_ids = list(payload["prompt_token_ids"])
        for choice in payload.get("choices") or []:
            self._absorb_choice(choice)

    def scrub(self, payload: dict) -> dict:
        """Stamp the server's id and the version; drop what only the recorder asked for."""
        payload["id"] = self.id
        payload["system_fingerprint"] = self.fingerprint
        if not self.want_token_ids:
            payload.pop("prompt_token_ids", None)
        for choice in payload.get("choices") or []:
            if not self.want_token_ids:
                choice.pop("token_ids", None)
                choice.pop("prompt_token_ids", None)
            if not self.want_logprobs:
                choice["logprobs"] = None
        return payload

    def rewrite_sse(self, text: str) -> tuple[str, bool]:
        """(rewritten text, saw [DONE]) for a string of one or more ``data: ...`` server-sent events."""
        out, done = [], False
        for event in text.split("\n\n"):
            if not event.strip():
                continue
            body = event[6:].strip() if event.startswith("data: ") else None
            if body == "[DONE]":
                done = True
            elif body is not None:
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = None
                if isinstance(payload, dict) and not ("error" in payload and "choices" not in payload):
                    self.absorb(payload)
                    event = "data: " + json.dumps(self.scrub(payload), separators=(",", ":"))
                elif isinstance(payload, dict):  # an error event in the stream
                    err = payload["error"]
                    self.error = str(err.get("message", err) if isinstance(err, dict) else err)
            out.append(event + "\n\n")
        return "".join(out), done

    # ------------------------------------------------------------ the record
    @property
    def started_output(self) -> bool:
        """Whether the engine produced anything for this request (a refused request produces nothing)."""
        return self.request_id is not None

    def record(self) -> dict:
        """The interaction's row.  ``finish_reason`` is the engine's (``stop``, ``length``), or ``cancelled``
        (the client went away mid-stream), ``error`` (the engine failed mid-way; ``error`` says how) or
        ``incomplete`` (the stream ended without a finish)."""
        return {
            "id": self.id,
            "request_id": self.request_id,
            "error": self.error,
            "created": self.started,
            "kind": self.kind,
            "model": self.model,
            "version": int(self.version),
            "replica": self.replica,
            "messages": self.messages,
            "prompt": self.prompt,
            "prompt_token_ids": self.prompt_token_ids,
            "completion": "".join(self.text),
            "completion_token_ids": self.token_ids,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason or ("error" if self.error else None),
            "latency_s": time.perf_counter() - self._t0,
            "stream": self.stream,
            "sampling": json.dumps(self.sampling, default=str),
        }
