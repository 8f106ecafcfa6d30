"""The tiny world's scripted users: plain code that talks to a running reverie through its public HTTP API
(the ``openai`` client, and ``POST /v1/feedback``), as a population of people would.

- :class:`Api` is one connection: every chat completion and every piece of feedback goes through it, and
  it counts requests, failures (any request that raised or answered an error) and the policy versions
  that answered (``system_fingerprint`` ``reverie-v<N>``).
- :class:`ToolsAgent` plays a ``tools`` task as an agent's client would: each turn is a chat completion
  of the conversation so far; the client executes the tool call the model made against the tiny world's
  :class:`~simulators.tinyworld.tools_env.ToolsEnv` and sends the observation back as a ``tool`` message.
  The store thus records real episodes, failed ones included.
- The users (:class:`FactUser`, :class:`RuleUser`, :class:`BaseUser`, :class:`ToolsUser`) are threads'
  bodies: they ask, check the answer against what they know, and give feedback: a fact user corrects a
  wrong answer with the fact's sentence, a copy user states the preference rule when the answer is not
  bracketed, others rate answers and episodes.  Each keeps a running record of how often it got the right
  answer (:class:`Tally`).
- :func:`measure` is the held-out measurement through the API: the first ``n`` evaluation items of each
  new skill (``evaluate.eval_items(skill, "student", n)``; ``tools`` played to its end at the evaluation
  turn budget and judged by the environment's reward) and of each base skill (the retention suite).

Users never ask a held-out evaluation prompt: their asks come from their own seeds, and any draw that
equals an evaluation prompt (the first ``EVAL_ITEMS`` of the skill) is drawn again.  The one exception is
facts, which are knowledge: the 64 new facts are what evaluation asks about too.  Users ask each fact with
the question template the first evaluation items use least (``FACT_TEMPLATE``), so most evaluation
prompts ask a fact in words no user used.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from simulators.tinyworld import world as W
from simulators.tinyworld.evaluate import EVAL_ITEMS, MAX_REPLY_TOKENS, eval_items
from simulators.tinyworld.skills import BASE_SKILLS, NEW_SKILLS, base_item, new_tools_task
from simulators.tinyworld.text import normalize
from simulators.tinyworld.tools_env import EVAL_MAX_TURNS, ToolsEnv, ToolsTask

MODEL = "reverie"
FINGERPRINT_PREFIX = "reverie-v"
FACT_TEMPLATE = 1  # "tell me the {attr} of {ent} .": the template the first 100 evaluation items use least
USER_MAX_TURNS = 6  # a user's agent is more patient than the evaluation (which allows EVAL_MAX_TURNS)
# A user's agent lets the model write an action of at most this many tokens: six sampled turns of 32 tokens
# and their error observations would outgrow the tiny model's 256-token context (a dream step failed so).
USER_ACTION_TOKENS = 16
FEEDBACK_RETRIES = 5


class RequestFailed(RuntimeError):
    """A request through the API that raised or answered an error (already counted)."""


@dataclass
class Reply:
    id: str
    text: str
    version: int | None


@dataclass
class RequestStats:
    """What went through one :class:`Api` (thread-safe)."""
    requests: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures, for the report
    versions: Counter = field(default_factory=Counter)  # answering policy version -> responses
    feedback: Counter = field(default_factory=Counter)  # kind -> pieces of feedback given
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, version: int | None = None) -> None:
        with self._lock:
            self.requests += 1
            if version is not None:
                self.versions[version] += 1

    def fail(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.requests += 1
            self.failed += 1
            if len(self.errors) < 20:
                self.errors.append(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

    def gave(self, kinds: Sequence[str]) -> None:
        with self._lock:
            self.feedback.update(kinds)

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "failed": self.failed, "errors": list(self.errors),
                    "versions": dict(sorted(self.versions.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))),
                    "feedback": dict(self.feedback)}


def _version(fingerprint: str | None) -> int | None:
    if fingerprint and fingerprint.startswith(FINGERPRINT_PREFIX):
        try:
            return int(fingerprint[len(FINGERPRINT_PREFIX):])
        except ValueError:
            return None
    return None


class Api:
    """The public API of a running reverie at ``base_url`` (``http://host:port``), with a user key."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 120.0, model: str = MODEL,
                 stats: RequestStats | None = None):
        import httpx
        import openai

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0,
                                    timeout=timeout_s)
        self.http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=timeout_s)
        self.stats = stats or RequestStats()

    def close(self) -> None:
        self.http.close()
        self.client.close()

    def chat(self, messages: Sequence[dict], *, stream: bool = False, temperature: float = 0.0,
             max_tokens: int = MAX_REPLY_TOKENS) -> Reply:
        """One chat completion (streamed or not); a failure is counted and raised as :class:`RequestFailed`."""
        try:
            r = self.client.chat.completions.create(model=self.model, messages=[dict(m) for m in messages],
                                                    temperature=temperature, max_tokens=max_tokens, stream=stream)
            if stream:
                rid, parts, fingerprint = None, [], None
                for chunk in r:
                    rid = rid or chunk.id
                    fingerprint = fingerprint or chunk.system_fingerprint
                    for ch in chunk.choices:
                        if ch.index == 0 and ch.delta is not None and ch.delta.content:
                            parts.append(ch.delta.content)
                reply = Reply(rid or "", "".join(parts), _version(fingerprint))
            else:
                reply = Reply(r.id, r.choices[0].message.content or "", _version(r.system_fingerprint))
        except Exception as e:  # noqa: BLE001 - every failure is counted, whatever raised it
            self.stats.fail("chat", e)
            raise RequestFailed(str(e)) from e
        self.stats.count(reply.version)
        return reply

    def ask(self, text: str, **kw) -> Reply:
        return self.chat([{"role": "user", "content": text}], **kw)

    def feedback(self, response_id: str, **fields) -> dict:
        """``POST /v1/feedback`` about ``response_id`` (``rule``, ``correction``, ``rating``, ``approved``)."""
        last = None
        for attempt in range(FEEDBACK_RETRIES):
            try:
                r = self.http.post("/v1/feedback", json={"response_id": response_id, **fields})
            except Exception as e:  # noqa: BLE001
                self.stats.fail("feedback", e)
                raise RequestFailed(str(e)) from e
            if r.status_code == 201:
                self.stats.count()
                self.stats.gave([k for k, v in fields.items() if v is not None])
                return r.json()
            last = r
            if r.status_code != 404:  # 404: the interaction may not be flushed to the store's index yet
                break
            time.sleep(0.2 * (attempt + 1))
        err = RuntimeError(f"HTTP {last.status_code}: {last.text[:200]}")
        self.stats.fail("feedback", err)
        raise RequestFailed(str(err))


