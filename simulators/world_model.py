"""The simulator a dream runs in, built from recorded experience.

Three kinds (``reverie dream --simulator``), all a
:class:`simulators.model_env.ModelSimulatedEnv` over the recorded transitions
(the nearest ones decide whether an episode ends); they differ in the model
that writes the next observation:

- ``retrieval``: the model as it is, shown the nearest recorded transitions
  as an example in a system message;
- ``trained``: a copy of the model fine-tuned on the recorded transitions to
  write the observation that followed each action (cross-entropy on the
  ``tool`` message alone), shown no example;
- ``both``: the fine-tuned copy, trained and played with the nearest *other*
  recorded transitions (never its own episode's) as the example.

:func:`train_simulator` fine-tunes and writes an HF model directory that a
rollout engine serves; :func:`simulator_label` names a simulator (kind,
number of transitions, a hash of its weights) for the provenance of every
trajectory played in it.
"""
from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reverie.config import SIMULATORS  # retrieval, trained, both: the kinds this module builds
from simulators.model_env import Transition, conditioning_messages, similarity

__all__ = ["SIMULATORS", "SimulatorTraining", "simulator_label", "train_simulator", "training_conversations"]


@dataclass(frozen=True)
class SimulatorTraining:
    """How a simulator is fine-tuned (measured on the tiny world: see the design notes)."""
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    k: int = 3  # neighbours shown as the example (``both``)
    eval_every: int = 50  # steps between measurements of the held-out episodes' loss
    seed: int = 0


def training_conversations(transitions: Sequence[Transition], with_examples: bool, k: int = 3) -> list[list[dict]]:
    """Every recorded transition that was answered (not an ending) as the conversation the simulator learns
    from: the context, the action, and the observation that followed, last (in the ``tool`` role); and, for
    a transition deeper in its episode, the same action and observation after the opening message alone.
    Recorded episodes show the paths the recording policy took (the tiny world's base model asks for help
    before every lookup); a policy that learns takes new ones (a lookup first), and a simulator that saw each
    answer only after one history wrote an empty observation there (measured: 8 of 8 first lookups).  With
    ``with_examples`` the ``k`` most similar transitions of *other* episodes come first, as they will at play."""
    out = []
    for t in transitions:
        if t.observation is None:
            continue
        transcript = [*t.context, {"role": "assistant", "content": t.action}]
        near: list[Transition] = []
        if with_examples:
            episode = t.id.split("#")[0]
            others = [o for o in transitions if o.id.split("#")[0] != episode]
            near = [o for _, o in sorted(((similarity(t.context, t.action, o), o) for o in others),
                                         key=lambda x: -x[0])[:k]]
        out.append([*conditioning_messages(transcript, near), {"role": "tool", "content": t.observation}])
        if len(t.context) > 1:  # the same answer after the opening alone: the policy will reach states by new paths
            opening = [*t.context[:1], {"role": "assistant", "content": t.action}]
            out.append([*conditioning_messages(opening, near), {"role": "tool", "content": t.observation}])
    return out


def train_simulator(model_dir: str | Path, transitions: Sequence[Transition], out_dir: str | Path, *,
                    with_examples: bool, cfg: SimulatorTraining = SimulatorTraining()) -> dict:
    """Fine-tune a copy of the model in ``model_dir`` to write each recorded observation; the copy is written
    to ``out_dir`` (an HF model directory, atomically; it must not exist).

    One recorded episode in five is held out (when there are five or more): every ``cfg.eval_every`` steps
    the loss on its observations is measured, and the weights with the lowest one are kept.  A simulator
    that memorises its episodes writes the few values it saw (measured on 16 episodes without this: one
    lookup's value in most simulated observations), and a policy that learns in it learns those.
    Returns the directory, the held-out loss before and at the kept step, and the training loss."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from learner.checkpoint import export_model
    from learner.tokenizer import chat_encoder, load_tokenizer

    episodes = sorted({t.id.split("#")[0] for t in transitions})
    held = set(episodes[::5]) if len(episodes) >= 5 else set()
    train = [t for t in transitions if t.id.split("#")[0] not in held]
    valid = [t for t in transitions if t.id.split("#")[0] in held]
    convs = training_conversations(train, with_examples, cfg.k)
    if not convs:
        raise ValueError("no recorded transition with an observation to train a simulator on")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    encoder = chat_encoder(load_tokenizer(Path(model_dir)))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)

    def rows_of(conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
        rows = []
        for conv in conversations:
            # what the simulator writes when it plays the environment: the observation's body and end
            prompt = encoder.prompt_ids(conv[:-1], conv[-1]["role"])
            target = encoder.reply_ids(conv[-1]["content"])
            rows.append((prompt + target, [0] * len(prompt) + [1] * len(target)))
        return rows

    rows = rows_of(convs)
    checks = rows_of(training_conversations(valid, with_examples, cfg.k)) if valid else rows

    def loss_of(batch: list[tuple[list[int], list[int]]]):
        width = max(len(ids) for ids, _ in batch)
        pad = encoder.tok.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
        mask = torch.tensor([m + [0] * (width - len(m)) for _, m in batch], dtype=torch.float32)
        attn = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="none").view(ids.shape[0], -1)
        target = mask[:, 1:]
        return (nll * target).sum() / target.sum()

    @torch.no_grad()
    def mean_loss(data) -> float:
        model.eval()
        total = sum(float(loss_of(data[i:i + 64])) * len(data[i:i + 64]) for i in range(0, len(data), 64))
        model.train()
        return total / len(data)

    before = best = mean_loss(checks)
    best_state, best_step = copy.deepcopy(model.state_dict()), 0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    for step in range(1, cfg.steps + 1):
        loss = loss_of([rows[rng.randrange(len(rows))] for _ in range(cfg.batch_size)])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            held_loss = mean_loss(checks)
            if held_loss < best:
                best, best_state, best_step = held_loss, copy.deepcopy(model.state_dict()), step
    model.load_state_dict(best_state)
    model.eval()
    path = export_model(model, Path(out_dir), tokenizer_dir=Path(model_dir))
    return {"path": str(path), "loss_before": before, "loss_after": best, "kept_step": best_step,
            "train_loss": mean_loss(rows), "conversations": len(rows), "held_out_episodes": len(held),
            "steps": cfg.steps, "seconds": time.perf_counter() - t0}


def simulator_label(kind: str, model_dir: str | Path, transitions: Sequence[Transition]) -> str:
    """``kind@<weights hash>/<n> transitions``: which simulator played a trajectory."""
    digest = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(f.read_bytes())
    return f"{kind}@{digest.hexdigest()[:12]}/{len(transitions)}"
