"""Figures a model's publisher states for the retention benchmarks, with the setup they were measured in.

SmolLM2-135M-Instruct's model card (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct) says "All
evaluations are zero-shot unless stated otherwise, and we use lighteval to run them"; the official recipe
(huggingface/smollm ``text/evaluation/smollm2/``) runs lighteval with ``--use_chat_template`` on vLLM in bf16, with
``loglikelihood_acc_norm_nospace`` (acc_norm by characters, as lm-eval's), on HellaSwag's and PIQA's validation
splits and ARC's test splits; "ARC (Average)" is the mean of ARC-Easy and ARC-Challenge.  The card states no
ARC-Easy figure of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

ARC_AVERAGE = "arc_average"  # a row of its own: the mean of arc_easy and arc_challenge


@dataclass(frozen=True)
class Published:
    """A published figure (a fraction: acc_norm for a multiple-choice benchmark, the prompt/instruction average
    for IFEval), and how it was measured."""
    value: float
    what: str
    setup: str
    source: str


SMOLLM2_CARD = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"
LIGHTEVAL = "the model card: lighteval, 0-shot, chat template, acc_norm by characters, bf16, whole splits"

PUBLISHED: dict[str, dict[str, Published]] = {
    "smollm2-135m-instruct": {
        "hellaswag": Published(0.409, "HellaSwag, validation (10,042)", LIGHTEVAL, SMOLLM2_CARD),
        "piqa": Published(0.663, "PIQA, validation (1,838)", LIGHTEVAL, SMOLLM2_CARD),
        "ifeval": Published(0.299, "IFEval (Average prompt/inst): the mean of prompt-level and instruction-level "
                                   "strict accuracy, 541 prompts", "the model card: lighteval, chat template, bf16",
                            SMOLLM2_CARD),
        ARC_AVERAGE: Published(0.373, "ARC (Average): the mean of ARC-Easy and ARC-Challenge, test (2,376 and "
                                      "1,172)", LIGHTEVAL, SMOLLM2_CARD),
    },
}


def published(model: str, name: str) -> Published | None:
    """What the card of the catalogue model ``model`` publishes for the benchmark ``name`` (None: nothing)."""
    return PUBLISHED.get(model, {}).get(name)
