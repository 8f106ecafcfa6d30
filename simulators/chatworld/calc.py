"""The chat world's ``calc`` family: word problems whose numbers a small model gets wrong in its head, solved with a
calculator the agent's client runs (issue 39's environment; the dreams and the loop build on it).

The protocol is text, stated in the system prompt (:data:`PROTOCOL`), so any chat model and any OpenAI client can
play it: the model writes ``CALC: <expression>`` on a line, the client evaluates it and answers
``RESULT: <value>`` (as a user turn), and the model ends with ``ANSWER: <number>``; two worked examples follow
the protocol as earlier turns of the conversation (:data:`EXAMPLES`: a small model follows turns, not a
description).  The first ``CALC:`` or
``ANSWER:`` in a reply is its action (a small model often writes words around it); a reply with neither gets an
error observation that says what to write.  Expressions are arithmetic only (numbers, ``+ - * /``, brackets),
evaluated exactly (``fractions``), never with ``eval``.

Problems come from templates (:data:`TEMPLATES`), each with numbers drawn so that every step is a whole number
(a quotient divides evenly); ``problems(split, seed, n)`` draws ``train`` problems (what users and dreams ask)
and ``heldout`` ones (what success is measured on) from separate streams, and no held-out question is ever a
train one.

The verifier (:func:`verify`) judges a finished transcript from its own messages: it opens as the environment
opens this task (the protocol, the worked examples, the task's question), the episode called the calculator at
least once and was answered, every observation in it is the one the client would have given (a simulated
environment's results are recomputed, not believed), and its last message is the agent's ``ANSWER`` equal to the
true value (the task's private ``spec``), within ``max_turns`` actions and nothing after it.  So a right answer
never computed with the tool is refused, and a simulator that claims success without the true value is not
believed.
"""
from __future__ import annotations

import ast
import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

ENV_NAME = "chatworld-calc"
FAMILY = "calc"
MAX_TURNS = 4  # actions an episode may take: a problem of three operations in one expression, or a few steps
# Two worked examples, shown as earlier turns of the conversation (neither is a template's question): measured on
# SmolLM2-135M-Instruct (``reverie bench calc-offer``), 40 held-out problems, greedy (and solved in any of 4 plays
# at temperature 1), the protocol alone solved 0.0 (0.0) and called the calculator in 5 % of episodes; with one
# example written into the system message 0.0 (0.0), calculator 53 %; one example as turns 0.0 (0.275), calculator
# 100 %; these two as turns 0.275 (0.45), 100 %
# (bench/results/eval/2026-12-07-smollm2-135m-instruct-calc-offer.json).
EXAMPLES = (("A baker makes 235 rolls every day. How many rolls does he make in 14 days?", "235 * 14", 3290),
            ("A school has 1460 pens. It gives away 385 pens and then buys 720 more. How many pens does it have "
             "now?", "1460 - 385 + 720", 1795))
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
    template: int = 0  # which of TEMPLATES it was drawn from (a dream's variation keeps it)


def _draw(rng: random.Random, template: int | None = None) -> Problem:
    index = rng.randrange(len(TEMPLATES)) if template is None else template
    numbers = TEMPLATES[index].draw(rng)
    problem = _problem(index, numbers)
    assert problem is not None, numbers  # every template's numbers divide evenly
    return problem


def _problem(index: int, numbers: dict) -> Problem | None:
    """Template ``index`` with ``numbers``; None where its answer is not a whole number."""
    t = TEMPLATES[index]
    expression = t.expression.format(**numbers)
    value = calculate(expression)
    return Problem(t.text.format(**numbers), int(value), expression, index) if value.denominator == 1 else None


def _split(problem: Problem) -> str:
    """``train`` or ``heldout``: the parity of the question's first number."""
    return SPLITS[int(_NUMBER.search(problem.question)[0].replace(",", "")) % 2]


def _asked(index: int) -> re.Pattern:
    pattern = re.escape(" ".join(TEMPLATES[index].text.split()))
    for name in "abc":
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>\\d[\\d,]*)")
    return re.compile(pattern, re.IGNORECASE)