# --------------------------------------------------------------------------- an agent's client


@dataclass
class Episode:
    task: ToolsTask
    success: bool
    turns: int
    response_ids: list[str]
    transcript: list[dict]
    versions: set


class ToolsAgent:
    """Plays ``tools`` tasks through the API: the model acts, the client runs the tool and reports back."""

    def __init__(self, api: Api, *, max_turns: int = EVAL_MAX_TURNS, temperature: float = 0.0,
                 stream: bool = False, max_tokens: int = MAX_REPLY_TOKENS):
        self.api, self.max_turns, self.temperature, self.stream = api, max_turns, temperature, stream
        self.max_tokens = max_tokens

    def play(self, task: ToolsTask) -> Episode:
        env = ToolsEnv(task, max_turns=self.max_turns)
        env.reset()
        ids, versions = [], set()
        while True:
            reply = self.api.chat(env.transcript, stream=self.stream, temperature=self.temperature,
                                  max_tokens=self.max_tokens)
            ids.append(reply.id)
            versions.add(reply.version)
            result = env.step(reply.text)
            if result.done:
                return Episode(task, result.reward == 1.0, env.turns, ids, list(env.transcript), versions)


# --------------------------------------------------------------------------- held-out measurement


def _pool_map(fn: Callable, items: Sequence, concurrency: int) -> list:
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items)))) as pool:
        return list(pool.map(fn, items))


def api_accuracy(api: Api, skill: str, n: int, concurrency: int = 8, versions: Counter | None = None) -> float:
    """Greedy accuracy through the API on the first ``n`` held-out evaluation items of ``skill`` (a new
    skill's student view, or a base skill).  ``tools``: each task played to its end at the evaluation turn
    budget, judged by the environment's reward.  A failed request counts as a wrong answer (and as a
    failure in ``api.stats``).  ``versions`` (if given) counts the policy versions that answered."""
    versions = versions if versions is not None else Counter()
    lock = threading.Lock()
    view = "student" if skill in NEW_SKILLS else None
    items = eval_items(skill, view, n)

    def one(item) -> bool:
        try:
            if item.task is not None:
                ep = ToolsAgent(api, max_turns=EVAL_MAX_TURNS).play(item.task)
                with lock:
                    versions.update(ep.versions)
                return ep.success
            reply = api.chat(item.prompt)
            with lock:
                versions[reply.version] += 1
            return item.verify(reply.text)
        except RequestFailed:
            return False

    return sum(_pool_map(one, items, concurrency)) / len(items)


