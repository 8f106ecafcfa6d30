"""``reverie bench cycle --model M``: one loop cycle on a real instruct model in the chat world, through the API.

Scripted users (``simulators/chatworld/teaching.py``) ask the running system, with auto-approval, and give
feedback through ``POST /v1/feedback``: a rule stated on a few taught asks, each reply corrected to keep it
(``rules.rule_correction``), and corrections of facts about the world's invented organisation.  The loop learns,
the gate judges the candidate (held-out asks checked by code, the world's retention benchmarks against parent and
base) and a passing one is swapped in.  Every figure is measured in the run that writes it:

- ``feedback_to_served_seconds``: from the last feedback to the first chat answer of the promoted candidate (a
  held-out prompt asked through the API every 5 s, every second once the status names a new version; whether that
  first answer kept the rule is ``served_answer_keeps_rule``; ``failed_requests`` counts the probes that raised;
  the held-out prompts and fact questions asked after are requests too, and one that failed would raise);
- ``steps``: the controller's own time per step of the cycle (collect, learn, gate, swap);
- ``gate_warm_seconds``: what the gate took to score the base as a parent while the loop was idle (``Gate.warm``,
  once per served version, before a candidate waits; the bench gives its feedback after it): the gate step then
  scores the candidate only;
- ``peak_pss_bytes``: the peak memory of this process and every process it started, each page counted once (the
  summed proportional set size: what the target is judged on); ``peak_rss_bytes`` is their summed resident memory,
  which counts a page every process shares (torch's libraries in each Ray worker) once per process;
- ``api_rule_before`` / ``_after``: greedy compliance through the API on unseen general prompts, the base on one
  draw of them and the promoted version on another that nothing asked before (``probe_sets``);
  ``api_facts_before`` / ``_after``: the taught facts asked in their unseen phrasings (``Fact.unseen``: never
  taught, never a variation the loop learns from or holds out); ``api_facts_loop_phrasings_*``: in their other
  phrasings, which the loop may vary an ask into (a learnt variation or a gate's held-out task);
- ``retention``: each benchmark's accuracy (acc_norm on the gate's fixed subset) for the base, the parent and the
  candidate, from the gate's own record of the cycle's candidate.
"""
from __future__ import annotations

import random
import secrets
import socket
import tempfile
import time
from pathlib import Path

TARGETS = {"api_rule_after": 0.9, "api_facts_after": 0.8, "retention_avg_drop": 0.01, "retention_max_drop": 0.02,
           "feedback_to_served_seconds": 900.0, "peak_pss_gib": 12.0}


