"""Stopping the controller (``reverie serve`` ending, the demo's time up) while its learner steps run: the learn
step ends between two updates, on a real Ray with the experience store actor and a learner actor."""
from __future__ import annotations

import threading
import time

import msgpack

from simulators.tinyworld import world as W
from simulators.tinyworld.build import SHIPPED_MODEL


def _taught(store, n: int) -> None:
    """``n`` asked facts, each answered wrong and corrected through feedback, as the ingress records them."""
    now = time.time()
    for i, fact in enumerate(W.world().new_facts[:n]):
        ask = W.QUESTION_TEMPLATES[0].format(attr=fact.attr, ent=fact.ent)
        store.append.remote("interactions", [msgpack.packb(
            {"id": f"chatcmpl-{i}", "created": now, "kind": "chat", "model": "reverie", "version": 1,
             "messages": [{"role": "user", "content": ask}], "completion": "i do not know ."}, use_bin_type=True)])
        store.append.remote("feedback", [msgpack.packb(
            {"id": f"fb-{i}", "response_id": f"chatcmpl-{i}", "created": now, "version": 1,
             "correction": fact.sentence()}, use_bin_type=True)])


def test_a_controller_told_to_stop_ends_its_learn_step_between_updates_and_keeps_the_cycle_to_resume(tmp_path):
    """Before: ``ControllerActor.stop`` waited up to a minute for the running learn step, which did not look at
    the stop (the demo ended 54 and 67 s after its time was up).  Now the step ends at the next update; the
    cycle is left in its learn step, not failed, for a restarted controller to resume from its checkpoint."""
    import ray

    from actors.controller import Controller
    from actors.store import start_store
    from reverie.config import LoopConfig, ServeConfig
    from reverie.ray_start import start_ray

    start_ray(num_cpus=4)
    try:
        cfg = ServeConfig(model_dir=SHIPPED_MODEL, data_dir=str(tmp_path / "data"),
                          loop=LoopConfig(min_feedback=4, steps=100_000, checkpoint_every=5, dream=False))
        store = start_store(cfg.data_dir, name=cfg.store_name, flush_seconds=0.2)
        _taught(store, 6)
        ray.get(store.flush.remote())
        ctl = Controller(cfg)
        running = threading.Thread(target=lambda: [ctl.tick() for _ in range(3)], daemon=True)
        running.start()  # the idle look starts the cycle, collect, then the learn step
        deadline = time.monotonic() + 300
        while not (ctl.current is not None and ctl.current.state == "learn" and ctl.current.done >= 7):
            assert running.is_alive() and time.monotonic() < deadline, ctl.current
            time.sleep(0.2)
        ctl.stopping.set()
        running.join(timeout=120)  # 100,000 updates would take a day
        assert not running.is_alive(), "the learn step did not stop"
        c = ctl.current
        assert c.state == "learn" and not c.error and 7 <= c.done < c.total, c
        again = Controller(cfg)  # the state file says where the cycle is
        assert again.current.cycle == c.cycle and again.current.state == "learn" and again.current.done == c.done
        ray.get(store.close.remote())
    finally:
        ray.shutdown()
