"""The fixed content of the tiny world: word pools, the encyclopedia the base
model memorises, and the new skills it must not know.

Everything here is derived from one constant seed, so the world is the same on
every machine and for every training seed.  Pretraining draws only from the
``pretrain`` pools; the new skills draw only from the ``heldout`` pool, so the
new facts, the new tool and the new rule never occur in pretraining data.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

WORLD_SEED = 20261126
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

ATTRIBUTES = ("pet", "home", "friend")
QUESTION_TEMPLATES = (
    "what is the {attr} of {ent} ?",
    "tell me the {attr} of {ent} .",
    "{ent} has which {attr} ?",
)
TASK_VERBS = ("add", "reverse", "sort", "copy")
FORMATS = {
    "brackets": "wrap the answer in brackets",
    "star": "put a star before the answer",
    "dot": "end the answer with a dot",
    "ok": "start the answer with ok",
}
TOOL_ATTRIBUTES = ("weight", "size", "age", "speed", "height", "score", "cost")
TOOL_TEMPLATES = (
    "what is the total {attr} of {a} and {b} ?",
    "add up the {attr} of {a} and {b} .",
    "{a} and {b} : total {attr} ?",
)

# The new skills (never in pretraining data).
NEW_RULE = ("copy", "brackets")  # "when asked to copy, wrap the answer in brackets"
# Pretraining asks about costs too, each time with a different tool that a
# demonstration or `call help` reveals; the new skill is knowing, unprompted,
# that costs are looked up with the world's one held-out tool.
NEW_TOOL_ATTRIBUTE = "cost"
NEW_TOOL_TEMPLATE = TOOL_TEMPLATES[0].replace("{attr}", NEW_TOOL_ATTRIBUTE)
N_ENCYCLOPEDIA = 200
N_NEW_FACTS = 64


def apply_format(fmt: str, answer: str) -> str:
    return {
        "brackets": f"[ {answer} ]",
        "star": f"* {answer}",
        "dot": f"{answer} .",
        "ok": f"ok {answer}",
    }[fmt]


def rule_text(verb: str, fmt: str) -> str:
    return f"when asked to {verb} , {FORMATS[fmt]} ."


def fact_sentence(attr: str, ent: str, val: str) -> str:
    return f"the {attr} of {ent} is {val} ."


@dataclass(frozen=True)
class Fact:
    attr: str
    ent: str
    val: str

    def sentence(self) -> str:
        return fact_sentence(self.attr, self.ent, self.val)


@dataclass(frozen=True)
class World:
    encyclopedia_words: tuple[str, ...]  # entities and values of memorised facts
    context_words: tuple[str, ...]  # entities and values for in-context lookups
    item_words: tuple[str, ...]  # items and tool names in pretraining tool tasks
    heldout_words: tuple[str, ...]  # only the new skills use these
    encyclopedia: tuple[Fact, ...]
    new_facts: tuple[Fact, ...]
    new_tool: str  # the name of the tool the ``tools`` skill needs


def _fixed_words() -> set[str]:
    """Every word the world's templates use; invented names must differ from them."""
    texts = [*QUESTION_TEMPLATES, *TOOL_TEMPLATES, NEW_TOOL_TEMPLATE, *FORMATS.values(),
             *ATTRIBUTES, *TOOL_ATTRIBUTES, *TASK_VERBS,
             "facts rule example user assistant system tool tools call help answer error unknown item bad action try is the"]
    return {w for t in texts for w in t.split()}


@lru_cache(maxsize=1)
def world() -> World:
    rng = random.Random(WORLD_SEED)
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words = sorted({a + b for a in syllables for b in syllables} - _fixed_words())
    rng.shuffle(words)
    enc_words, ctx_words, item_words, held = (
        tuple(words[:600]),
        tuple(words[600:2000]),
        tuple(words[2000:3400]),
        tuple(words[3400:]),
    )
    enc_ents = rng.sample(enc_words, N_ENCYCLOPEDIA)
    enc_vals = [w for w in enc_words if w not in set(enc_ents)]
    encyclopedia = tuple(
        Fact(rng.choice(ATTRIBUTES), e, rng.choice(enc_vals)) for e in enc_ents
    )
    picked = rng.sample(held, 2 * N_NEW_FACTS + 1)
    new_facts = tuple(
        Fact(rng.choice(ATTRIBUTES), picked[i], picked[N_NEW_FACTS + i])
        for i in range(N_NEW_FACTS)
    )
    new_tool = picked[-1]
    items = tuple(w for w in held if w not in set(picked))
    return World(enc_words, ctx_words, item_words, items, encyclopedia, new_facts, new_tool)
