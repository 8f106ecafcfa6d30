"""Does the teacher state follow what the chat world teaches?  Greedy replies of a chat model, with and without
the privileged context, checked by the world's own checks.

For every rule kind (``rules.RULES``) the *teacher state* answers held-out general prompts with the rule in a
system message (``learner.templates.render("rule", text)``, the kind's phrasings in turn) and the *student* (no
system message: what the loop's student sees) answers the same prompts; each reply is judged by the rule's
checker.  For facts, every fact's held-out phrasings (those ``teaching.fact_teachings`` does not teach) are asked
of the student and of the teacher state with the fact's correction in front (``render("correction", ...)``),
judged by whole-word containment of the answer; ``teacher_shown`` is the teacher state the loop gives a chat-world
correction (``ChatWorld.show_corrections``): the correction in the system message and the corrected exchange (the
taught phrasing answered with the correction) after it.  The kinds the teacher state follows are the ones the loop can
teach; the others are reported too.

The *demonstrated* teacher state (``teacher_demonstrated``) is the one the loop builds when a user states a rule
and corrects the reply to keep it (``rules.rule_correction``), on each of three taught asks: the context
``learner.experience.feedback_lessons`` gives such a lesson (the rule and the correction in the system message,
the other corrected exchanges after it) in front of the same held-out prompts.

    python -m simulators.chatworld.measure [--model smollm2-135m-instruct] [--prompts 40] [--max-tokens 96]
                                           [--out bench/results/chatworld/DATE-teacher-state.json]

One vLLM engine (greedy; on CPU about 70 s to start); prints the JSON it writes (stamped by
``reverie.results.write_result``).
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

from simulators.chatworld.facts import FACTS, fact_question
from simulators.chatworld.plugin import check, passes
from simulators.chatworld.prompts import SOURCE, load_pools
from simulators.chatworld.rules import RULES
from simulators.chatworld.teaching import fact_teachings

REPO = Path(__file__).resolve().parents[2]
SEED = 0
DEMONSTRATED = 3  # taught asks a scripted user states a rule on and corrects, per rule kind
DEMO_CONTEXT = 512  # tokens the demonstrated context may take in the engine


def _generate(llm, encoder, chats: Sequence[Sequence[dict]], max_tokens: int) -> list[tuple[str, bool]]:
    """Greedy (reply, cut off at max_tokens) for each chat."""
    from reverie.engine import greedy

    return greedy(llm, [encoder.prompt_ids(list(c)) for c in chats], max_tokens)


def _share(xs: Sequence[bool]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def _demonstrated_context(rule: str, asks: Sequence[str], replies: Sequence[str],
                          corrected: bool = False) -> tuple[dict, ...]:
    """The privileged context the loop's learner gives a lesson of ``rule`` when a user stated it on each of
    ``asks`` and corrected each of ``replies`` to keep it (``corrected``: ``replies`` are the corrections
    already): learner.experience.feedback_lessons' own."""
    from learner.experience import feedback_lessons
    from simulators.chatworld.rules import rule_correction

    interactions = [{"id": f"r{i}", "messages": [{"role": "user", "content": a}]} for i, a in enumerate(asks)]
    feedback = [{"id": f"f{i}", "created": float(i), "response_id": f"r{i}", "rule": rule,
                 "correction": reply if corrected else rule_correction(rule, reply)} for i, reply in enumerate(replies)]
    return feedback_lessons(interactions, feedback).lessons[0].context


def fact_lessons(teachings: Sequence) -> list:
    """The loop's lessons of the chat world's fact ``teachings`` (``teaching.fact_teachings``): each ask corrected
    through feedback, made by learner.experience.feedback_lessons as the loop makes them (``ChatWorld.
    show_corrections``: the correction in the system message and its exchange after it)."""
    from learner.experience import feedback_lessons

    interactions = [{"id": f"r{i}", "messages": [{"role": "user", "content": t.ask}]} for i, t in enumerate(teachings)]
    feedback = [{"id": f"f{i}", "created": float(i), "response_id": f"r{i}", "correction": t.text}
                for i, t in enumerate(teachings)]
    return feedback_lessons(interactions, feedback, show_corrections=True).lessons


