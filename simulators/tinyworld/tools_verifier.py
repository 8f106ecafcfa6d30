"""The ``tools`` family's executable verifier, from the episode's own observations.

A dream in a simulated environment must not be judged by the simulator's own
claim of success.  This verifier needs neither the simulator nor the task's
hidden values: it reads the finished transcript and accepts it only when

1. the question asks for the total of two items (one of the world's tool
   question templates), and the episode's first message is that question;
2. the episode called the tool the family needs on each of the two items, and
   each call was answered with a number (what the environment, real or
   simulated, said the item's value is);
3. the last message is the agent's ``answer``, equal to the sum of those two
   observed values, within ``max_turns`` actions, with nothing after it.

So a right answer that was never looked up (a guess) is refused, and so is an
answer that disagrees with what the episode observed.  Whether the observations
themselves are true is a question for the real environment: the agreement check
replays dreamed successes there.
"""
from __future__ import annotations

import re
from functools import lru_cache

from simulators.tinyworld import world as W
from simulators.tinyworld.text import undigits


@lru_cache(maxsize=1)
def _question_patterns() -> tuple[re.Pattern, ...]:
    out = []
    for template in W.TOOL_TEMPLATES:
        text = re.escape(template).replace(r"\{attr\}", r"(?P<attr>\S+)")
        text = text.replace(r"\{a\}", r"(?P<a>\S+)").replace(r"\{b\}", r"(?P<b>\S+)")
        out.append(re.compile(text.replace(r"\ ", " ") + r"\Z"))
    return tuple(out)


def items_asked(question: str) -> tuple[str, str] | None:
    """The two items a tool question asks about, or None when it is not one."""
    q = " ".join(question.split())
    for pattern in _question_patterns():
        m = pattern.match(q)
        if m and m["a"] != m["b"]:
            return m["a"], m["b"]
    return None


def verify_observed(messages: list[dict], tool: str, max_turns: int) -> bool:
    """True when the episode answered the sum of the values it observed for both asked items with ``tool``."""
    if not messages or messages[0].get("role") != "user":
        return False
    items = items_asked(messages[0].get("content", ""))
    if items is None:
        return False
    rest = messages[1:]
    actions = [i for i, m in enumerate(rest) if m.get("role") == "assistant"]
    if not actions or len(actions) > max_turns or actions[-1] != len(rest) - 1:
        return False  # no action, too many, or something after the last one
    observed: dict[str, int] = {}
    for i in actions[:-1]:
        words = " ".join(rest[i].get("content", "").split()).split(" ")
        reply = rest[i + 1] if i + 1 < len(rest) else None
        if reply is None or reply.get("role") != "tool":
            return False  # an action the environment never answered
        if len(words) == 3 and words[0] == "call" and words[1] == tool and words[2] in items:
            value = undigits(" ".join(reply.get("content", "").split()).split(" "))
            if value is not None:
                observed[words[2]] = value
    final = " ".join(rest[actions[-1]].get("content", "").split()).split(" ")
    if final[0] != "answer" or set(items) - set(observed):
        return False
    return undigits(final[1:]) == observed[items[0]] + observed[items[1]]


def verify_tools_family(messages: list[dict], max_turns: int) -> bool:
    """The verifier registered for the ``tools`` family: the world's held-out tool is the one it needs."""
    return verify_observed(messages, W.world().new_tool, max_turns)
