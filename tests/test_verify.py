"""The mixed-version check can fail: a completion computed by one version's weights and stamped with another
version is found, and one stamped with its own version is not (``serve/verify.py``, used by the swap and
load benchmarks)."""
from __future__ import annotations

import torch

from serve.verify import mismatched


def test_a_completion_stamped_with_another_versions_weights_is_found_and_a_true_stamp_is_not(shipped_model,
                                                                                              tmp_path):
    from transformers import AutoModelForCausalLM

    from reverie.versions import VersionRegistry
    from serve.weights import pack_buckets

    registry = VersionRegistry(tmp_path / "versions")
    base = registry.ensure_base(shipped_model).version
    model = AutoModelForCausalLM.from_pretrained(shipped_model, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    pack_buckets(noisy, tmp_path / "noisy")
    other = registry.register(tmp_path / "noisy", source="test").version

    prompt, ids = [3, 40, 41, 42, 1, 5], [44, 45, 46, 1]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits
    lps = torch.log_softmax(logits[0, len(prompt) - 1:-1], -1).gather(1, torch.tensor(ids)[:, None])[:, 0].tolist()
    true_stamp, false_stamp = (base, prompt, ids, lps), (other, prompt, ids, lps)
    assert mismatched([true_stamp, false_stamp], registry, shipped_model) == [false_stamp]
    assert mismatched([(base, prompt, ids, lps[:-1])], registry, shipped_model)  # a token short: not its answer
