"""The ``reverie serve`` and ``reverie bench swap`` commands (wired into ``reverie.cli`` by ``register``)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from reverie import args as check
from reverie.config import SWAP_MODES
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


def cmd_bench_swap(args: argparse.Namespace) -> int:
    from bench.swap import PARAMS, run_bench

    check.choice(args.params, "--params", PARAMS)
    check.choice(args.swap_mode, "--swap-mode", (*SWAP_MODES, "restart"))
    import contextlib

    # Ray prints shutdown notices on stdout; they go to stderr so stdout is one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        if args.swap_mode == "restart":  # the baseline: no hot swap, the server restarted on the new weights
            from bench.restart import run_restart_bench

            report = run_restart_bench(
                params=args.params, concurrency=check.int_in(args.concurrency, "--concurrency", 1, 1024),
                restarts=check.int_in(args.swaps, "--swaps", 1, 1000),
                max_tokens=check.int_in(args.max_tokens, "--max-tokens", 1, 200),
                progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
        else:
            report = run_bench(swap_mode=args.swap_mode, pin_cpus=not args.no_cpu_pinning,
                swap_interval=check.seconds(args.swap_interval, "--swap-interval"),
                params=args.params, replicas=check.int_in(args.replicas, "--replicas", 1, 16),
                concurrency=check.int_in(args.concurrency, "--concurrency", 1, 1024),
                swaps=check.int_in(args.swaps, "--swaps", 1, 1000),
                max_tokens=check.int_in(args.max_tokens, "--max-tokens", 1, 200),
                progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True),
            )
    print(json.dumps(report) if args.json else "\n".join(f"{k:32} {v}" for k, v in report.items()))
    return 0


def cmd_bench_load(args: argparse.Namespace) -> int:
    import contextlib

    from reverie.results import write_result
    from bench.load import run_load

    kwargs = dict(concurrency=check.int_in(args.concurrency, "--concurrency", 1, 1024),
                  seconds=check.seconds(args.seconds, "--seconds"),
                  swap_every=check.seconds(args.swap_every, "--swap-every"),
                  min_swaps=check.int_in(args.swaps, "--swaps", 0, 1000),
                  max_tokens=check.int_in(args.max_tokens, "--max-tokens", 1, 200),
                  replicas=check.int_in(args.replicas, "--replicas", 1, 16))
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; stdout stays one JSON object
        report = run_load(**kwargs, progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    report = write_result(report, args.out)
    print(json.dumps(report) if args.json else "\n".join(f"{k:28} {v}" for k, v in report.items()))
    print(f"reverie: wrote {args.out}", file=sys.stderr)
    return 0


def cmd_bench_cycle(args: argparse.Namespace) -> int:
    import contextlib

    from bench.cycle import run_bench
    from reverie.results import write_result

    steps = check.positive(args.steps, "--steps")
    timeout = check.seconds(args.timeout, "--timeout")
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; stdout stays one JSON object
        report = run_bench(steps=steps, timeout_s=timeout, pin_cpus=not args.no_cpu_pinning, dream=args.dream,
                           progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    report = write_result(report, args.out)
    print(json.dumps(report) if args.json else "\n".join(f"{k:28} {v}" for k, v in report.items()))
    print(f"reverie: wrote {args.out}", file=sys.stderr)
    return 0


def cmd_bench_transport(args: argparse.Namespace) -> int:
    import contextlib

    from reverie.results import write_result
    from bench.swap import PARAMS
    from bench.transport import run_transport_bench

    params = check.choice(args.params, "--params", PARAMS)
    swaps = check.int_in(args.swaps, "--swaps", 1, 100)
    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; stdout stays one JSON object
        report = run_transport_bench(params=params, swaps=swaps,
                                     progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True))
    report = write_result(report, args.out)
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    print(f"reverie: wrote {args.out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``serve`` and ``bench`` to ``reverie``'s subcommands."""
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

    b = subparsers.add_parser("bench", help="benchmarks")
    bs = b.add_subparsers(dest="bench", required=True)
    w = bs.add_parser("swap", help="hot-swap latency and serving throughput under streaming load")
    w.add_argument("--params", default="100M", help="100M (a random ~100M-parameter Llama, default), 25M, or tiny (the shipped model)")
    w.add_argument("--replicas", default="1", help="replicas (default %(default)s)")
    w.add_argument("--concurrency", default="32", help="concurrent streaming clients (default %(default)s)")
    w.add_argument("--swaps", default="10", help="swaps to perform (default %(default)s)")
    w.add_argument("--max-tokens", default="32", help="tokens per request (default %(default)s)")
    w.add_argument("--swap-mode", default="wait", help="wait (default), keep, abort or standby: see reverie serve --help; "
                   "restart: the baseline without hot swap, vLLM's own server restarted on each new version")
    w.add_argument("--swap-interval", default="1", help="seconds between one swap's end and the next one's start "
                   "(default %(default)s)")
    w.add_argument("--no-cpu-pinning", action="store_true", help="leave every process free to run on every core "
                   "(default: on a CPU-only machine the engine's worker keeps its cores to itself, raw and served alike)")
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.set_defaults(func=cmd_bench_swap)
    ld = bs.add_parser("load", help="many clients through the API while versions are swapped; then the store is "
                                     "checked against what was answered (lost, duplicated, mixed-version answers)")
    ld.add_argument("--concurrency", default="64", help="concurrent clients (default %(default)s)")
    ld.add_argument("--seconds", default="60", help="how long the load runs (default %(default)s)")
    ld.add_argument("--swap-every", default="10", help="seconds between swaps (default %(default)s)")
    ld.add_argument("--swaps", default="0", help="the fewest swaps tried: the load goes on past --seconds until this "
                    "many were tried (a slow machine's swaps take longer; default %(default)s)")
    ld.add_argument("--max-tokens", default="16", help="tokens per request (default %(default)s)")
    ld.add_argument("--replicas", default="1", help="serving replicas (default %(default)s)")
    ld.add_argument("--out", default="bench/results/load.json", help="result file (default %(default)s)")
    ld.add_argument("--json", action="store_true", help="print one JSON object")
    ld.set_defaults(func=cmd_bench_load)
    c = bs.add_parser("cycle", help="from a rule given as feedback to the first answer served by a promoted "
                                    "version that follows it (the whole loop, auto-approval, tiny world)")
    c.add_argument("--steps", default="120", help="learner updates in the cycle (default %(default)s)")
    c.add_argument("--timeout", default="1200", help="seconds to wait for the new version (default %(default)s)")
    c.add_argument("--out", default="bench/results/cycle.json", help="result file (default %(default)s)")
    c.add_argument("--no-cpu-pinning", action="store_true", help="leave every process free to run on every core")
    c.add_argument("--dream", action="store_true", help="users also play tool episodes first, so the cycle dreams "
                   "on them (a rollout engine and a simulator in the measured memory)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_bench_cycle)
    t = bs.add_parser("transport", help="swap time by weight transport in one run: shm and object_store on one node, "
                                        "object_store across two simulated serving nodes")
    t.add_argument("--params", default="tiny", help="tiny (the shipped model, default), 25M or 100M (random Llamas)")
    t.add_argument("--swaps", default="4", help="swaps per transport and setting (default %(default)s)")
    t.add_argument("--out", default="bench/results/transport.json", help="result file (default %(default)s)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_bench_transport)
    from actors.commands import register_bench

    register_bench(bs)
