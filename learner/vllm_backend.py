"""The learner's sampler and teacher scorer on vLLM engines.

:class:`VllmSampler` samples the student's completions at temperature 1 from
an engine that holds the student's current weights: after every update the
learner writes them into the engine's model directory and the engine reloads
them in place through the weight-sync interface (``reverie/weight_sync.py``:
only paths cross ``collective_rpc``, never a tensor; the engine reports the
checksum of what it loaded, checked against the files) and drops its prefix
cache, so no sample ever comes from stale weights or stale KV blocks.

:class:`VllmScorer` scores (teacher prompt + student completion) with
``prompt_logprobs``: per completion token, the teacher's log-prob of the
sampled token and its top-k, at temperature 1 (raw log-probs).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from learner.scoring import TeacherScores
from learner.tokenizer import Encoder

Prompt = tuple[dict, ...]
DEFAULT_TOPK = 20


def write_weights(model, directory: Path, tokenizer_dir: Path | None = None) -> Path:
    """Make ``directory`` an HF model directory holding ``model``'s current
    weights; the weights file is replaced atomically (write, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "config.json").is_file():
        model.config.save_pretrained(directory)
        if tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                    shutil.copy2(f, directory / f.name)
    tmp = directory / ".model.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    return directory


def install(llm, message, receiver=None) -> dict:
    """Receive the weights a ``reverie.weight_sync`` message describes, reload the engine from them in place
    and drop its prefix cache; the engine's report: ``{"ok", "checksum"}`` or ``{"ok": False, "error"}``."""
    from reverie.weight_sync import TransportError, WeightReceiver

    try:
        paths = (receiver or WeightReceiver()).receive(message).paths
    except TransportError as e:
        return {"ok": False, "error": str(e)}
    results = llm.collective_rpc("reverie_load_weights", args=(list(paths),))
    bad = [r for r in results if not r.get("ok")]
    checksums = {r.get("checksum") for r in results}
    if bad or len(checksums) != 1:
        return {"ok": False, "error": bad[0].get("error") if bad else f"{len(checksums)} checksums from its workers"}
    llm.reset_prefix_cache()
    return {"ok": True, "checksum": checksums.pop()}


def reload(llm, directory: Path, version: int = 0) -> str:
    """Install the weights in ``directory`` into an engine beside this process (shared memory); the checksum the
    engine reported, which must be the files' (``TransportError`` otherwise)."""
    from reverie.weight_sync import SHM, TransportError, WeightSender

    message = WeightSender(SHM).send(version, sorted(str(p) for p in Path(directory).glob("*.safetensors")))
    report = install(llm, message)
    wrong = [report] if not report["ok"] else WeightSender.check(message, [report])
    if wrong:
        raise TransportError(f"the engine did not load {message.describe()}: {wrong[0]['error']}")
    return message.checksum


def _token_prompts(encoder: Encoder, prompts: list[Prompt], completions=None):
    from vllm.inputs import TokensPrompt

    heads = [encoder.encode(list(p), add_generation_prompt=True)[0] for p in prompts]
    if completions is None:
        return heads, [TokensPrompt(prompt_token_ids=h) for h in heads]
    return heads, [TokensPrompt(prompt_token_ids=h + list(c)) for h, c in zip(heads, completions)]


class VllmSampler:
    """On-policy samples from a vLLM engine that follows the student's weights."""

    def __init__(self, student, encoder: Encoder, workdir: Path, tokenizer_dir: Path,
                 max_new_tokens: int = 32):
        from reverie.engine import offline_llm

        self.encoder, self.max_new_tokens = encoder, max_new_tokens
        self.dir = write_weights(student, Path(workdir) / "student", tokenizer_dir)
        self.llm = offline_llm(self.dir)
        self.syncs = 0

    def sync(self, student) -> None:
        write_weights(student, self.dir)
        self.syncs += 1
        reload(self.llm, self.dir, version=self.syncs)

    def sample(self, prompts: list[Prompt], seed: int = 0) -> list[list[int]]:
        from vllm import SamplingParams

        _, inputs = _token_prompts(self.encoder, prompts)
        params = [SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=self.max_new_tokens,
                                 seed=seed * 4096 + i, stop_token_ids=[self.encoder.end_id])
                  for i in range(len(inputs))]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        completions = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            if o.outputs[0].finish_reason == "stop" and (not ids or ids[-1] != self.encoder.end_id):
                ids.append(self.encoder.end_id)
            completions.append(ids)
        return completions

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


class VllmScorer:
    """Teacher log-probs (sampled token and top-k) through ``prompt_logprobs``."""

    def __init__(self, model_dir: Path | None, encoder: Encoder, topk: int = DEFAULT_TOPK, llm=None):
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        self.encoder, self.topk = encoder, topk
        if llm is None:
            from reverie.engine import offline_llm

            llm = offline_llm(model_dir, max_logprobs=max(topk, DEFAULT_TOPK))
        self.llm = llm

    def load(self, directory: Path) -> None:
        reload(self.llm, directory)

    def score_arrays(self, prompts: list[Prompt], completions: list[list[int]]) -> dict[str, np.ndarray]:
        """``sampled [B,T]``, ``topk_ids [B,T,K]``, ``topk_logprobs [B,T,K]`` (numpy, padded)."""
        from vllm import SamplingParams

        heads, inputs = _token_prompts(self.encoder, prompts, completions)
        params = SamplingParams(temperature=1.0, max_tokens=1, prompt_logprobs=self.topk, detokenize=False)
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        B, T, K = len(prompts), max(len(c) for c in completions), self.topk
        sampled = np.zeros((B, T), np.float32)
        ids = np.zeros((B, T, K), np.int64)
        lps = np.full((B, T, K), -1e4, np.float32)
        for i, (o, h, c) in enumerate(zip(outs, heads, completions)):
            for j, tok in enumerate(c):
                entry = o.prompt_logprobs[len(h) + j]
                sampled[i, j] = entry[tok].logprob
                ranked = sorted(((lp.rank, t, lp.logprob) for t, lp in entry.items() if lp.rank is not None
                                 and lp.rank <= K))[:K]
                for r, (_, t, lp) in enumerate(ranked):
                    ids[i, j, r], lps[i, j, r] = t, lp
        return {"sampled": sampled, "topk_ids": ids, "topk_logprobs": lps}

    def score(self, prompts: list[Prompt], completions: list[list[int]]) -> TeacherScores:
        return scores_from_arrays(self.score_arrays(prompts, completions))

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


def scores_from_arrays(a: dict[str, np.ndarray]) -> TeacherScores:
    return TeacherScores(sampled=torch.from_numpy(a["sampled"]), topk_ids=torch.from_numpy(a["topk_ids"]),
                         topk_logprobs=torch.from_numpy(a["topk_logprobs"]))
