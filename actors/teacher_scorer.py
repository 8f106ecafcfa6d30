"""Teacher scorers as Ray actors, scaled out: each holds a vLLM engine with the
teacher's weights and scores its share of a batch through ``prompt_logprobs``.

:class:`ScorerPool` is a scorer (``learner/scoring.py``'s interface) over N
such actors: it splits a batch into contiguous shards, scores them in parallel
and stitches the results.  Only token ids and numpy arrays cross the actor
boundary; new teacher weights travel through the weight-sync interface
(``reverie/weight_sync.py``: shared memory when every scorer is on the learner's
node, Ray's object store otherwise), and each scorer reports the checksum of
what its engine loaded, which the pool checks against the weights it sent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from learner.scoring import TeacherScores
from learner.tokenizer import chat_encoder, load_tokenizer
from learner.vllm_backend import DEFAULT_TOPK, VllmScorer, install, scores_from_arrays, write_weights
from reverie.weight_sync import AUTO, TransportError, WeightReceiver, WeightSender, node_id


@ray.remote(num_cpus=1)
class TeacherScorerActor:
    def __init__(self, model_dir: str, topk: int = DEFAULT_TOPK):
        import os

        self.scorer = VllmScorer(Path(model_dir), chat_encoder(load_tokenizer(model_dir)), topk)
        self.receiver = WeightReceiver(name=f"scorer-{os.getpid()}")

    def node(self) -> str:
        return node_id()

    def score_arrays(self, prompts, completions) -> dict[str, np.ndarray]:
        return self.scorer.score_arrays(prompts, completions)

    def load(self, message) -> dict:
        """Install the teacher weights ``message`` describes; the engine's report (with its checksum)."""
        report = install(self.scorer.llm, message, self.receiver)
        self.receiver.release({message.version})
        return report


def _stitch(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    T = max(p["sampled"].shape[1] for p in parts)
    out = {}
    for key, fill in (("sampled", 0.0), ("topk_ids", 0), ("topk_logprobs", -1e4)):
        padded = []
        for p in parts:
            a = p[key]
            pad = [(0, 0), (0, T - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            padded.append(np.pad(a, pad, constant_values=fill))
        out[key] = np.concatenate(padded)
    return out


class ScorerPool:
    """A teacher scorer over ``n`` Ray actors that share the work of each batch."""

    def __init__(self, teacher_model, tokenizer_dir: Path, workdir: Path, n: int = 1, topk: int = DEFAULT_TOPK,
                 timeout_s: float = 600.0):
        if n < 1:
            raise ValueError(f"a scorer pool needs at least one scorer, got {n}")
        self.dir = write_weights(teacher_model, Path(workdir) / "teacher", tokenizer_dir)
        self.timeout_s = timeout_s
        from reverie.ray_start import placed

        where = placed("learner")  # beside the learner, whose directory they load the teacher from
        self.actors = [TeacherScorerActor.options(**where).remote(str(self.dir), topk) for _ in range(n)]
        self.nodes = ray.get([a.node.remote() for a in self.actors], timeout=timeout_s)
        self.sender, self.syncs = WeightSender(AUTO), 0

    def score(self, prompts, completions) -> TeacherScores:
        n = min(len(self.actors), len(prompts))
        bounds = [round(i * len(prompts) / n) for i in range(n + 1)]
        refs = [a.score_arrays.remote(prompts[lo:hi], completions[lo:hi])
                for a, lo, hi in zip(self.actors, bounds, bounds[1:])]
        return scores_from_arrays(_stitch(ray.get(refs, timeout=self.timeout_s)))

    def sync(self, teacher_model) -> None:
        """New teacher weights (lagged or EMA teachers) into every scorer."""
        write_weights(teacher_model, self.dir)
        self.syncs += 1
        message = self.sender.send(self.syncs, sorted(str(p) for p in self.dir.glob("*.safetensors")),
                                   self.sender.resolve(self.nodes))
        reports = ray.get([a.load.remote(message) for a in self.actors], timeout=self.timeout_s)
        failed = [r for r in reports if not r["ok"]] + WeightSender.check(message, reports)
        if failed:
            raise TransportError(f"a teacher scorer did not load {message.describe()}: {failed[0]['error']}")

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
