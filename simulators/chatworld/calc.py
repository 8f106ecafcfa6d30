"""The chat world's ``calc`` family: word problems whose numbers a small model gets wrong in its head, solved with a
calculator the agent's client runs (issue 39's environment; the dreams and the loop build on it).

The protocol is text, stated in the system prompt (:data:`PROTOCOL`), so any chat model and any OpenAI client can
play it: the model writes ``CALC: <expression>`` on a line, the client evaluates it and answers
``RESULT: <value>`` (as a user turn), and the model ends with ``ANSWER: <number>``.  The first ``CALC:`` or
``ANSWER:`` in a reply is its action (a small model often writes words around it); a reply with neither gets an
error observation that says what to write.  Expressions are arithmetic only (numbers, ``+ - * /``, brackets),
evaluated exactly (``fractions``), never with ``eval``.

Problems come from templates (:data:`TEMPLATES`), each with numbers drawn so that every step is a whole number
(a quotient divides evenly); ``problems(split, seed, n)`` draws ``train`` problems (what users and dreams ask)
and ``heldout`` ones (what success is measured on) from separate streams, and no held-out question is ever a
train one.

The verifier (:func:`verify`) judges a finished transcript from its own messages: the first user message is the
task's question, the episode called the calculator at least once and was answered, every observation in it is the
one the client would have given (a simulated environment's results are recomputed, not believed), its last message is the
agent's ``ANSWER`` equal to the true value (the task's private ``spec``), within ``max_turns`` actions and nothing
after it.  So a right answer never computed with the tool is refused, and a simulator that claims success
without the true value is not believed.
"""
from __future__ import annotations

import ast
import operator
import random
import re
from dataclasses import dataclass
from fractions import Fraction

ENV_NAME = "chatworld-calc"
FAMILY = "calc"
MAX_TURNS = 4  # actions an episode may take: a problem of three operations in one expression, or a few steps
PROTOCOL = ("You have a calculator. To use it, reply with one line:\n"
            "CALC: <arithmetic expression>\n"
            "and you will be told the result as RESULT: <value>. Use it for every calculation. When you know the "
            "answer, reply with one line:\n"
            "ANSWER: <number>")
_ACTION = re.compile(r"\b(CALC|ANSWER)\s*:\s*(.*)", re.IGNORECASE)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ------------------------------------------------------------------ problems
@dataclass(frozen=True)
class Template:
    text: str  # the question, with {a}, {b}, {c}
    draw: object  # draw(rng) -> dict of the numbers
    expression: str  # what solves it, with the same names: what the calculator is given


def _shop(rng):
    a = rng.randint(1200, 9800)
    return {"a": a, "b": rng.randint(300, a - 100), "c": rng.randint(300, 4000)}


def _rate(rng):
    return {"a": rng.randint(120, 980), "b": rng.randint(12, 96)}


def _trip(rng):
    return {"a": rng.randint(120, 890), "b": rng.randint(11, 48), "c": rng.randint(100, 999)}


def _share(rng):
    b, each = rng.randint(12, 64), rng.randint(105, 980)
    return {"a": b * each, "b": b}


def _boxes(rng):
    return {"a": rng.randint(14, 78), "b": rng.randint(24, 96), "c": rng.randint(150, 900)}


TEMPLATES: tuple[Template, ...] = (
    Template("A warehouse holds {a} boxes. It ships {b} boxes and then receives {c} more. How many boxes does it "
             "hold now?", _shop, "{a} - {b} + {c}"),
    Template("A factory makes {a} bolts every day. How many bolts does it make in {b} days?", _rate, "{a} * {b}"),
    Template("A train travels {a} km every day for {b} days, and then {c} km more. How many km does it travel in "
             "all?", _trip, "{a} * {b} + {c}"),
    Template("{a} dollars are shared equally among {b} people. How many dollars does each person get?", _share,
             "{a} / {b}"),
    Template("A shop orders {a} crates of {b} bottles each, and {c} single bottles. How many bottles does it "
             "order?", _boxes, "{a} * {b} + {c}"),
)
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    expression: str  # what the calculator is given to solve it in one call


def _draw(rng: random.Random) -> Problem:
    t = TEMPLATES[rng.randrange(len(TEMPLATES))]
    numbers = t.draw(rng)
    expression = t.expression.format(**numbers)
    value = calculate(expression)
    assert value.denominator == 1, expression  # every template's numbers divide evenly
    return Problem(t.text.format(**numbers), int(value), expression)


def solve(problem: Problem) -> list[dict]:
    """A successful transcript of ``problem``: the expression calculated, then the answer (the expert's)."""
    env = CalcEnvironment()
    env.reset(to_task(problem))
    env.step(f"CALC: {problem.expression}")
    env.step(f"ANSWER: {problem.answer}")
    return env.transcript


