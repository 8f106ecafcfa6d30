"""Shared by the serving tests: starting an application of the tiny-world model, the ``openai`` client on it,
and the learner-side reference (the same weights in transformers) that served log-probs are checked against."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import openai
import torch

from simulators.tinyworld.build import SHIPPED_MODEL

API_KEY = "test-user-key-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"
PROMPT = "<|user|> reverse: m o p i<|end|><|assistant|>"


def ctrl_c_stops_it() -> None:
    """``preexec_fn`` of a command that a test stops with Ctrl-C (SIGINT): a suite run in the background by a
    non-interactive shell inherits SIGINT ignored, and a Python child started from it would ignore it too."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, dep, data_dir):
        self.dep = dep
        self.data_dir = data_dir
        self.url = dep.base_url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def admin(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300, **kw)

    def flush(self):
        import ray

        ray.get(self.dep.store.flush.remote())


def start_app(tmp_path_factory, **config):
    """A running application of the tiny-world model (``config``: ServeConfig fields), yielded as an ``App``;
    everything is shut down afterwards."""
    import ray
    from ray import serve

    from reverie.config import ServeConfig
    from reverie.ray_start import start_ray
    from serve.app import Deployment
    from serve.auth import Keys

    from reverie.config import LoopConfig

    data_dir = tmp_path_factory.mktemp("reverie-data")
    config.setdefault("loop", LoopConfig(learn=False))  # serving tests: no controller learning behind their back
    start_ray(num_cpus=8)
    cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(data_dir), port=free_port(),
                      swap_timeout_s=60.0, store_flush_seconds=0.5, **config)
    dep = Deployment(cfg, Keys(API_KEY, ADMIN_KEY, "test").digests())
    dep.wait_until_running(timeout_s=600)
    yield App(dep, str(data_dir))
    dep.shutdown()
    serve.shutdown()
    ray.shutdown()


# --------------------------------------------------------------------------- learner-side reference


def torch_model(state=None):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def perturbed_state(seed: int, scale: float = 0.02) -> dict:
    model = torch_model()
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * torch.randn(v.shape, generator=g)).contiguous() for k, v in model.state_dict().items()}


def torch_logprobs(model, prompt_ids, completion_ids) -> list[float]:
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(ids).logits.float()
    lp = torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1], dim=-1)
    return lp.gather(1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()


def served(app, max_tokens=8, stream=False):
    """(version, prompt ids, completion ids, sampled log-probs) of one greedy completion."""
    raw = app.client.completions.with_raw_response.create(
        model="reverie", prompt=PROMPT, max_tokens=max_tokens, temperature=0, logprobs=0, stream=stream,
        extra_body={"return_token_ids": True})
    version = int(raw.headers["x-reverie-version"])
    parsed = raw.parse()
    chunks = list(parsed) if stream else [parsed]
    prompt_ids, ids, lps, fingerprints = None, [], [], set()
    for c in chunks:
        fingerprints.add(c.system_fingerprint)
        for ch in c.choices:
            extra = ch.model_extra or {}
            prompt_ids = prompt_ids or extra.get("prompt_token_ids")
            ids += extra.get("token_ids") or []
            lps += (ch.logprobs.token_logprobs if ch.logprobs else []) or []
    assert fingerprints == {f"reverie-v{version}"}, (version, fingerprints)
    return version, prompt_ids, ids, lps


def max_diff(a, b) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max(abs(x - y) for x, y in zip(a, b))


def publish_under_load(app, state, clients: int = 8) -> tuple[dict, list, list[str]]:
    """Publish ``state`` while ``clients`` threads keep requesting greedy completions (half of them streamed);
    (the publish result, every ``served`` answer, every error)."""
    stop = threading.Event()
    results, errors = [], []

    def worker(i):
        while not stop.is_set():
            try:
                results.append(served(app, max_tokens=16, stream=bool(i % 2)))
            except Exception as e:  # noqa: BLE001 - every failure is counted
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)
    try:
        result = asyncio.run(app.dep.broadcaster().publish(state))
        # Keep the load on until requests started after the swap have been answered (on a busy machine a
        # fixed pause can end before any of them finished).
        deadline = time.time() + 120
        time.sleep(2)
        while time.time() < deadline and sum(r[0] == result["version"] for r in results) < clients:
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    return result, results, errors
