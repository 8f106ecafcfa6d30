"""Lessons from what users said: each piece of feedback in the experience
store that carries a rule or a correction, joined to the interaction it is
about, becomes a lesson for the learner.

- The student sees the conversation as the user asked it (the interaction's
  ``messages``, without the reply the model gave).
- The teacher state sees the same conversation with the rule and/or the
  correction in front, as one system message rendered by the templates
  (``learner/templates.json``: kinds ``rule`` and ``correction``).  A rule
  is also *demonstrated*: after the system message come up to
  ``demonstrations`` exchanges from other feedback that stated the same rule
  (the same text) with a correction: that feedback's conversation and the
  correction as the assistant's reply, oldest first.  With
  ``show_corrections`` (a world's ``show_corrections``), a correction
  without a rule is shown too: its own exchange (the conversation, the
  correction as the reply) comes after the system message, so the ask and
  every variation of it follow an answer that holds the fact; SmolLM2-135M-
  Instruct's teacher state gets 0.675 of the chat world's facts right in
  other words when told, 0.81 when also shown (bench/results/chatworld/).  A small instruct model
  ignores a rule it is only told (SmolLM2-135M-Instruct follows none of the
  chat world's eight rule kinds from the rule alone) and follows one it is
  shown (``bench/results/chatworld/``).
- The reference reply for the SFT baseline is the correction when there is
  one; for rule-only feedback, :func:`with_teacher_answers` fills it with the
  teacher state's own greedy answer ("teacher-generated"), so SFT and OPSD
  learn from the same feedback.

Feedback that teaches nothing (a rating or an approval alone), feedback about
a response that is not in the store, and feedback on a plain completion (its
prompt is raw text, not a chat the student can be shown) are skipped and
counted, never guessed at.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from learner.distill import Lesson
from learner.templates import render


@dataclass
class FeedbackLessons:
    lessons: list[Lesson]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    sources: list[dict] = field(default_factory=list)  # per lesson: {"id": feedback id, "kinds": [...], "text"}


def _context(fb: dict, templates: dict[str, str] | None) -> str | None:
    parts = [render(kind, fb[kind].strip(), templates) for kind in ("rule", "correction")
             if isinstance(fb.get(kind), str) and fb[kind].strip()]
    return "\n".join(parts) or None


def _text(fb: dict, kind: str) -> str:
    value = fb.get(kind)
    return value.strip() if isinstance(value, str) else ""


def _shown(feedback: list[dict], by_id: dict) -> dict[str, list[tuple[str, tuple[dict, ...]]]]:
    """rule text -> [(feedback id, the exchange that shows it: the conversation and the correction)], oldest
    first: the feedback that states a rule and corrects the reply it is about."""
    shown: dict[str, list[tuple[str, tuple[dict, ...]]]] = {}
    for fb in feedback:
        rule, correction = _text(fb, "rule"), _text(fb, "correction")
        messages = (by_id.get(fb.get("response_id")) or {}).get("messages")
        if rule and correction and messages:
            exchange = (*({"role": m["role"], "content": m["content"]} for m in messages),
                        {"role": "assistant", "content": correction})
            shown.setdefault(rule, []).append((fb["id"], exchange))
    return shown


def feedback_lessons(interactions: Iterable[dict], feedback: Iterable[dict],
                     templates: dict[str, str] | None = None, demonstrations: int = 2,
                     show_corrections: bool = False) -> FeedbackLessons:
    """One lesson per piece of feedback with a rule or a correction, in the
    order the feedback was given; a rule's teacher prompt shows up to
    ``demonstrations`` other corrected exchanges of the same rule, and with
    ``show_corrections`` a correction alone shows its own (module
    docstring)."""
    by_id = {row["id"]: row for row in interactions}
    out = FeedbackLessons([])
    feedback = sorted(feedback, key=lambda r: (r.get("created") or 0.0, r["id"]))
    shown = _shown(feedback, by_id) if demonstrations > 0 else {}
    for fb in feedback:
        context = _context(fb, templates)
        if context is None:
            out.skipped["no rule or correction"] += 1
            continue
        inter = by_id.get(fb.get("response_id"))
        if inter is None:
            out.skipped["unknown response"] += 1
            continue
        messages = inter.get("messages")
        if not messages:
            out.skipped["not a chat"] += 1
            continue
        student = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        others = [exchange for fid, exchange in shown.get(_text(fb, "rule"), []) if fid != fb["id"]]
        demos = [m for exchange in others[:demonstrations] for m in exchange]
        if show_corrections and not _text(fb, "rule") and _text(fb, "correction"):
            demos = [*student, {"role": "assistant", "content": _text(fb, "correction")}]
        teacher = ({"role": "system", "content": context}, *demos, *student)
        correction = fb.get("correction")
        reference = correction.strip() if isinstance(correction, str) and correction.strip() else None
        out.lessons.append(Lesson(student, teacher, reference))
        out.sources.append({"id": fb["id"], "kinds": [k for k in ("rule", "correction")
                                                        if isinstance(fb.get(k), str) and fb[k].strip()],
                            "rule": (fb.get("rule") or "").strip(), "correction": (fb.get("correction") or "").strip()})
    return out


def lessons_from_store(data_dir: str, templates: dict[str, str] | None = None) -> FeedbackLessons:
    """:func:`feedback_lessons` over the store's flushed ``interactions`` and
    ``feedback`` tables (a path or any ``pyarrow.fs`` URI; no Ray needed)."""
    from actors.store import read_table

    return feedback_lessons(read_table(data_dir, "interactions").to_pylist(),
                            read_table(data_dir, "feedback").to_pylist(), templates)


def with_teacher_answers(model, encoder, lessons: list[Lesson], max_new_tokens: int = 32) -> list[Lesson]:
    """The lessons, each without a reference given the teacher state's greedy
    answer to its teacher prompt (the SFT baseline's target)."""
    from learner.distill import sample

    missing = [i for i, l in enumerate(lessons) if l.reference is None]
    if not missing:
        return list(lessons)
    replies = sample(model, encoder, [lessons[i].teacher for i in missing], max_new_tokens, greedy=True)
    out = list(lessons)
    for i, ids in zip(missing, replies):
        text = encoder.tok.decode([t for t in ids if t != encoder.end_id], skip_special_tokens=True).strip()
        out[i] = Lesson(lessons[i].student, lessons[i].teacher, text)
    return out