def parse(question: str) -> Problem | None:
    """The problem a question asks, where it is one of :data:`TEMPLATES` with its numbers (a recorded user's ask,
    or a transcript's): its true answer computed here, never read from anywhere else."""
    text = " ".join(question.split())
    for index in range(len(TEMPLATES)):
        m = _asked(index).fullmatch(text)
        if m:
            return _problem(index, {k: int(v.replace(",", "")) for k, v in m.groupdict().items()})
    return None


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
    out, seen = [], set()
    while len(out) < n:
        p = _draw(rng)
        if _split(p) == split and p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def train_problem(rng: random.Random, template: int | None = None) -> Problem:
    """One problem of the ``train`` stream's kind (of ``template`` where given), drawn from ``rng``."""
    while True:
        p = _draw(rng, template)
        if _split(p) == "train":
            return p


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

    return Task(ENV_NAME, problem.question, {"answer": problem.answer, "template": problem.template}, family)


def opening(question: str) -> list[dict]:
    """What the agent sees first: the protocol as the system message, the worked examples as earlier turns
    (:data:`EXAMPLES`), then the question."""
    shown = []
    for q, expression, value in EXAMPLES:
        shown += [{"role": "user", "content": q}, {"role": "assistant", "content": f"CALC: {expression}"},
                  {"role": "user", "content": f"RESULT: {value}"}, {"role": "assistant", "content": f"ANSWER: {value}"}]
    return [{"role": "system", "content": PROTOCOL}, *shown, {"role": "user", "content": question}]


OPENING = len(opening(""))  # messages the environment opens with: the protocol, the examples' turns, the question


def question_of(messages: Sequence[dict]) -> str | None:
    """The question an episode asks: the first user message after the opening's examples."""
    users = [m for m in messages[OPENING - 1:] if m.get("role") == "user"]
    return str(users[0].get("content", "")) if users else None


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
    def same(a: dict, b: dict) -> bool:
        return a.get("role") == b.get("role") and " ".join(str(a.get("content", "")).split()) == \
            " ".join(str(b.get("content", "")).split())

    start = opening(task.prompt)
    if len(messages) < len(start) or not all(same(m, s) for m, s in zip(messages, start)):
        return False  # not the environment's opening of this task
    rest = messages[len(start):]
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
        turns = sum(m["role"] == "assistant" for m in self._messages[OPENING:])  # the agent's own
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


def verify_family(messages: list[dict], max_turns: int = MAX_TURNS) -> bool:
    """The family's verifier (``simulators.env.family_verifier``): a transcript judged from its own messages
    alone, the true answer computed from the question it opens with; False where that is no calc question."""
    question = question_of(messages)
    problem = parse(question) if question is not None else None
    return problem is not None and verify(to_task(problem), messages, max_turns)


def play(problems: Sequence[Problem], generate: Callable[[list[list[dict]]], list[str]],
         max_turns: int = MAX_TURNS) -> dict:
    """Every problem played as an episode of the environment, all in lock step, each turn's replies from
    ``generate`` (conversations -> replies): the share solved (the verifier's), of episodes that called the
    calculator, and of replies that held an action at all; and the transcripts."""
    envs = [CalcEnvironment(max_turns) for _ in problems]
    for env, p in zip(envs, problems):
        env.reset(to_task(p))
    rewards, active, replies, acted = [0.0] * len(problems), list(range(len(problems))), 0, 0
    while active:
        out = generate([envs[i].transcript for i in active])
        still = []
        for i, reply in zip(active, out, strict=True):
            replies, acted = replies + 1, acted + (reply is not None and action(reply) is not None)
            step = envs[i].step(reply or "")
            if step.done:
                rewards[i] = step.reward
            else:
                still.append(i)
        active = still
    called = [any((a := action(m["content"])) and a[0] == "calc" for m in env.transcript[OPENING:]
                  if m["role"] == "assistant") for env in envs]  # the agent's own turns, not the examples
    n = max(len(problems), 1)
    return {"solved": sum(rewards) / n, "called_tool": sum(called) / n, "acted": acted / max(replies, 1),
            "episodes": [env.transcript for env in envs]}


