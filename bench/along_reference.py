"""Does OPSD teach a real model a name it never samples?  ``python -m bench.along_reference``

The chat world's four facts that ``reverie bench cycle --model smollm2-135m-instruct --facts 4`` corrects (seed 0:
two founders/designers' names, another designer's name and a founding year), each taught as the loop teaches it:
the lesson of the corrected ask, its teacher state shown the correction (``learner.experience.feedback_lessons``
with ``show_corrections``), and three times in four a variation of it into the fact's first other phrasing (the
second is what the gate would hold out), with no reference unless ``--vary-reference`` (the loop gives a fact's
variation its correction: ``Controller._batches``).  Thirty OPSD updates of four lessons (lr 5e-5, teacher
temperature 1.0, no replay) in torch on the float32 model, once per ``--along`` share of the corrected lessons
scored along the correction rather than a student sample (``learner.distill.opsd_loss``); after each, the
student's greedy answers (24 tokens) to every phrasing are judged by the world's check (the answer's whole words):
the taught phrasing, the loop's variation, the gate's, and the unseen one no variation asks (``Fact.unseen``).

Writes ``bench/results/chatworld/DATE-facts-along-reference.json`` (or ``--out``) and prints it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def run(along: float, steps: int, model_dir: str, seed: int = 0, vary_reference: bool = False) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learner.config import LearnConfig
    from learner.distill import sample
    from learner.loop import frozen_teacher, learn
    from learner.tokenizer import chat_encoder
    from simulators.chatworld.measure import fact_lessons
    from simulators.chatworld.plugin import FACTS_FAMILY, check, passes
    from simulators.chatworld.teaching import fact_teachings

    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = chat_encoder(tokenizer)
    taught = fact_teachings(seed, 4)
    lessons = fact_lessons(taught)
    varied = [l.asking(({"role": "user", "content": t.heldout[0]},), keeps_answer=vary_reference)
              for l, t in zip(lessons, taught)]
    rng = random.Random(seed)

    def batches():
        while True:
            yield [varied[i] if rng.random() < 0.75 else lessons[i] for i in (rng.randrange(4) for _ in range(4))]

    start = time.perf_counter()
    learn(student.train(), frozen_teacher(student, tokenizer), encoder, batches(),
          LearnConfig(steps=steps, batch_size=4, lr=5e-5, retain=0.0, teacher_temperature=1.0,
                      along_reference=along, seed=seed), progress=False)
    seconds = time.perf_counter() - start
    asked = [(kind, q, t) for t in taught for kind, q in
             (("taught", t.ask), ("loop_variation", t.heldout[0]), ("gate_heldout", t.heldout[1]),
              *(("unseen", u) for u in t.unseen))]
    replies = sample(student.eval(), encoder, [({"role": "user", "content": q},) for _, q, _ in asked],
                     max_new_tokens=24, greedy=True)
    scores: dict[str, list[bool]] = {}
    answers = []
    for (kind, q, t), ids in zip(asked, replies):
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        spec = check(FACTS_FAMILY, ({"role": "user", "content": q},), "")  # whole words of the fact's answer
        scores.setdefault(kind, []).append(passes(spec, text))
        answers.append({"kind": kind, "question": q, "answer": spec["text"], "reply": text})
    return {"along_reference": along, "vary_reference": vary_reference, "steps": steps,
            "learn_seconds": round(seconds, 1), "accuracy": {k: round(sum(v) / len(v), 4) for k, v in scores.items()},
            "replies": answers}


def main(argv: Sequence[str] | None = None) -> int:
    from reverie.models import resolve
    from reverie.results import write_result

    ap = argparse.ArgumentParser(prog="python -m bench.along_reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=MODEL, help=f"a catalogue name or a local HF directory (default {MODEL})")
    ap.add_argument("--along", default="0,0.5,1", help="shares scored along the correction, comma-separated "
                                                      "(default 0,0.5,1)")
    ap.add_argument("--steps", type=int, default=30, help="OPSD updates per run (default 30)")
    ap.add_argument("--vary-reference", action="store_true",
                    help="a variation keeps the correction as its reference, as the loop's do since "
                         "2026-12-07 (default: a variation has none, so only the corrected ask is scored along it)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/chatworld/DATE-facts-along-"
                                                "reference.json)")
    args = ap.parse_args(argv)
    try:
        shares = [float(x) for x in args.along.split(",")]
    except ValueError:
        ap.error(f"--along: expected numbers separated by commas, got {args.along!r}")
    if not shares or any(not 0.0 <= s <= 1.0 for s in shares) or args.steps < 1:
        ap.error("--along: every share must be in [0, 1], and --steps at least 1")
    model_dir = str(resolve(args.model))
    runs = [run(s, args.steps, model_dir, vary_reference=args.vary_reference) for s in shares]
    report = {"what": "OPSD on four corrected chat-world facts: a name learnt, by the share of corrected lessons "
                      "scored along the correction", "command": "python -m bench.along_reference "
                      + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": args.model, "model_dir": model_dir, "lr": 5e-5, "batch_size": 4, "variations": 0.75,
              "runs": runs}
    out = Path(args.out or REPO / "bench" / "results" / "chatworld" / f"{date.today()}-facts-along-reference.json")
    print(json.dumps(write_result(report, out), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
