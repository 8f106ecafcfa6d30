"""The ``reverie serve`` command (gathered into ``reverie.cli`` by ``register``)."""
from __future__ import annotations

import argparse
import signal
import sys
import time

from reverie.errors import ReverieError


def _interrupt(*_):
    raise KeyboardInterrupt


def serve_config(args: argparse.Namespace):
    """The ``ServeConfig`` of ``reverie serve``: defaults < ``--config FILE`` < the flags given."""
    from reverie.config_file import build_config, flags_given, load_config
    from simulators.tinyworld.build import SHIPPED_MODEL

    file_values = load_config(args.config) if args.config else {}
    flags = flags_given(args)
    if args.address is not None:
        flags["pin_cpus"] = False  # on a cluster, CPU placement is the operator's
    return build_config(file_values, flags, source=args.config,
                        defaults={"model_dir": str(SHIPPED_MODEL), "pin_cpus": True})


def cmd_serve(args: argparse.Namespace) -> int:
    from serve.auth import ADMIN_ENV, API_ENV, load_keys

    cfg = serve_config(args)  # every refusal of the flags or the config file comes before Ray starts
    if cfg.loop.learn:
        from simulators.world import load_world

        load_world(cfg.world_name())  # a plug-in that does not load is refused before Ray starts too
    model, replicas = cfg.model_dir, cfg.replicas
    keys, generated = load_keys(args.key_file)

    import ray
    from ray import serve

    from reverie.versions import VersionError
    from reverie.ray_start import start_ray
    from serve.app import Deployment

    start_ray(args.address, num_cpus=max(8, 2 * replicas + 2), cpu_plan=cfg.cpu_plan())  # each replica reserves 2
    dep = None
    # Ctrl-C and SIGTERM both end in a clean shutdown.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            dep = Deployment(cfg, keys.digests(), detached=True)  # the controller outlives this driver
        except VersionError as e:
            raise ReverieError(str(e)) from None
        print(f"reverie: starting {replicas} replica(s) of {model} ...", file=sys.stderr, flush=True)
        try:
            dep.wait_until_running(timeout_s=3600)
        except RuntimeError as e:
            raise ReverieError(str(e)) from None
        promoted = dep.registry.promoted().version
        where = ("the environment variables " + API_ENV + " and " + ADMIN_ENV if keys.source == "environment"
                 else f"the key file {keys.source} ({'just generated, ' if generated else ''}keys 'api_key' and 'admin_key')")
        print(f"reverie: serving model '{cfg.model_id}' (policy version {promoted}) at {dep.base_url}/v1", flush=True)
        print(f"reverie: authenticate with 'Authorization: Bearer <api_key>'; admin routes (/admin/*) need the admin key; "
              f"keys are in {where}", flush=True)
        print(f"reverie: experience is recorded under {cfg.data_dir}; press Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("reverie: shutting down", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if dep is not None:
            dep.shutdown()
        serve.shutdown()
        ray.shutdown()
    print("reverie: stopped", file=sys.stderr, flush=True)
    return 0


def register(subparsers) -> None:
    """Add ``serve`` to ``reverie``'s subcommands."""
    from simulators.tinyworld.build import SHIPPED_MODEL

    from reverie.config_file import SERVE_FLAGS, default, flag_dest

    s = subparsers.add_parser("serve", help="serve the model behind an OpenAI-compatible API (Ray Serve + vLLM) that "
                                            "records experience and feedback, learns from it and hot-swaps versions",
                              description="Settings come from the defaults, then --config FILE, then the flags "
                                          "given; every flag but --address and --key-file sets a config field "
                                          "(see reverie/config_file.py for the file's format).")

    def flag(field: str, help: str, **kw) -> None:
        """A flag that sets the config ``field``; None when left out, so that the file's value stands."""
        s.add_argument(SERVE_FLAGS[field], dest=flag_dest(field), default=None, help=help, **kw)

    s.add_argument("--config", default=None, metavar="FILE", help="a YAML config file (reverie/config_file.py); "
                   "flags given override it")
    flag("model_dir", f"model directory (default: the shipped tiny-world model, {SHIPPED_MODEL})", metavar="DIR")
    flag("world", "the world the loop is taught in: tiny (the tiny world's families, retention suite and dreams), "
         "chat (instruct models: facts, stated rules checked by code, published benchmarks as retention), "
         "none (any model: feedback alone, a retention suite file for the gate), or a plug-in as "
         "package.module:Class (default: tiny for the shipped tiny-world model, none for any other)",
         metavar="WORLD")
    flag("replicas", f"vLLM engine replicas (default {default('replicas')})", metavar="N")
    flag("host", f"address to bind (default {default('host')})")
    flag("port", f"HTTP port (default {default('port')})")
    s.add_argument("--address", default=None, help="join this Ray cluster instead of starting a private one "
                   "(deployment, not config)")
    flag("data_dir", f"experience store: a path or pyarrow.fs URI (default {default('data_dir')})", metavar="DIR")
    flag("versions_dir", "local directory of policy versions (default: DATA_DIR/versions)", metavar="DIR")
    s.add_argument("--key-file", default=None, help="JSON key file (default ~/.config/reverie/keys.json; "
                                                    "REVERIE_API_KEY/REVERIE_ADMIN_KEY take precedence)")
    flag("swap_mode", "in-flight requests during a swap: wait (drain them), keep (pause them and continue on the "
         "new weights), abort (end them), or standby (each replica keeps a second engine: the new version loads "
         "there and new requests switch to it while running ones finish on the old one; twice the engine "
         f"memory) (default {default('swap_mode')})", metavar="MODE")
    flag("pin_cpus", "leave every process free to run on every core (default without --address, one replica and "
         "no GPU: the engine's worker gets every core but the last, Ray and Serve the last)",
         action="store_const", const=False)
    flag("redact_feedback", "show feedback text (rules, corrections) to people as \"[redacted: N characters]\" in "
         "the admin API, the review page and reverie review; the store keeps it, the learner and the gate use it "
         "(default: shown)", action="store_const", const=True)
    flag("swap_timeout_s", f"seconds a swap may take before it is undone (default {default('swap_timeout_s'):g})",
         metavar="SECONDS")
    flag("loop.learn", "serve and record only: no learning cycles (default: learn)", action="store_const",
         const=False)
    flag("loop.approval", "auto: a candidate that passes the gate is promoted; required: it waits for a person "
         f"(reverie review / approve / reject) (default {default('loop.approval')})", metavar="auto|required")
    flag("loop.min_feedback", "new feedback records with a rule or a correction that start a learning cycle "
         f"(default {default('loop.min_feedback')})", metavar="N")
    flag("loop.steps", f"learner updates per cycle (default {default('loop.steps')})", metavar="N")
    s.set_defaults(func=cmd_serve)