def run_chat_bench(model: str, rule: str = "starts_with", facts: int = 8, asks_per_rule: int = 3,
                   steps: int = 20, batch_size: int = 8, lr: float = 5e-5, probes: int = 40,
                   benchmark_items: int = 100, heldout_items: int = 24, timeout_s: float = 1800.0,
                   pin_cpus: bool = False, seed: int = 0, progress=print, gate_overrides: dict | None = None,
                   learner_threads: int = 1, teacher_temperature: float | None = None) -> dict:
    """One cycle (the module docstring); ``gate_overrides`` are further ``GateConfig`` fields (a test's gate that
    passes what it judges, so that the swap is exercised)."""
    import httpx
    import openai
    import ray
    from ray import serve

    from bench.cycle import _PeakRss
    from learner.templates import render
    from reverie.config import GateConfig, LoopConfig, ServeConfig
    from reverie.models import resolve
    from reverie.ray_start import quiet_http_clients, start_ray
    from serve.app import Deployment
    from serve.auth import Keys
    from simulators.chatworld.plugin import ChatWorld, check, passes
    from simulators.chatworld.prompts import load_pools
    from simulators.chatworld.rules import rule_correction
    from simulators.chatworld.teaching import fact_teachings, rule_teachings

    quiet_http_clients()
    model_dir = resolve(model)
    pools = load_pools()
    taught_facts = fact_teachings(seed, facts)
    taught_rules = rule_teachings(seed, (rule,), asks_per_rule, pools)
    rule_text = taught_rules[0].text
    rule_spec = check("chat", ({"role": "user", "content": "?"},), render("rule", rule_text))
    before_prompts, after_prompts = probe_sets(pools.unseen, probes, seed,
                                               (gate_overrides or {}).get("drift_prompts", GateConfig().drift_prompts))
    # the taught facts in words neither the users nor the loop's variations use (the target's figure), and in the
    # other phrasings the loop may vary an ask into and the gate hold out
    fact_asks = [(q, check("facts", ({"role": "user", "content": q},), "")) for t in taught_facts
                 for q in t.unseen]
    fact_loop_asks = [(q, check("facts", ({"role": "user", "content": q},), "")) for t in taught_facts
                      for q in t.heldout]

    work = Path(tempfile.mkdtemp(prefix="reverie-bench-chat-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n_feedback = len(taught_facts) + len(taught_rules)
    cfg = ServeConfig(model_dir=model_dir, world="chat", data_dir=str(work / "data"), port=port, pin_cpus=pin_cpus,
                      loop=LoopConfig(approval="auto", min_feedback=n_feedback, poll_s=0.5, steps=steps,
                                      batch_size=batch_size, lr=lr, checkpoint_every=steps, dream=False,
                                      learner_threads=learner_threads, teacher_temperature=teacher_temperature,
                                      seed=seed),
                      gate=GateConfig(benchmark_items=benchmark_items, heldout_items=heldout_items,
                                      **(gate_overrides or {})))
    keys = Keys(secrets.token_urlsafe(24), secrets.token_urlsafe(24), "bench (in memory)")
    t_start = time.perf_counter()
    with _PeakRss() as rss:
        start_ray(num_cpus=8, cpu_plan=cfg.cpu_plan())
        dep = Deployment(cfg, keys.digests())
        try:
            dep.wait_until_running()
            client = openai.OpenAI(base_url=dep.base_url + "/v1", api_key=keys.api_key, max_retries=0, timeout=120)
            admin = {"Authorization": f"Bearer {keys.admin_key}"}

            def reply(text: str, max_tokens: int = 32):
                return client.chat.completions.with_raw_response.create(
                    model="reverie", messages=[{"role": "user", "content": text}], temperature=0,
                    max_tokens=max_tokens)

            def share(asks) -> float:
                """Of ``(text, check)`` pairs asked through the API, the share whose reply passes."""
                kept = [passes(spec, reply(q).parse().choices[0].message.content) for q, spec in asks]
                return sum(kept) / len(kept)

            def measure(prompts: list[str]) -> dict:
                return {"rule": share([(p, rule_spec) for p in prompts]), "facts": share(fact_asks),
                        "facts_loop_phrasings": share(fact_loop_asks)}

            def status() -> dict:
                return httpx.get(dep.base_url + "/admin/status", headers=admin, timeout=60).json()

            progress(f"measuring the base through the API ({len(before_prompts)} unseen prompts, "
                     f"{len(fact_asks) + len(fact_loop_asks)} fact questions)")
            before = measure(before_prompts)
            base = status()["promoted"]
            while status().get("gate_warm", {}).get("version") != base:  # the gate scores the base while idle
                if time.perf_counter() - t_start > timeout_s:
                    raise TimeoutError(f"the gate did not score the base in {timeout_s:.0f} s")
                time.sleep(1.0)
            warm = status()["gate_warm"]
            progress(f"teaching: {len(taught_rules)} asks with the rule {rule_text!r}, {len(taught_facts)} facts")
            for t in [*taught_rules, *taught_facts]:
                asked = reply(t.ask, max_tokens=64).parse()
                fields = ({"rule": t.text, "correction": rule_correction(t.text, asked.choices[0].message.content)}
                          if t.family == "rule" else {"correction": t.text})
                r = httpx.post(dep.base_url + "/v1/feedback", headers={"Authorization": f"Bearer {keys.api_key}"},
                               json={"response_id": asked.id, **fields}, timeout=60)
                r.raise_for_status()
            t_feedback = time.perf_counter()
            progress("feedback given; waiting for the candidate to be judged and served")
            served_at, failed, sent, version, refused, waited, kept = None, 0, 0, base, None, 0, None
            rng = random.Random(seed)
            while time.perf_counter() - t_feedback < timeout_s:
                s = status()
                refused = next((c for c in s["candidates"] if c["parent"] == base and c["status"] == "rejected"),
                               None)
                if refused is not None:
                    progress(f"the gate refused version {refused['version']}: {refused.get('reason')}")
                    break
                waited += 1
                # A held-out prompt every 5 s while the loop works (a 135M model's answer takes a core for about a
                # second here, which the learner needs), every second once a new version is promoted.
                if s["promoted"] != base or waited % 5 == 0:
                    try:
                        raw = reply(rng.choice(before_prompts))  # asked already: after_prompts stay unasked
                        sent += 1
                        version = int(raw.headers["x-reverie-version"])
                        if version != base:
                            served_at = time.perf_counter()
                            kept = passes(rule_spec, raw.parse().choices[0].message.content)
                            break
                    except Exception:  # noqa: BLE001 - counted
                        failed += 1
                time.sleep(1.0)
            s = status()
            cand = next((c for c in s["candidates"] if c["parent"] == base), None)
            cycle = next((c for c in s["cycles"] if cand and c.get("candidate") == cand["version"]), s["cycle"])
            after = measure(after_prompts) if version != base else None
        finally:
            dep.shutdown()
            serve.shutdown()
            ray.shutdown()
    seconds = None if served_at is None else round(served_at - t_feedback, 1)
    scores = (cand or {}).get("scores") or {}
    # The gate scores the base apart only when the parent is not the base (a first cycle's parent is).
    first = cand is not None and cand["parent"] == base
    retention = {k: {"base": (scores.get("base_retention") or {}).get(k, {}).get("base",
                                                                           v["parent"] if first else None), **v}
                 for k, v in (scores.get("retention") or {}).items()}
    drops = [v["base"] - v["candidate"] for v in retention.values() if v.get("base") is not None]
    report = {
        "what": "one loop cycle on a real instruct model in the chat world, through the API (auto-approval)",
        "model": model, "model_dir": str(model_dir), "rule": rule_text, "rule_kind": rule,
        "facts_taught": len(taught_facts), "rule_asks": len(taught_rules), "feedback": n_feedback,
        "loop": {"steps": steps, "batch_size": batch_size, "lr": lr, "learner_threads": learner_threads,
                 "teacher_temperature": teacher_temperature,
                 "pin_cpus": pin_cpus},
        "world": {"name": "chat", **{k: getattr(ChatWorld, k, None)  # the world's settings the loop took
                                     for k in ("teacher_temperature", "along_reference", "show_corrections")}},
        "gate": {"benchmark_items": benchmark_items, "heldout_items": heldout_items, **(gate_overrides or {})},
        "gate_warm_seconds": warm["seconds"] and round(warm["seconds"], 1),
        "feedback_to_served_seconds": seconds, "steps": {k: round(v, 1) for k, v in (cycle.get("seconds") or {}).items()},
        "base_version": base, "candidate": cand and {k: cand.get(k) for k in ("version", "status", "reason")},
        "served_version": version, "served_answer_keeps_rule": kept,
        "api_rule_before": before["rule"], "api_facts_before": before["facts"],
        "api_rule_after": after and after["rule"], "api_facts_after": after and after["facts"],
        "api_facts_loop_phrasings_before": before["facts_loop_phrasings"],
        "api_facts_loop_phrasings_after": after and after["facts_loop_phrasings"],
        "api_prompts": len(after_prompts), "api_fact_questions": len(fact_asks),
        "api_fact_loop_questions": len(fact_loop_asks),
        "gate_scores": {k: v for k, v in scores.items() if k not in ("retention", "base_retention")},
        "retention": retention,
        "retention_avg_drop": round(sum(drops) / len(drops), 4) if drops else None,
        "retention_max_drop": round(max(drops), 4) if drops else None,
        "probes": sent, "failed_requests": failed,
        "peak_pss_bytes": rss.peak_pss, "peak_pss_gib": round(rss.peak_pss / (1 << 30), 3),
        "peak_rss_bytes": rss.peak, "peak_rss_gib": round(rss.peak / (1 << 30), 3),
        "wall_seconds": round(time.perf_counter() - t_start, 1), "targets": TARGETS,
    }
    report["met"] = {
        "api_rule_after": (report["api_rule_after"] or 0) >= TARGETS["api_rule_after"],
        "api_facts_after": (report["api_facts_after"] or 0) >= TARGETS["api_facts_after"],
        "retention_avg_drop": drops != [] and report["retention_avg_drop"] <= TARGETS["retention_avg_drop"],
        "retention_max_drop": drops != [] and report["retention_max_drop"] <= TARGETS["retention_max_drop"],
        "feedback_to_served_seconds": seconds is not None and seconds <= TARGETS["feedback_to_served_seconds"],
        "peak_pss_gib": 0 < report["peak_pss_gib"] <= TARGETS["peak_pss_gib"],
    }
    return report


def probe_sets(unseen: list[str], n: int, seed: int, drift: int) -> tuple[list[str], list[str]]:
    """Two disjoint draws of ``n`` prompts from the unseen pool, neither one of the gate's ``drift`` prompts
    (the pool's last, ``ChatWorld.general_prompts``): the base is measured on the first, the promoted version on
    the second.  Every prompt asked through the API is recorded, and a world with no replay of its own replays
    what users asked before, the rules in force shown to its teacher (``Controller._replay``): asked before the
    cycle, the prompts the version is measured on after it would have been taught the rule."""
    usable = unseen[: max(0, len(unseen) - drift)]
    if 2 * n > len(usable):
        raise ValueError(f"{n} probes twice need {2 * n} unseen prompts; the pool has {len(usable)} besides the "
                         f"{drift} drift prompts")
    drawn = random.Random(f"bench-chat-{seed}").sample(usable, 2 * n)
    return drawn[:n], drawn[n:]


__all__ = ["run_chat_bench", "TARGETS", "probe_sets"]