# ------------------------------------------------------------------ dreams
class CalcTaskSource:
    """Seeds, variations and parsed asks of the calc family (``simulators.proposer.TaskSource``): problems of the
    ``train`` stream only (a held-out question is never proposed: the proposer also excludes them by name)."""

    env = ENV_NAME
    family = FAMILY

    def seed(self, rng: random.Random):
        return to_task(train_problem(rng))

    def vary(self, task, rng: random.Random):
        """The same kind of problem with other numbers."""
        return to_task(train_problem(rng, int(task.spec.get("template", 0)) % len(TEMPLATES)))

    def parse(self, text: str, rng: random.Random):
        """A recorded user's ask as a task, when it is one of the family's problems."""
        problem = parse(text)
        return None if problem is None else to_task(problem)


class CalcFamily:
    """The ``calc`` skill as a dream family (``simulators.world.DreamFamily``): word problems played with the
    calculator in ``chatworld-calc`` and judged by its verifier; retention is the chat world's benchmarks."""

    skill = FAMILY
    eval_max_turns = MAX_TURNS
    max_model_len = 1024  # an episode's context: the protocol, the question, every action and result (about 480)
    # ``reverie dream --skill calc``'s defaults (``actors.dreams.DreamConfig`` fields): a 135M model on a 2-core
    # CPU, its episodes about 400 tokens long, learnt at the chat world's learning rate
    # Measured (bench/results/dream-smollm2/2026-12-07-calc-real-same-task-passes.json): held-out success 0.275 ->
    # 0.675 -> 0.95 after two rounds; a third round toward the base teacher fell to 0.25 (docs/design-notes.md,
    # "Dreams on SmolLM2"), hence two rounds.  ``teacher: parent`` is the fix that reading suggests, not yet measured.
    dream_settings = {"episodes": 256, "rounds": 2, "steps": 40, "passes": 2.0, "temperature": 0.4, "batch_size": 8,
                      "lr": 5e-5, "eval_items": 40, "budgets": (2, 3, 4), "simulators": 1, "teacher_context": "same",
                      "teacher": "base"}

    def __init__(self, benchmark_items: int | None = None):
        self.source = CalcTaskSource()
        self.benchmark_items = benchmark_items
        self._experiment = None

    def heldout_tasks(self, n: int) -> list:
        return [to_task(p) for p in problems("heldout", 0, n)]

    def heldout_prompts(self, n: int) -> list[str]:
        return [p.question for p in problems("heldout", 0, n)]

    def success(self, n: int, generate: Callable[[list], list[str]]) -> float:
        return play(problems("heldout", 0, n), generate, self.eval_max_turns)["solved"]

    def measure(self, model, encoder, base=None) -> dict:
        """The retention benchmarks (the gate's, ``benchmark_items`` of each) scored by the torch ``model``."""
        from simulators.chatworld.experiment import BENCHMARK_ITEMS, BENCHMARK_LLS, ChatExperiment

        if self._experiment is None:
            self._experiment = ChatExperiment.build(model, encoder, (), self.benchmark_items or BENCHMARK_ITEMS)
        lls = self._experiment.loglikelihoods(model)
        retention = self._experiment.retention(model, lls)
        out = {"retention": retention, "retention_avg": sum(retention.values()) / len(retention), BENCHMARK_LLS: lls}
        return {**out, **self._experiment.compare(base, out)} if base is not None else out


__all__ = ["ENV_NAME", "EXAMPLES", "FAMILY", "MAX_TURNS", "OPENING", "PROTOCOL", "CalcEnvironment", "CalcError", "CalcFamily",
           "CalcTaskSource", "Problem", "action", "answered", "calculate", "observe", "opening", "parse", "play",
           "problems", "question_of", "solve", "to_task", "train_problem", "verify", "verify_family"]
