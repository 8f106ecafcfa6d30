"""Teacher scorers as Ray actors, scaled out: each holds a vLLM engine with the
teacher's weights and scores its share of a batch through ``prompt_logprobs``.

:class:`ScorerPool` is a scorer (``learner/scoring.py``'s interface) over N
such actors: it splits a batch into contiguous shards, scores them in parallel
and stitches the results.  Only token ids and numpy arrays cross the actor
boundary; new teacher weights travel as a model directory on shared disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from learner.scoring import TeacherScores
from learner.tokenizer import ChatEncoder, load_tokenizer
from learner.vllm_backend import DEFAULT_TOPK, VllmScorer, scores_from_arrays, write_weights


@ray.remote(num_cpus=1)
class TeacherScorerActor:
    def __init__(self, model_dir: str, topk: int = DEFAULT_TOPK):
        self.scorer = VllmScorer(Path(model_dir), ChatEncoder(load_tokenizer(model_dir)), topk)

    def score_arrays(self, prompts, completions) -> dict[str, np.ndarray]:
        return self.scorer.score_arrays(prompts, completions)

    def load(self, model_dir: str) -> None:
        self.scorer.load(Path(model_dir))

    def ready(self) -> bool:
        return True


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
        ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)

    def score(self, prompts, completions) -> TeacherScores:
        n = min(len(self.actors), len(prompts))
        bounds = [round(i * len(prompts) / n) for i in range(n + 1)]
        refs = [a.score_arrays.remote(prompts[lo:hi], completions[lo:hi])
                for a, lo, hi in zip(self.actors, bounds, bounds[1:])]
        return scores_from_arrays(_stitch(ray.get(refs, timeout=self.timeout_s)))

    def sync(self, teacher_model) -> None:
        """New teacher weights (lagged or EMA teachers) into every scorer."""
        write_weights(teacher_model, self.dir)
        ray.get([a.load.remote(str(self.dir)) for a in self.actors], timeout=self.timeout_s)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
