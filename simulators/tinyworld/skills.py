"""The tiny world's skills: item generators and exact verifiers.

Base skills (the retention suite; the base model masters them):
  add, reverse, sort      algorithmic tasks on spaced digits and letters
  lookup                  answer from a fact given in the prompt (context use)
  recall                  answer from the memorised encyclopedia (knowledge)
                          (fact answers are the whole fact: "the pet of mopi is sisu .")
  format                  follow a formatting rule given in the prompt
  tooluse                 use a tool pretraining never named: ask for help (or follow an example),
                          call it for both items, add the two values (never about costs)
New skills (absent from pretraining; named exactly so everywhere):
  facts                   64 new facts about unseen entities
  rule                    a user's preference: when asked to copy, wrap the answer in brackets
  tools                   "what is the total cost of A and B ?": call the world's one
                          unseen tool twice and add the results, in an environment

Every new-skill item has two views: ``teacher`` carries the privileged context
(the fact, the rule, a successful trajectory) in a system message; ``student``
is the same task without it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from learner.templates import teacher_prompt
from simulators.tinyworld import world as W
from simulators.tinyworld.text import digits, normalize, spaced
from simulators.tinyworld.tools_env import ToolsTask, make_task, render_demo, solve

BASE_SKILLS = ("add", "reverse", "sort", "lookup", "recall", "format", "tooluse")
NEW_SKILLS = ("facts", "rule", "tools")
VIEWS = ("student", "teacher")


@dataclass(frozen=True)
class Item:
    skill: str
    prompt: tuple[dict, ...]
    answer: str | None = None  # expected assistant reply (single-turn skills)
    task: ToolsTask | None = None  # the episode (multi-step skills)

    @property
    def asked(self) -> str:
        """The question: the last user message (a tool episode's state ends in the tool's reply)."""
        return next(m["content"] for m in reversed(self.prompt) if m["role"] == "user")

    def conversation(self) -> list[dict]:
        """The prompt followed by the correct reply, for training."""
        assert self.answer is not None
        return [*self.prompt, {"role": "assistant", "content": self.answer}]

    def verify(self, reply: str) -> bool:
        assert self.answer is not None
        return normalize(reply) == self.answer


def _system(text: str) -> dict:
    return {"role": "system", "content": text}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(W.LETTERS) for _ in range(rng.randint(3, 6)))


def _task(rng: random.Random, verb: str) -> tuple[str, str]:
    """A plain task of the given verb: (user text, default answer)."""
    if verb == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"add : {digits(a)} + {digits(b)}", digits(a + b)
    s = _letters(rng)
    out = {"reverse": s[::-1], "sort": "".join(sorted(s)), "copy": s}[verb]
    return f"{verb} : {spaced(s)}", spaced(out)


def _question(rng: random.Random, fact: W.Fact) -> str:
    return rng.choice(W.QUESTION_TEMPLATES).format(attr=fact.attr, ent=fact.ent)


def _facts_context(fact: W.Fact) -> str:
    # One fact per context: with two to four facts, content-based retrieval
    # stayed at chance through 10,000 pretraining steps (docs/design-notes.md).
    return "facts : " + fact.sentence()


def _random_facts(rng: random.Random, k: int) -> list[W.Fact]:
    words = rng.sample(W.world().context_words, 2 * k)
    return [W.Fact(rng.choice(W.ATTRIBUTES), words[i], words[k + i]) for i in range(k)]


def continue_item(rng: random.Random) -> Item:
    """Find a word in a list and continue the list from it (pretraining only).

    The words share a few first syllables, so continuing needs the last two
    tokens, not one: the in-context retrieval that ``lookup`` and every teacher
    view rely on.  Without this family the base model never learnt it."""
    pool = W.world().context_words
    firsts = rng.sample(sorted({x[:2] for x in pool}), 3)
    candidates = [x for x in pool if x[:2] in firsts]
    words = rng.sample(candidates, 10)
    i = rng.randrange(0, 8)
    return Item("continue", (_user("continue : " + " ".join(words) + " | " + words[i]),), " ".join(words[i : i + 3]))


def base_item(skill: str, rng: random.Random) -> Item:
    w = W.world()
    if skill == "continue":
        return continue_item(rng)
    if skill in ("add", "reverse", "sort", "copy"):
        q, a = _task(rng, skill)
        return Item(skill, (_user(q),), a)
    if skill == "lookup":
        fact = _random_facts(rng, 1)[0]
        return Item(skill, (_system(_facts_context(fact)), _user(_question(rng, fact))), fact.sentence())
    if skill == "recall":
        fact = rng.choice(w.encyclopedia)
        return Item(skill, (_user(_question(rng, fact)),), fact.sentence())
    if skill == "tooluse":
        return tooluse_item(rng)
    if skill == "format":
        verb = rng.choice(W.TASK_VERBS)
        fmt = rng.choice(list(W.FORMATS))
        asked = verb if rng.random() < 0.6 else rng.choice([v for v in W.TASK_VERBS if v != verb])
        q, a = _task(rng, asked)
        if asked == verb:
            a = W.apply_format(fmt, a)
        return Item(skill, (_system("rule : " + W.rule_text(verb, fmt)), _user(q)), a)
    raise ValueError(f"unknown base skill {skill!r}")


def new_item(skill: str, view: str, rng: random.Random) -> Item:
    w = W.world()
    teacher = view == "teacher"
    if skill == "facts":
        fact = rng.choice(w.new_facts)
        prompt = (_user(_question(rng, fact)),)
        if teacher:  # the privileged context comes from the templates (learner/templates.json)
            prompt = teacher_prompt(prompt, "fact", fact.sentence())
        return Item(skill, prompt, fact.sentence())
    if skill == "rule":
        verb, fmt = W.NEW_RULE
        q, a = _task(rng, verb)
        prompt = (_user(q),)
        if teacher:
            prompt = teacher_prompt(prompt, "rule", W.rule_text(verb, fmt))
        return Item(skill, prompt, W.apply_format(fmt, a))
    if skill == "tools":
        task = new_tools_task(rng)
        prompt = [_user(task.question)]
        if teacher:
            demo = solve(new_tools_task(rng), ask_help=rng.random() < 0.5)
            prompt.insert(0, _system(render_demo(demo)))
        return Item(skill, tuple(prompt), task=task)
    raise ValueError(f"unknown new skill {skill!r}")


def new_pair(skill: str, rng: random.Random) -> tuple[Item, Item]:
    """The student and the teacher view of one and the same new-skill task."""
    state = rng.getstate()
    student = new_item(skill, "student", rng)
    rng.setstate(state)
    teacher = new_item(skill, "teacher", rng)
    return student, teacher


def new_tools_task(rng: random.Random) -> ToolsTask:
    w = W.world()
    return make_task(rng, W.NEW_TOOL_TEMPLATE, w.new_tool, w.heldout_words)


def pretrain_tools_conversation(rng: random.Random, attributes: tuple[str, ...] = W.TOOL_ATTRIBUTES) -> list[dict]:
    """A pretraining tool episode: an unknown tool, learnt from a demonstration
    in the system message, or found by asking for help when there is none."""
    w = W.world()
    template = rng.choice(W.TOOL_TEMPLATES).replace("{attr}", rng.choice(attributes))
    tool = rng.choice(w.item_words)
    task = make_task(rng, template, tool, w.item_words)
    if rng.random() < 0.35:
        return solve(task, ask_help=True)
    demo = solve(make_task(rng, template, tool, w.item_words), ask_help=rng.random() < 0.5)
    return [_system(render_demo(demo)), *solve(task, ask_help=False)]


# Costs are what the new ``tools`` skill changes (they are looked up with the held-out tool, unprompted); any other
# attribute is still looked up with whatever tool ``call help`` or a demonstration names.
OLD_TOOL_ATTRIBUTES = tuple(a for a in W.TOOL_ATTRIBUTES if a != W.NEW_TOOL_ATTRIBUTE)


def tooluse_item(rng: random.Random) -> Item:
    """The base skill of using an unknown tool as pretraining taught it: one state of a pretraining tool episode
    (help asked, or a demonstration in the system message; never about costs) and the expert's next action there:
    ``call help``, a call of the tool, or the sum of the two values the episode looked up."""
    conv = pretrain_tools_conversation(rng, OLD_TOOL_ATTRIBUTES)
    k = rng.choice([i for i, m in enumerate(conv) if m["role"] == "assistant"])
    return Item("tooluse", tuple(conv[:k]), conv[k]["content"])