def measure(api: Api, new_items: int, retention_items: int, concurrency: int = 8) -> dict:
    """New-skill accuracy per family and the retention suite (base skills), all through the API:
    ``{"new_skills": {skill: acc}, "retention": {skill: acc}, "retention_avg", "versions": {v: n}}``
    (``versions``: the policy versions that answered, and how often)."""
    versions: Counter = Counter()
    new = {s: api_accuracy(api, s, new_items, concurrency, versions) for s in NEW_SKILLS}
    retention = {s: api_accuracy(api, s, retention_items, concurrency, versions) for s in BASE_SKILLS}
    return {"new_skills": new, "retention": retention,
            "retention_avg": sum(retention.values()) / len(retention),
            "versions": {str(k): v for k, v in sorted(versions.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}}


# --------------------------------------------------------------------------- what users ask


def _eval_prompts(skill: str) -> set[str]:
    view = "student" if skill in NEW_SKILLS else None
    out = set()
    for it in eval_items(skill, view, EVAL_ITEMS):
        out.add(normalize(it.task.question if it.task is not None else it.asked))
    return out


_HELD_OUT: dict[str, set[str]] = {}
_HELD_OUT_LOCK = threading.Lock()


def held_out(skill: str) -> set[str]:
    """The last user message of every evaluation item of ``skill`` (never asked by a user)."""
    with _HELD_OUT_LOCK:
        if skill not in _HELD_OUT:
            _HELD_OUT[skill] = _eval_prompts(skill)
        return _HELD_OUT[skill]


def base_ask(skill: str, rng: random.Random):
    """A base-skill item (``copy`` included) from the user's own ``rng``, never an evaluation prompt."""
    banned = held_out(skill) | (held_out("rule") if skill == "copy" else set())
    while True:
        item = base_item(skill, rng)
        if normalize(item.asked) not in banned:
            return item


def tools_ask(rng: random.Random) -> ToolsTask:
    banned = held_out("tools")
    while True:
        task = new_tools_task(rng)
        if normalize(task.question) not in banned:
            return task


def fact_question(fact: W.Fact, template: int = FACT_TEMPLATE) -> str:
    return W.QUESTION_TEMPLATES[template].format(attr=fact.attr, ent=fact.ent)


def bracketed(answer: str) -> str:
    return W.apply_format(W.NEW_RULE[1], answer)


# --------------------------------------------------------------------------- the users


class Tally:
    """Each family's recent outcomes as users saw them (thread-safe): the users' running accuracy."""

    def __init__(self, window: int = 40):
        self._lock = threading.Lock()
        self._recent: dict[str, deque] = {}
        self.totals: Counter = Counter()

    def add(self, family: str, ok: bool) -> None:
        with self._lock:
            self._recent.setdefault(family, deque(maxlen=40)).append(bool(ok))
            self.totals[family] += 1

    def running(self) -> dict[str, float]:
        with self._lock:
            return {f: sum(d) / len(d) for f, d in sorted(self._recent.items()) if d}


@dataclass
class Population:
    """What every user shares: the API, the running tally, the stop signal, the pace.

    Users who teach (fact and copy users) arrive when ``arrive`` is set; the others talk from the start."""
    api: Api
    tally: Tally
    stop: threading.Event
    think_s: tuple[float, float] = (0.5, 1.5)  # a user's pause between asks
    recorrect_s: float = 600.0  # the same version still answers a fact wrong after this long: correct it again
    rule_every_s: float = 10.0  # a copy user states the rule at most this often
    arrive: threading.Event = field(default_factory=threading.Event)
    episodes: Counter = field(default_factory=Counter)  # tools episodes played: "success" / "failure"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pause(self, rng: random.Random) -> None:
        self.stop.wait(rng.uniform(*self.think_s))

    def episode(self, success: bool) -> None:
        with self._lock:
            self.episodes["success" if success else "failure"] += 1


class User:
    """A thread's body: ``run`` asks until the population's stop signal."""

    teaches = False  # users who teach arrive when the population's ``arrive`` is set

    def __init__(self, pop: Population, name: str, seed: int = 0, stream: bool = False):
        self.pop, self.name, self.stream = pop, name, stream
        self.rng = random.Random(f"tinyworld-users/{name}/{seed}")

    def run(self) -> None:
        while self.teaches and not self.pop.arrive.is_set() and not self.pop.stop.is_set():
            self.pop.stop.wait(0.5)
        while not self.pop.stop.is_set():
            try:
                self.step()
            except RequestFailed:
                pass  # counted by the Api; the user carries on
            self.pop.pause(self.rng)

    def step(self) -> None:
        raise NotImplementedError


class FactUser(User):
    """Asks about the new facts (its share of them, in turn) and corrects a wrong answer with the fact's
    sentence, once per served version (again if the same version is still wrong after ``recorrect_s``)."""

    teaches = True

    def __init__(self, pop: Population, name: str, facts: Sequence[W.Fact], **kw):
        super().__init__(pop, name, **kw)
        self.facts = list(facts)
        self.i = 0
        self.told: dict[W.Fact, tuple[int | None, float]] = {}

    def step(self) -> None:
        if not self.facts:
            self.pop.stop.wait(1.0)
            return
        fact = self.facts[self.i % len(self.facts)]
        self.i += 1
        reply = self.pop.api.ask(fact_question(fact), stream=self.stream)
        ok = normalize(reply.text) == fact.sentence()
        self.pop.tally.add("facts", ok)
        last = self.told.get(fact)
        if not ok and (last is None or last[0] != reply.version or time.time() - last[1] >= self.pop.recorrect_s):
            self.pop.api.feedback(reply.id, correction=fact.sentence())
            self.told[fact] = (reply.version, time.time())


class RuleUser(User):
    """Asks to copy letters and wants the answer in brackets: states the rule when it is not (at most once per
    ``rule_every_s``); rates the answers it likes.  Now and then asks to reverse or sort, where no brackets
    are wanted."""

    teaches = True

    def __init__(self, pop: Population, name: str, **kw):
        super().__init__(pop, name, **kw)
        self.last_rule = -1e9
        self.asked = 0

    def step(self) -> None:
        self.asked += 1
        if self.asked > 1 and self.rng.random() < 0.25:  # the first ask is a copy
            item = base_ask(self.rng.choice(("reverse", "sort")), self.rng)
            reply = self.pop.api.chat(item.prompt, stream=self.stream)
            self.pop.tally.add("base", item.verify(reply.text))
            return
        item = base_ask("copy", self.rng)
        reply = self.pop.api.chat(item.prompt, stream=self.stream)
        ok = normalize(reply.text) == bracketed(item.answer)
        self.pop.tally.add("rule", ok)
        if ok:
            if self.rng.random() < 0.3:
                self.pop.api.feedback(reply.id, rating=1.0)
        elif time.time() - self.last_rule >= self.pop.rule_every_s:
            self.pop.api.feedback(reply.id, rule=W.rule_text(*W.NEW_RULE))
            self.last_rule = time.time()


class BaseUser(User):
    """Asks base-skill tasks (what the model could always do) and rates some answers."""

    def step(self) -> None:
        item = base_ask(self.rng.choice(BASE_SKILLS), self.rng)
        reply = self.pop.api.chat(item.prompt, stream=self.stream)
        ok = item.verify(reply.text)
        self.pop.tally.add("base", ok)
        if self.rng.random() < 0.2:
            self.pop.api.feedback(reply.id, rating=1.0 if ok else -1.0)


class ToolsUser(User):
    """Runs the multi-step ``tools`` task as an agent would (greedy or sampled), with a user's patience of
    ``USER_MAX_TURNS`` turns, and rates the episode's last answer."""

    def __init__(self, pop: Population, name: str, temperature: float = 0.0, **kw):
        super().__init__(pop, name, **kw)
        self.temperature = temperature

    def step(self) -> None:
        agent = ToolsAgent(self.pop.api, max_turns=USER_MAX_TURNS, temperature=self.temperature,
                           stream=self.stream, max_tokens=USER_ACTION_TOKENS)
        ep = agent.play(tools_ask(self.rng))
        self.pop.episode(ep.success)
        self.pop.tally.add("tools", ep.success and ep.turns <= EVAL_MAX_TURNS)
        if self.rng.random() < 0.5:
            self.pop.api.feedback(ep.response_ids[-1], rating=1.0 if ep.success else -1.0)


def population(pop: Population, *, fact_users: int = 2, rule_users: int = 1, base_users: int = 2,
               tools_users: int = 2, facts: Sequence[W.Fact] | None = None, seed: int = 0) -> list[User]:
    """A mixed population: the new facts shared out among the fact users; half of every kind stream; the
    tools users sample at temperature 1 every other one."""
    facts = list(W.world().new_facts if facts is None else facts)
    users: list[User] = []
    for i in range(fact_users):
        users.append(FactUser(pop, f"facts-{i}", facts[i::fact_users], seed=seed, stream=i % 2 == 1))
    users += [RuleUser(pop, f"rule-{i}", seed=seed, stream=i % 2 == 0) for i in range(rule_users)]
    users += [BaseUser(pop, f"base-{i}", seed=seed, stream=i % 2 == 1) for i in range(base_users)]
    users += [ToolsUser(pop, f"tools-{i}", temperature=1.0 if i % 2 else 0.0, seed=seed, stream=i % 2 == 0)
              for i in range(tools_users)]
    return users


__all__ = ["Api", "BaseUser", "Episode", "FactUser", "Population", "Reply", "RequestFailed", "RequestStats",
           "RuleUser", "Tally", "ToolsAgent", "ToolsUser", "User", "api_accuracy", "base_ask", "fact_question",
           "held_out", "measure", "population", "tools_ask"]