def measure(model: str, n_prompts: int = 40, max_tokens: int = 96, progress=print) -> dict:
    from learner.templates import render
    from learner.tokenizer import chat_encoder, load_tokenizer
    from reverie.engine import MAX_MODEL_LEN, offline_llm
    from reverie.models import resolve

    begin = time.perf_counter()
    model_dir = resolve(model)
    encoder = chat_encoder(load_tokenizer(model_dir))
    prompts = random.Random(SEED).sample(load_pools(progress=progress).heldout, n_prompts)

    student_chats = [({"role": "user", "content": p},) for p in prompts]
    teacher_chats = {}  # rule kind -> [(phrasing, chat)]
    for name, kind in RULES.items():
        teacher_chats[name] = []
        for i, p in enumerate(prompts):
            text = kind.phrasings[i % len(kind.phrasings)]
            teacher_chats[name].append((text, ({"role": "system", "content": render("rule", text)},
                                               {"role": "user", "content": p})))
    taught_facts = fact_teachings(SEED, len(FACTS))
    fact_asks = [(t.text, q) for t in taught_facts for q in t.heldout]  # (correction, held-out question)
    fact_student = [({"role": "user", "content": q},) for _, q in fact_asks]
    fact_teacher = [({"role": "system", "content": render("correction", c)}, {"role": "user", "content": q})
                    for c, q in fact_asks]
    fact_shown = [l.asking(({"role": "user", "content": q},)).teacher
                  for l, t in zip(fact_lessons(taught_facts), taught_facts) for q in t.heldout]

    # The demonstrated teacher state: a scripted user asks DEMONSTRATED taught prompts per rule kind, states the
    # rule (its first phrasing) and corrects each reply to keep it (rules.rule_correction); the loop's own
    # learner.experience.feedback_lessons turns that feedback into lessons, and the context of one of them (the
    # rule, and the other asks' corrected exchanges) goes in front of every held-out prompt.
    taught_asks = random.Random(SEED).sample(load_pools(progress=progress).taught, DEMONSTRATED)
    taught_chats = [({"role": "user", "content": p},) for p in taught_asks]

    every = [*student_chats, *(c for chats in teacher_chats.values() for _, c in chats), *fact_student,
             *fact_teacher, *fact_shown]
    length = max(MAX_MODEL_LEN, DEMO_CONTEXT + max_tokens,
                 max(len(encoder.prompt_ids(list(c))) for c in every) + max_tokens)
    progress(f"starting a vLLM engine on {model_dir} (context {length} tokens); {len(every)} greedy replies, "
             f"then {len(RULES) * n_prompts} with demonstrations")
    start = time.perf_counter()
    llm = offline_llm(model_dir, max_model_len=length)
    started = time.perf_counter() - start
    try:
        gen_start = time.perf_counter()
        out = iter(_generate(llm, encoder, [*every, *taught_chats], max_tokens))
        student = [next(out) for _ in student_chats]
        teacher = {name: [next(out) for _ in chats] for name, chats in teacher_chats.items()}
        fs = [next(out) for _ in fact_student]
        ft = [next(out) for _ in fact_teacher]
        fsh = [next(out) for _ in fact_shown]
        taught_replies = [next(out)[0] for _ in taught_chats]
        contexts = {name: _demonstrated_context(kind.phrasings[0], taught_asks, taught_replies)
                    for name, kind in RULES.items()}
        shown = [(*contexts[name], *chat) for name in RULES for chat in student_chats]
        fits = [len(encoder.prompt_ids(list(c))) + max_tokens <= length for c in shown]
        replies = iter(_generate(llm, encoder, [c for c, ok in zip(shown, fits) if ok], max_tokens))
        demonstrated = [next(replies) if ok else ("", True) for ok in fits]
        generated = time.perf_counter() - gen_start
    finally:
        llm.llm_engine.engine_core.shutdown()

    rules = {}
    demonstrated = iter(demonstrated)
    for name, chats in teacher_chats.items():
        shown_replies = [next(demonstrated) for _ in student_chats]
        spec = check("chat", student_chats[0], contexts[name][0]["content"])
        d_ok = [passes(spec, reply) for reply, _ in shown_replies]
        t_ok, s_ok, by_phrasing, examples = [], [], {}, []
        for (text, chat), (t_reply, _), (s_reply, _) in zip(chats, teacher[name], student):
            spec = check("chat", chat[1:], chat[0]["content"])
            assert spec is not None and spec.get("kind") == name, (name, text, spec)
            t_ok.append(passes(spec, t_reply))
            s_ok.append(passes(spec, s_reply))
            by_phrasing.setdefault(text, []).append(t_ok[-1])
            if len(examples) < 3:
                examples.append({"prompt": chat[1]["content"], "rule": text, "teacher": t_reply, "passed": t_ok[-1]})
        rules[name] = {"teacher": _share(t_ok), "student": _share(s_ok), "n": len(t_ok),
                       "teacher_by_phrasing": {k: _share(v) for k, v in by_phrasing.items()},
                       "teacher_cut_off": _share([cut for _, cut in teacher[name]]), "examples": examples,
                       "teacher_demonstrated": _share(d_ok),
                       "teacher_demonstrated_cut_off": _share([cut for _, cut in shown_replies]),
                       "demonstrated_context": list(contexts[name]),
                       "demonstrated_examples": [{"prompt": c[0]["content"], "teacher": r, "passed": ok}
                                                 for c, (r, _), ok in list(zip(student_chats, shown_replies,
                                                                               d_ok))[:3]]}
    f_t, f_s, f_sh, f_examples, by_attribute, shown_by_attribute = [], [], [], [], {}, {}
    for (correction, q), (t_reply, _), (s_reply, _), (sh_reply, _) in zip(fact_asks, ft, fs, fsh):
        spec = check("facts", ({"role": "user", "content": q},), render("correction", correction))
        f_t.append(passes(spec, t_reply))
        f_s.append(passes(spec, s_reply))
        f_sh.append(passes(spec, sh_reply))
        by_attribute.setdefault(fact_question(q)[0].attribute, []).append(f_t[-1])
        shown_by_attribute.setdefault(fact_question(q)[0].attribute, []).append(f_sh[-1])
        if len(f_examples) < 3:
            f_examples.append({"question": q, "correction": correction, "teacher": t_reply, "student": s_reply,
                               "teacher_shown": sh_reply})
    return {
        "what": "teacher-state compliance with each chat-world lesson on held-out asks, beside the student's",
        "command": "python -m simulators.chatworld.measure " + " ".join(sys.argv[1:]),
        "model": model, "model_dir": str(model_dir), "seed": SEED, "prompts": n_prompts, "max_tokens": max_tokens,
        "greedy": True, "engine_len": length, "start_seconds": round(started, 1),
        "generate_seconds": round(generated, 1), "seconds": round(time.perf_counter() - begin, 1),
        "student_cut_off": _share([cut for _, cut in student]),
        "rules": rules,
        "facts": {"teacher": _share(f_t), "student": _share(f_s), "n": len(f_t), "facts": len(FACTS),
                  "teacher_cut_off": _share([cut for _, cut in ft]),
                  "teacher_by_attribute": {k: _share(v) for k, v in by_attribute.items()},
                  "teacher_shown": _share(f_sh), "teacher_shown_cut_off": _share([cut for _, cut in fsh]),
                  "teacher_shown_by_attribute": {k: _share(v) for k, v in shown_by_attribute.items()},
                  "examples": f_examples},
        "source": SOURCE,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from reverie.results import write_result

    ap = argparse.ArgumentParser(prog="python -m simulators.chatworld.measure", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a catalogue name or a local HF directory")
    ap.add_argument("--prompts", type=int, default=40, help="held-out general prompts per rule kind (default 40)")
    ap.add_argument("--max-tokens", type=int, default=96, help="new tokens per reply (default 96)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/chatworld/DATE-teacher-state.json)")
    args = ap.parse_args(argv)
    out = Path(args.out or REPO / "bench" / "results" / "chatworld" / f"{date.today()}-teacher-state.json")
    report = measure(args.model, args.prompts, args.max_tokens, progress=lambda s: print(s, file=sys.stderr))
    print(json.dumps(write_result(report, out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
