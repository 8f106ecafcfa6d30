"""The ``rule`` kinds: preferences a user states to a deployed assistant, each recognised in free text and checked
by code.

A :class:`RuleKind` has the phrasings a user might type (``phrasings``, concrete texts), a pattern that finds the
rule in any text (``find``: the privileged context, ``learner.templates.render("rule", text)`` lines joined by
newlines, or anything else) and gives its *spec* (``{"kind": name, **parameters}``, JSON-serialisable), and a
checker of a reply against that spec (``check(reply, **parameters)``), and the rewrite of a reply that keeps it
(``comply(reply, **parameters)``: what a user who corrects an answer to show the rule writes).  :func:`parse_rules`
gives every rule found in a text, in the order they appear, each once; :func:`rule_correction` rewrites a reply to
keep every rule a text states.

The kinds (``RULES``), all plausible for an assistant and all measurable:

- ``ends_with``: the reply ends with a given closing line (normalised: case and punctuation do not matter);
- ``starts_with``: the reply starts with a given opening;
- ``no_commas``: no comma anywhere;
- ``lowercase``: letters, none of them upper case;
- ``uppercase``: letters, none of them lower case;
- ``max_words``: at most ``n`` words (whitespace-separated; "under 40 words" means at most 39);
- ``no_lists``: no line that is a bullet (``-``, ``*``, ``•``, ``+``) or a numbered item (``1.``, ``2)``);
- ``address``: the reply calls the user by a given name (whole word, any case).

Which of them the teacher state of SmolLM2-135M-Instruct follows is measured by ``simulators/chatworld/measure.py``
(``bench/results/chatworld/``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from simulators.chatworld.text import contains, normalised

# A quoted phrase: "...", '...', “...” or ‘...’ (on one line).
_QUOTED = r"""(?:"(?P<d>[^"\n]+)"|'(?P<s>[^'\n]+)'|“(?P<cd>[^”\n]+)”|‘(?P<cs>[^’\n]+)’)"""
_NO_QUOTE = r"""[^"'“‘\n]"""
_NUMBERS = {"five": 5, "ten": 10, "fifteen": 15, "twenty": 20, "twenty-five": 25, "thirty": 30, "forty": 40,
            "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
            "one hundred": 100, "a hundred": 100}
_LIST_LINE = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+", re.MULTILINE)


def _quoted(m: re.Match) -> str:
    return next(g for g in (m["d"], m["s"], m["cd"], m["cs"]) if g is not None).strip()


def _ends_with(reply: str, text: str) -> bool:
    want, got = normalised(text), normalised(reply)
    if not want:  # a closing made of punctuation only: compare as typed
        return reply.rstrip().endswith(text.strip())
    return f" {got}".endswith(f" {want}")


def _starts_with(reply: str, text: str) -> bool:
    want, got = normalised(text), normalised(reply)
    if not want:
        return reply.lstrip().startswith(text.strip())
    return f"{got} ".startswith(f"{want} ")


def _letters(reply: str) -> list[str]:
    return [c for c in reply if c.isalpha()]


def _words(n: str) -> int:
    return int(n) if n.isdigit() else _NUMBERS[n.lower()]


def _max_words(m: re.Match) -> dict:
    n = _words(m["n"])
    strict = m["bound"].lower() in ("under", "fewer than", "less than")
    return {"n": n - 1 if strict else n}


@dataclass(frozen=True)
class RuleKind:
    name: str
    phrasings: tuple[str, ...]  # what a user types (each recognised by ``pattern``)
    pattern: re.Pattern[str]
    params: Callable[[re.Match], dict]  # the spec's parameters from a match
    check: Callable[..., bool]  # check(reply, **params)
    comply: Callable[..., str]  # comply(reply, **params): the reply rewritten to keep the rule

    def find(self, text: str) -> list[tuple[int, dict]]:
        """(position, spec) of every statement of this rule in ``text``."""
        return [(m.start(), {"kind": self.name, **self.params(m)}) for m in self.pattern.finditer(text)]


