"""`reverie learn` on the tiny world: teach one new skill to the shipped base
model by OPSD or SFT and measure the gain and the forgetting."""
from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path

import torch

from learner.distill import Lesson
from learner.loop import LearnConfig, learn
from learner.tokenizer import ChatEncoder, load_tokenizer
from simulators.tinyworld.evaluate import forced_accuracy, eval_items
from simulators.tinyworld.skills import BASE_SKILLS, new_pair

LEARNABLE = ("facts", "rule")  # single-turn new skills; `tools` is rehearsed by dreams


def lessons(skill: str, batch_size: int, seed: int) -> Iterator[list[Lesson]]:
    """Endless batches of (student view, teacher view, reference) of ``skill``,
    drawn from a training seed that evaluation never uses."""
    rng = random.Random(f"tinyworld-learn/{skill}/{seed}")
    while True:
        batch = []
        for _ in range(batch_size):
            s, t = new_pair(skill, rng)
            batch.append(Lesson(s.prompt, t.prompt, s.answer))
        yield batch


def measure(model, encoder: ChatEncoder, skill: str) -> dict:
    retention = {s: forced_accuracy(model, encoder, eval_items(s, None)) for s in BASE_SKILLS}
    return {
        "new_skill_acc": forced_accuracy(model, encoder, eval_items(skill, "student")),
        "retention": retention,
        "retention_avg": sum(retention.values()) / len(retention),
    }


def run(model_dir: Path, cfg: LearnConfig, skill: str, progress: bool = True) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    encoder = ChatEncoder(load_tokenizer(model_dir))
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = measure(student.eval(), encoder, skill)
    teacher = copy.deepcopy(student) if cfg.method == "opsd" else None  # frozen at the base version
    stats = learn(student, teacher, encoder, lessons(skill, cfg.batch_size, cfg.seed), cfg, progress)
    after = measure(student, encoder, skill)
    return {
        "method": cfg.method,
        "loss": cfg.loss if cfg.method == "opsd" else "ce",
        "skill": skill,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "new_skill_acc_before": before["new_skill_acc"],
        **after,
        "forgetting": before["retention_avg"] - after["retention_avg"],
        "seconds": stats["seconds"],
        "tokens_per_second": stats["tokens_per_second"],
    }
