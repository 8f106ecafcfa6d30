"""A model-simulated environment: a model predicts what the world would answer.

Given recorded real transitions of a task family (from the experience store:
an agent's action and the tool message that followed it, or the end of the
conversation), the environment answers an action by

1. retrieving the ``k`` recorded transitions most similar to the transcript's
   last messages and the action (token overlap, the action weighted double),
2. deciding *done* and *reward* by the similarity-weighted vote of those
   neighbours (a nearest-neighbour reward model), and
3. if the episode goes on, asking a model for the next observation: the
   neighbours are rendered as an example in a system message (unless the
   model was fine-tuned to go without) and the model writes the ``tool``
   message that follows the conversation,

in the manner of learned experience models for agent training.  Which model
writes the observations (the policy's own weights shown the neighbours, or a
copy fine-tuned on the recorded transitions) is ``simulators/world_model.py``.
Every step is marked ``simulated`` and names the simulator and the recorded
transitions it was conditioned on; its verifier is the task family's own
where one is registered (for the tiny world's ``tools``: the answer against
the episode's observed tool results, ``simulators/tinyworld/tools_verifier.py``),
else the same neighbour vote (also on request: ``judge="vote"``, to measure
what the verifier is worth); either way its successes are simulated: the
success filter stores them marked, the learner takes them only while a
sample of them replays successfully in the real environment (the agreement
check, ``simulators/dream.py``), and the gate confirms any gain on real
held-out tasks only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from simulators.env import Step, Task

ENV_NAME = "model-simulated"
JUDGES = ("family", "vote")  # what decides a simulated episode's success (``ModelSimulatedEnv.verify``)

# conditioning messages -> the predicted next observation (text)
Predictor = Callable[[list[dict]], "str | None"]  # None: the messages no longer fit the model's context


@dataclass(frozen=True)
class Transition:
    id: str
    context: tuple[dict, ...]  # the messages before the action
    action: str
    observation: str | None  # the message that followed (None: the episode ended)
    reward: float
    done: bool


def transitions_from(conversations: Iterable[tuple[str, Sequence[dict], float]]) -> list[Transition]:
    """Recorded conversations ``(id, messages, final reward)`` as transitions:
    one per assistant message, followed by the next tool message, or ending."""
    out = []
    for cid, messages, reward in conversations:
        messages = list(messages)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            if nxt is not None and nxt["role"] == "assistant":
                continue
            done = nxt is None
            out.append(Transition(f"{cid}#{i}", tuple(messages[:i]), m["content"],
                                  None if done else nxt["content"], float(reward) if done else 0.0, done))
    return out


def transitions_from_store(data_dir: str, keep: Callable[[list[dict]], bool] = lambda m: True) -> list[Transition]:
    """Transitions from recorded interactions (request messages followed by the
    completion).  A client that uses tools sends the growing conversation once
    per turn, so one episode is several rows, each a prefix of the next: only
    the longest conversation of such a chain is read (its earlier replies were
    answered by the tool, not ended).  The reward of an ending is the record's
    ``reward`` when the recorder added one (from feedback), else 0."""
    import msgpack

    from actors.store import read_table

    def key(messages: list[dict]) -> tuple:
        return tuple((m["role"], " ".join(m["content"].split())) for m in messages)

    convs = []
    for row in read_table(data_dir, "interactions").to_pylist():
        messages = list(row.get("messages") or [])
        if row.get("completion") is not None:
            messages.append({"role": "assistant", "content": row["completion"]})
        extra = msgpack.unpackb(row["extra"], raw=False) if row.get("extra") else {}
        if messages and keep(messages):
            convs.append((row["id"], messages, float(extra.get("reward", 0.0))))
    keys = [key(m) for _, m, _ in convs]
    prefixes = {k[:n] for k in keys for n in range(1, len(k))}
    return transitions_from([c for c, k in zip(convs, keys) if k not in prefixes])


def _tokens(messages: Iterable[dict]) -> set[str]:
    return {w for m in messages for w in m["content"].split()}


def similarity(context: Sequence[dict], action: str, t: Transition, window: int = 2) -> float:
    """Token overlap (Jaccard) of the action (weighted double) and of the last ``window`` messages."""
    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b) if a | b else 1.0

    a = jaccard(set(action.split()), set(t.action.split()))
    c = jaccard(_tokens(context[-window:]), _tokens(t.context[-window:]))
    return (2 * a + c) / 3


def render_examples(neighbours: Sequence[Transition]) -> str:
    parts = []
    for t in neighbours:
        parts.append(f"assistant : {t.action}")
        parts.append("end" if t.done else f"tool : {t.observation}")
    return "example : " + " | ".join(parts)


def conditioning_messages(transcript: Sequence[dict], neighbours: Sequence[Transition]) -> list[dict]:
    """What the simulator's model reads before writing the next observation: the neighbours rendered as an
    example in a system message (none for a simulator trained to go without), then the transcript."""
    head = [{"role": "system", "content": render_examples(neighbours)}] if neighbours else []
    return [*head, *transcript]


def engine_predictor(engine, temperature: float = 0.0) -> Predictor:
    """Observations written by a rollout engine (a Ray actor or a local
    ``RolloutEngine``) in the ``tool`` role."""
    from simulators.rollout import Sampling

    def predict(messages: list[dict]) -> str | None:  # None: the messages no longer fit the model's context
        call = getattr(engine.generate, "remote", None)
        if call is None:
            return engine.generate([messages], Sampling(temperature=temperature), role="tool")[0]
        import ray

        return ray.get(call([messages], Sampling(temperature=temperature), role="tool"))[0]

    return predict


class ModelSimulatedEnv:
    """``simulators.env.Environment`` whose observations and rewards a model predicts."""

    name = ENV_NAME
    simulated = True

    def __init__(self, max_turns: int = 6, transitions: Sequence[Transition] = (), predict: Predictor | None = None,
                 k: int = 3, examples: bool = True, simulator: str = "", judge: str = "family"):
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {', '.join(JUDGES)}, got {judge!r}")
        self.max_turns = max_turns
        self.transitions = list(transitions)
        self.predict = predict
        self.k = k
        self.examples = examples  # the neighbours are shown to the predictor (retrieval); a trained one may go without
        self.simulator = simulator  # which simulator this is (kind and version): every step and record names it
        self.judge = judge  # "family": the family's verifier where one is registered; "vote": the neighbour vote
        self._t: list[dict] = []
        self._turns = 0

    def neighbours(self, context: Sequence[dict], action: str) -> list[tuple[float, Transition]]:
        if not self.transitions:
            raise RuntimeError("a model-simulated environment needs recorded transitions")
        scored = sorted(((similarity(context, action, t), t) for t in self.transitions), key=lambda x: -x[0])
        return scored[: self.k]

    def _vote(self, context: Sequence[dict], action: str) -> tuple[bool, float, list[tuple[float, Transition]]]:
        near = self.neighbours(context, action)
        total = sum(s for s, _ in near) or 1.0
        done = sum(s for s, t in near if t.done) / total > 0.5
        reward = sum(s * t.reward for s, t in near if t.done) / (sum(s for s, t in near if t.done) or 1.0)
        return done, reward if done else 0.0, near

    def reset(self, task: Task) -> list[dict]:
        self._t = [{"role": "user", "content": task.prompt}]
        self._turns = 0
        return list(self._t)

    def step(self, action: str) -> Step:
        action = " ".join(action.split())
        context = list(self._t)
        self._t.append({"role": "assistant", "content": action})
        self._turns += 1
        done, reward, near = self._vote(context, action)
        info = {"simulated": True, "simulator": self.simulator, "neighbours": [t.id for _, t in near]}
        if done:
            return Step(None, reward, True, info)
        if self.predict is None:
            raise RuntimeError("a model-simulated environment needs a predictor for observations")
        conditioning = conditioning_messages(self._t, [t for _, t in near] if self.examples else [])
        observation = self.predict(conditioning)
        if observation is None:  # the transcript outgrew the simulator model's context: the episode ends, failed
            return Step(None, 0.0, True, info)
        observation = " ".join(observation.split())
        self._t.append({"role": "tool", "content": observation})
        if self._turns >= self.max_turns:
            return Step(None, 0.0, True, info)
        return Step(observation, 0.0, False, info)

    @property
    def transcript(self) -> list[dict]:
        return list(self._t)

    def verify(self, task: Task, messages: list[dict]) -> bool:
        """The task family's own verifier where one is registered and the
        judge is ``family`` (``simulators.env.family_verifier``: it checks the
        answer against the episode's observations, never the simulator's
        claim); otherwise (no verifier, or the judge is ``vote``) the
        simulated verdict: the neighbours of the last action end the episode
        with a reward (never trusted alone: ``simulated`` is True)."""
        from simulators.env import family_verifier

        check = family_verifier(task.family) if self.judge == "family" else None
        if check is not None:
            return bool(check(list(messages), self.max_turns))
        actions = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not actions or actions[-1] != len(messages) - 1 or len(actions) > self.max_turns:
            return False
        i = actions[-1]
        done, reward, _ = self._vote(messages[:i], messages[i]["content"])
        return done and reward >= 0.5
