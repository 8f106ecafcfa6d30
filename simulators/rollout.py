"""The rollout engine: one vLLM engine that simulator workers share, as a Ray actor.

Workers send a turn's prompts (chat messages) and get the policy's replies.
Calls that arrive while the engine is busy are combined into one
``LLM.generate`` call (continuous batching across workers): the first waiting
caller takes every queued request, runs them together and hands each caller
its own replies.

Versions: the engine is started on one version of the weights and told its
id (an id of the version registry, ``reverie/versions.py``); ``reload``
installs other weights (an HF model directory of the same model) into the
running engine through the weight-sync interface (``reverie/weight_sync.py``:
the engine reports the checksum of what it loaded, checked against the
files), with the id it is given: no restart.  It never counts versions itself: the id it reports is the one every
trajectory played through it is tagged with.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

MAX_ACTION_TOKENS = 32


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    max_tokens: int = MAX_ACTION_TOKENS
    seed: int | None = None


class RolloutEngine:
    """A vLLM engine on one model directory, shared by concurrent callers."""

    def __init__(self, model_dir: str | Path, version: int, seed: int = 0, max_model_len: int | None = None):
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._seed = seed
        self._max_model_len = max_model_len  # None: reverie.engine's default
        self._llm = None
        self.calls = 0  # engine generate calls (each may combine several requests)
        self.requests = 0
        self._start(model_dir, version)

    @classmethod
    def from_llm(cls, llm, model_dir: str | Path, version: int = 0) -> "RolloutEngine":
        """Wrap an engine already started on ``model_dir`` (tests share one; a model-simulated environment
        stores no trajectory of its own, hence the default version)."""
        from learner.tokenizer import chat_encoder, load_tokenizer

        self = cls.__new__(cls)
        self._queue, self._lock, self._seed = queue.Queue(), threading.Lock(), 0
        self.calls = self.requests = 0
        self._model_dir, self._version = str(model_dir), int(version)
        self._encoder = chat_encoder(load_tokenizer(Path(model_dir)))
        self._llm = llm
        return self

    def _start(self, model_dir: str | Path, version: int) -> None:
        from learner.tokenizer import chat_encoder, load_tokenizer
        from reverie.engine import offline_llm

        self._model_dir = str(model_dir)
        self._version = int(version)
        self._encoder = chat_encoder(load_tokenizer(Path(model_dir)))
        longer = {"max_model_len": self._max_model_len} if self._max_model_len else {}
        self._llm = offline_llm(model_dir, seed=self._seed, **longer)

    def _stop(self) -> None:
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None

    def reload(self, model_dir: str | Path, version: int) -> int:
        """Install the weights in ``model_dir`` in place (waits for running calls) as ``version``; that version."""
        from learner.vllm_backend import reload as install_weights

        with self._lock:
            install_weights(self._llm, Path(model_dir), version=int(version))
            self._model_dir, self._version = str(model_dir), int(version)
        return self._version

    def version(self) -> int:
        return self._version

    def model_dir(self) -> str:
        return self._model_dir

    def stats(self) -> dict:
        return {"calls": self.calls, "requests": self.requests, "version": self._version}

    def generate(self, prompts: Sequence[Sequence[dict]], sampling: Sampling = Sampling(),
                 role: str = "assistant", seeds: Sequence[int] | None = None) -> list[str | None]:
        """The model's next message in ``role`` after each prompt (a list of chat
        messages): the policy's reply by default; a model-simulated environment
        asks for the ``tool`` message instead.  ``None`` for a prompt that no
        longer fits the model's context (an episode that has outgrown it ends
        there); a reply is cut where the context ends.  ``seeds``: one sampling
        seed per prompt (``sampling.seed`` for every prompt otherwise), so that a
        reply does not depend on what else the engine batched beside it."""
        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        fut: Future = Future()
        self._queue.put((list(prompts), sampling, role, seeds, fut))
        with self._lock:
            if not fut.done():
                self._run_queued()
        return fut.result()

    def _run_queued(self) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        limit = self._llm.model_config.max_model_len
        token_prompts, params, fits = [], [], []
        for prompts, sampling, role, seeds, _ in jobs:
            for i, p in enumerate(prompts):
                ids = self._encoder.prompt_ids(list(p), role)
                fits.append(len(ids) < limit)
                if fits[-1]:
                    token_prompts.append(TokensPrompt(prompt_token_ids=ids))
                    params.append(SamplingParams(temperature=sampling.temperature,
                                                 seed=sampling.seed if seeds is None else seeds[i],
                                                 max_tokens=min(sampling.max_tokens, limit - len(ids))))
        try:
            outs = self._llm.generate(token_prompts, params, use_tqdm=False) if token_prompts else []
        except BaseException as exc:  # every waiting caller sees the failure
            for *_, fut in jobs:
                fut.set_exception(exc)
            raise
        self.calls += 1
        self.requests += len(jobs)
        replies = iter(o.outputs[0].text for o in outs)
        texts = [next(replies) if fit else None for fit in fits]
        at = 0
        for prompts, _, _, _, fut in jobs:
            fut.set_result(texts[at : at + len(prompts)])
            at += len(prompts)

    def shutdown(self) -> None:
        with self._lock:
            self._stop()


def engine_actor(model_dir: str | Path, version: int, seed: int = 0, num_cpus: float = 1.0,
                 max_model_len: int | None = None):
    """A ``RolloutEngine`` as a Ray actor that serves many workers at once, tagged ``version``; on the
    ``learner`` node where the cluster has one (beside the weights it is given; simulator nodes come and go).
    ``max_model_len``: the context its episodes need (a dream family's ``max_model_len``), else the default."""
    import ray

    from reverie.ray_start import placed

    cls = ray.remote(RolloutEngine).options(num_cpus=num_cpus, max_concurrency=64, max_restarts=0,
                                            **placed("learner"))
    return cls.remote(str(model_dir), version, seed, max_model_len)


def wait_ready(engine, timeout: float = 300.0) -> int:
    """Block until the engine actor has started its vLLM engine; its version."""
    import ray

    return ray.get(engine.version.remote(), timeout=timeout)