def problems(split: str, seed: int, n: int) -> list[Problem]:
    """``n`` distinct problems of ``split`` (``train`` or ``heldout``), the same for the same seed; a held-out
    problem is never one ``train`` could draw (the two streams' numbers are kept apart by parity of the first)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are: {', '.join(SPLITS)}")
    rng = random.Random(f"chatworld-calc/{split}/{seed}")
    want = 0 if split == "train" else 1
    out, seen = [], set()
    while len(out) < n:
        p = _draw(rng)
        first = int(_NUMBER.search(p.question)[0].replace(",", ""))
        if first % 2 == want and p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


# ------------------------------------------------------------------ the calculator
class CalcError(ValueError):
    """An expression the calculator does not take."""


def calculate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression (numbers, ``+ - * /``, brackets; ``,`` in numbers ignored)."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expression.strip().rstrip(".=").replace("×", "*").replace("÷", "/"))
    if not text or len(text) > 200:
        raise CalcError("write an expression of numbers and + - * / ( )")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise CalcError(f"cannot read {expression.strip()!r}: use numbers and + - * / ( )") from None

    def value(node) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise CalcError("division by zero")
            return _OPS[type(node.op)](left, right)
        raise CalcError(f"cannot read {expression.strip()!r}: use numbers and + - * / ( )")

    return value(tree)


def shown(x: Fraction) -> str:
    """A calculator's result as it is told: a whole number, else a decimal to 6 places."""
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.6f}".rstrip("0").rstrip(".")


def action(reply: str) -> tuple[str, str] | None:
    """``("calc", expression)`` or ``("answer", text)``: the first action in ``reply``; None when it has none."""
    m = _ACTION.search(reply)
    if m is None:
        return None
    rest = m[2].strip().splitlines()[0].strip() if m[2].strip() else ""
    return m[1].lower(), rest


def answered(text: str) -> Fraction | None:
    """The number an ``ANSWER:`` gives (its first number; ``,`` separators and a trailing unit ignored)."""
    m = _NUMBER.search(text)
    return Fraction(m[0].replace(",", "")) if m else None


# ------------------------------------------------------------------ the environment
def to_task(problem: Problem, family: str = FAMILY):
    from simulators.env import Task

    return Task(ENV_NAME, problem.question, {"answer": problem.answer}, family)


def opening(question: str) -> list[dict]:
    """What the agent sees first: the protocol as the system message, then the question."""
    return [{"role": "system", "content": PROTOCOL}, {"role": "user", "content": question}]


def observe(reply: str) -> tuple[str | None, tuple[str, str] | None]:
    """The client's observation of an agent's reply (None after an answer), and the action it read."""
    act = action(reply)
    if act is None:
        return "ERROR: reply with CALC: <expression> to calculate, or ANSWER: <number>", None
    kind, text = act
    if kind == "answer":
        return None, act
    try:
        return f"RESULT: {shown(calculate(text))}", act
    except CalcError as e:
        return f"ERROR: {e}", act


def verify(task, messages: list[dict], max_turns: int = MAX_TURNS) -> bool:
    """Whether a finished transcript solves ``task`` (the module docstring), from its own messages."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users or " ".join(str(messages[users[0]].get("content", "")).split()) != " ".join(task.prompt.split()):
        return False
    rest = messages[users[0] + 1:]
    acts = [i for i, m in enumerate(rest) if m.get("role") == "assistant"]
    if not acts or len(acts) > max_turns or acts[-1] != len(rest) - 1:
        return False  # no action, too many, or something after the last one
    for i in acts[:-1]:  # every observation is the calculator's own (a simulator's is checked, not believed)
        told = rest[i + 1] if i + 1 < len(rest) else {}
        if told.get("role") != "user" or str(told.get("content", "")).strip() != observe(str(rest[i]["content"]))[0]:
            return False
    calls = [i for i in acts[:-1] if (a := action(str(rest[i].get("content", "")))) and a[0] == "calc"
             and str(rest[i + 1].get("content", "")).startswith("RESULT:")]
    last = action(str(rest[-1].get("content", "")))
    if not calls or last is None or last[0] != "answer":
        return False
    got = answered(last[1])
    return got is not None and got == Fraction(task.spec["answer"])


class CalcEnvironment:
    """The calc family as a dream environment (``simulators.env.Environment``, registered as ``chatworld-calc``):
    the real calculator, the reward the verifier's verdict."""

    name = ENV_NAME
    simulated = False

    def __init__(self, max_turns: int = MAX_TURNS):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.max_turns = max_turns
        self._task = None
        self._messages: list[dict] = []

    def reset(self, task) -> list[dict]:
        self._task, self._messages = task, opening(task.prompt)
        return list(self._messages)

    def step(self, reply: str):
        from simulators.env import Step

        if self._task is None:
            raise RuntimeError("step() before reset()")
        self._messages.append({"role": "assistant", "content": reply})
        observation, act = observe(reply)
        turns = sum(m["role"] == "assistant" for m in self._messages)
        if observation is None or turns >= self.max_turns:
            ok = observation is None and verify(self._task, self._messages, self.max_turns)
            return Step(None, 1.0 if ok else 0.0, True, {"action": act[0] if act else None})
        self._messages.append({"role": "user", "content": observation})
        return Step(observation, 0.0, False, {"action": act[0] if act else None})

    @property
    def transcript(self) -> list[dict]:
        return list(self._messages)

    def verify(self, task, messages: list[dict]) -> bool:
        return verify(task, messages, self.max_turns)


__all__ = ["ENV_NAME", "FAMILY", "MAX_TURNS", "PROTOCOL", "CalcEnvironment", "CalcError", "Problem", "action",
           "answered", "calculate", "observe", "opening", "problems", "solve", "to_task", "verify"]
