"""How the calc family's calculator is offered to a model, measured (issue 39): ``reverie bench calc-offer``.

Each way of offering it is played on the same held-out problems in the real environment
(``simulators/chatworld/calc.py``) and judged by its verifier; only what the model is shown before the question
differs (the environment's transcript keeps its own opening, so every variant is judged alike):

- ``protocol``: the protocol in the system message alone;
- ``protocol+example in system``: the protocol, then one worked example written out in the system message;
- ``1 example as turns``: the protocol, then one worked example as earlier turns of the conversation;
- ``2 examples as turns``: the protocol and both :data:`~simulators.chatworld.calc.EXAMPLES` as turns (what the
  environment shows).

For each: greedy success, the share of episodes that called the calculator and of replies that held an action,
and success in any of ``samples`` plays at temperature 1 (what a dream can find and keep).  The OpenAI tools format
is checked on the model's own chat template: whether a prompt rendered with ``tools=`` differs from one without.
"""
from __future__ import annotations

import time
from pathlib import Path

from simulators.chatworld.calc import EXAMPLES, OPENING, PROTOCOL, opening

TOOL = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression exactly.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def _turns(k: int) -> list[dict]:
    return opening("")[1:1 + 4 * k]


def variants() -> dict[str, list[dict]]:
    """What each variant shows before the question."""
    q, expression, value = EXAMPLES[0]
    written = f"\n\nExample.\nQuestion: {q}\nYou: CALC: {expression}\nRESULT: {value}\nYou: ANSWER: {value}"
    system = {"role": "system", "content": PROTOCOL}
    return {"protocol": [system],
            "protocol+example in system": [{"role": "system", "content": PROTOCOL + written}],
            "1 example as turns": [system, *_turns(1)],
            "2 examples as turns": [system, *_turns(len(EXAMPLES))]}


def tools_rendered(model_dir: Path) -> bool:
    """Whether the model's chat template renders an OpenAI ``tools`` list into the prompt at all."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = [{"role": "user", "content": "What is 12 * 7?"}]
    plain = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(chat, tools=[TOOL], tokenize=False, add_generation_prompt=True) != plain


def measure(model_dir: Path, items: int = 40, samples: int = 4, progress=lambda line: None) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from evals.chat import MAX_TOKENS, calc_problems
    from learner.tokenizer import chat_encoder, load_tokenizer
    from reverie.engine import offline_llm
    from simulators.chatworld.calc import play, to_task, verify

    encoder = chat_encoder(load_tokenizer(model_dir))
    problems = calc_problems(items)
    llm = offline_llm(model_dir, max_model_len=1024)
    asked = OPENING - 1  # where the question sits in the environment's transcript
    out = {}
    try:
        for name, shown in variants().items():
            start = time.perf_counter()

            def generate(chats, temperature=0.0, seed=None, shown=shown):
                views = [[*shown, *chat[asked:]] for chat in chats]
                params = SamplingParams(temperature=temperature, max_tokens=MAX_TOKENS, seed=seed)
                outs = llm.generate([TokensPrompt(prompt_token_ids=encoder.prompt_ids(v)) for v in views], params,
                                    use_tqdm=False)
                return [o.outputs[0].text for o in outs]

            greedy = play(problems, generate)
            found = [False] * len(problems)
            for k in range(samples):
                played = play(problems, lambda chats, k=k: generate(chats, 1.0, k))
                found = [f or verify(to_task(p), e) for f, p, e in zip(found, problems, played["episodes"])]
            out[name] = {"solved": greedy["solved"], "called_tool": greedy["called_tool"], "acted": greedy["acted"],
                         f"solved_in_{samples}_samples": sum(found) / len(problems),
                         "seconds": round(time.perf_counter() - start, 1),
                         "first_episode": greedy["episodes"][0][asked:]}
            progress(f"{name}: solved {greedy['solved']:.3f} greedy, {out[name][f'solved_in_{samples}_samples']:.3f} "
                     f"in {samples} samples, calculator called in {greedy['called_tool']:.2f} of episodes")
    finally:
        llm.llm_engine.engine_core.shutdown()
    return {"what": "how the calc family's calculator is offered (bench/calc_offer.py)", "model": str(model_dir),
            "items": len(problems), "samples": samples, "max_tokens": MAX_TOKENS,
            "openai_tools_rendered_by_chat_template": tools_rendered(model_dir), "variants": out}


__all__ = ["measure", "tools_rendered", "variants"]