_I = re.IGNORECASE
RULES: dict[str, RuleKind] = {r.name: r for r in (
    RuleKind(
        "ends_with",
        ("Always end your answer with the line 'Hope this helps!'",
         'Finish every reply with "Hope this helps!"',
         "Please close each answer with the words 'Hope this helps!'"),
        re.compile(rf"\b(?:end|finish|close|conclude)(?:s|ing)?\b{_NO_QUOTE}{{0,60}}?\bwith\b{_NO_QUOTE}{{0,30}}?"
                   rf"{_QUOTED}", _I),
        lambda m: {"text": _quoted(m)},
        lambda reply, text: _ends_with(reply, text),
        lambda reply, text: f"{reply.rstrip()}\n\n{text}"),
    RuleKind(
        "starts_with",
        ("Always start your answer with 'Short answer:'",
         'Begin every reply with "Short answer:"',
         "Please open each answer with the words 'Short answer:'"),
        re.compile(rf"\b(?:start|begin|open)(?:s|ning)?\b{_NO_QUOTE}{{0,60}}?\bwith\b{_NO_QUOTE}{{0,30}}?{_QUOTED}",
                   _I),
        lambda m: {"text": _quoted(m)},
        lambda reply, text: _starts_with(reply, text),
        lambda reply, text: f"{text} {reply.lstrip()}"),
    RuleKind(
        "no_commas",
        ("Never use commas in your answers.",
         "Do not put any commas in your replies.",
         "Please write your answers without commas."),
        re.compile(r"\b(?:never|don'?t|do not|no|without|avoid)\b[^\n.]{0,40}?\bcommas?\b", _I),
        lambda m: {},
        lambda reply: "," not in reply and "，" not in reply,
        lambda reply: reply.replace(",", "").replace("，", "")),
    RuleKind(
        "lowercase",
        ("Write your answers entirely in lower case.",
         "Only use lowercase letters in your replies.",
         "Never use capital letters."),
        re.compile(r"\b(?:in lower ?case|only (?:use )?lower ?case|lower ?case letters only|"
                   r"(?:never|don'?t|do not) use (?:any )?capital letters|no capital letters)\b", _I),
        lambda m: {},
        lambda reply: bool(_letters(reply)) and not any(c.isupper() for c in reply),
        lambda reply: reply.lower()),
    RuleKind(
        "uppercase",
        ("Answer in capital letters only.",
         "Write every reply in ALL CAPS.",
         "Only use uppercase letters in your answers."),
        re.compile(r"\b(?:in capital letters|capital letters only|in all caps|in upper ?case|"
                   r"only (?:use )?upper ?case|upper ?case letters only)\b", _I),
        lambda m: {},
        lambda reply: bool(_letters(reply)) and not any(c.islower() for c in reply),
        lambda reply: reply.upper()),
    RuleKind(
        "max_words",
        ("Keep your answers under 40 words.",
         "Answer in no more than 40 words.",
         "Use at most 40 words in every reply."),
        re.compile(r"\b(?P<bound>under|at most|no more than|fewer than|less than|a maximum of)\s+"
                   rf"(?P<n>\d+|{'|'.join(sorted(_NUMBERS, key=len, reverse=True))})\s+words\b", _I),
        _max_words,
        lambda reply, n: len(reply.split()) <= n,
        lambda reply, n: " ".join(reply.split()[:n])),
    RuleKind(
        "no_lists",
        ("Don't use bullet points or numbered lists.",
         "Never format your answers as lists.",
         "Write in plain paragraphs, without any lists."),
        re.compile(r"\b(?:never|don'?t|do not|no|without|avoid)\b[^\n.]{0,40}?\b(?:bullet|bullets|lists?)\b", _I),
        lambda m: {},
        lambda reply: not _LIST_LINE.search(reply),
        lambda reply: _LIST_LINE.sub("", reply)),
    RuleKind(
        "address",
        ("Always call me Captain.",
         "Address me as Captain in every answer.",
         "Please refer to me as Captain."),
        re.compile(r"\b(?i:call me|address me as|refer to me as)\s+(?P<name>[A-Z][\w-]*(?: [A-Z][\w-]*)?)"),
        lambda m: {"name": m["name"]},
        lambda reply, name: contains(reply, name),
        lambda reply, name: f"{name}, {reply.lstrip()}"),
)}


def parse_rules(text: str) -> list[dict]:
    """Every rule stated in ``text`` as a spec, in the order they appear, each once."""
    found = sorted((pos, i, spec) for i, kind in enumerate(RULES.values()) for pos, spec in kind.find(text))
    specs: list[dict] = []
    for _, _, spec in found:
        if spec not in specs:
            specs.append(spec)
    return specs


def _kind(spec: dict) -> RuleKind:
    kind = RULES.get(spec.get("kind"))
    if kind is None:
        raise ValueError(f"unknown rule kind {spec.get('kind')!r}; kinds are: {', '.join(RULES)}")
    return kind


# The order rewrites are applied in, so that a later one does not break an earlier one: what adds words at the
# opening first, then a word limit (which keeps a reply's first words, and leaves room for a closing), then the
# closing, then what removes characters or changes case (the opening and closing checks ignore case and
# punctuation).
_REWRITE_ORDER = ("address", "no_lists", "starts_with", "max_words", "ends_with", "no_commas", "lowercase",
                  "uppercase")


def comply(spec: dict, reply: str) -> str:
    """``reply`` rewritten to keep the rule ``spec`` (a ValueError for a kind that is not a rule's)."""
    return _kind(spec).comply(reply, **{k: v for k, v in spec.items() if k != "kind"})


def rule_correction(text: str, reply: str) -> str | None:
    """``reply`` rewritten to keep every rule ``text`` states, or None when it states none:
    the correction a user gives with a rule to show it."""
    specs = parse_rules(text)
    if not specs:
        return None
    closing = sum(len(s["text"].split()) for s in specs if s["kind"] == "ends_with")  # words the closing adds
    for spec in sorted(specs, key=lambda spec: _REWRITE_ORDER.index(spec["kind"])):
        if spec["kind"] == "max_words":
            spec = {**spec, "n": max(spec["n"] - closing, 0)}
        reply = comply(spec, reply)
    return reply


def rule_passes(spec: dict, reply: str) -> bool:
    """Whether ``reply`` keeps the rule ``spec`` (a ValueError for a kind that is not a rule's)."""
    return _kind(spec).check(reply, **{k: v for k, v in spec.items() if k != "kind"})
