"""Whether served answers were computed by the weights of the version stamped on them.

A response carries its version (``x-reverie-version``, ``system_fingerprint``); that stamp is only a claim.
``mismatched`` recomputes each completion's token log-probs in torch with the registry's files for the
stamped version and returns the completions that do not fit, within ``tolerance``: an answer computed,
even for one token, by other weights than its stamp says (a mixed-version response).  vLLM reports the raw
log-probs of the sampled tokens whatever the temperature, so sampled answers can be checked too.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TOLERANCE = 1e-3


def mismatched(completions, registry, model_dir: str | Path, tolerance: float = TOLERANCE) -> list[tuple]:
    """``completions``: ``(version, prompt_ids, completion_ids, logprobs)`` tuples.  One model is in memory at a
    time (grouped by version), so a long run of a large model fits."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    by_version = defaultdict(list)
    for c in completions:
        by_version[c[0]].append(c)
    bad = []
    for version, group in sorted(by_version.items()):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        state = {}
        for f in registry.get(version).weights:
            state.update(load_file(f))
        model.load_state_dict(state, strict=False)
        for c in group:
            _, prompt_ids, ids, lps = c
            x = torch.tensor([list(prompt_ids) + list(ids)])
            with torch.no_grad():
                logits = model(x).logits.float()
            lp = torch.log_softmax(logits[0, len(prompt_ids) - 1:-1], dim=-1)
            ref = lp.gather(1, torch.tensor(list(ids))[:, None])[:, 0].tolist()
            if len(ref) != len(lps) or max(abs(a - b) for a, b in zip(ref, lps)) > tolerance:
                bad.append(c)
        del model
    return bad
