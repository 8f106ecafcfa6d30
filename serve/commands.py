"""The ``reverie serve`` and ``reverie bench swap`` commands (wired into ``reverie.cli`` by ``register``)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from reverie.errors import ReverieError, check_model_dir
from serve.app import SWAP_MODES


def _int_in(text: str, what: str, lo: int, hi: int) -> int:
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise ReverieError(f"{what} must be a whole number from {lo} to {hi}, got {text!r}") from None
    if not lo <= n <= hi:
        raise ReverieError(f"{what} must be a whole number from {lo} to {hi}, got {text!r}")
    return n


def _seconds(text: str, what: str) -> float:
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise ReverieError(f"{what} must be a number of seconds, got {text!r}") from None
    if not 0 < x <= 3600:
        raise ReverieError(f"{what} must be between 0 and 3600 seconds, got {text!r}")
    return x


def _interrupt(*_):
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> int:
    from serve.app import ServeConfig
    from serve.auth import ADMIN_ENV, API_ENV, load_keys

    model = check_model_dir(args.model)
    replicas = _int_in(args.replicas, "--replicas", 1, 64)
    port = _int_in(args.port, "--port", 1, 65535)
    if args.swap_mode not in SWAP_MODES:
        raise ReverieError(f"--swap-mode must be one of {', '.join(SWAP_MODES)}, got {args.swap_mode!r}")
    cfg = ServeConfig(model_dir=model, data_dir=args.data_dir, versions_dir=args.versions_dir, replicas=replicas,
                      host=args.host, port=port, swap_mode=args.swap_mode,
                      swap_timeout_s=_seconds(args.swap_timeout, "--swap-timeout"),
                      pin_cpus=args.address is None and not args.no_cpu_pinning)  # on a cluster: the operator's
    try:
        cfg.resolved_versions_dir()
    except ValueError as e:
        raise ReverieError(str(e)) from None
    keys, generated = load_keys(args.key_file)

    import ray
    from ray import serve

    from actors.versions import VersionError
    from serve.app import APP_NAME, Deployment, init_ray

    init_ray(args.address, num_cpus=max(8, 2 * replicas + 2), cpu_plan=cfg.cpu_plan())  # each replica reserves 2
    dep = None
    # Ctrl-C and SIGTERM both end in a clean shutdown.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            dep = Deployment(cfg, keys.digests())
        except VersionError as e:
            raise ReverieError(str(e)) from None
        print(f"reverie: starting {replicas} replica(s) of {model} ...", file=sys.stderr, flush=True)
        while True:
            st = serve.status().applications.get(APP_NAME)
            if st is not None and st.status == "RUNNING":
                break
            if st is not None and st.status == "DEPLOY_FAILED":
                raise ReverieError(f"the application failed to start: {st.message.splitlines()[-1] if st.message else ''}")
            time.sleep(1)
        promoted = dep.registry.promoted().version
        where = ("the environment variables " + API_ENV + " and " + ADMIN_ENV if keys.source == "environment"
                 else f"the key file {keys.source} ({'just generated, ' if generated else ''}keys 'api_key' and 'admin_key')")
        print(f"reverie: serving model 'reverie' (policy version {promoted}) at {dep.base_url}/v1", flush=True)
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
    from serve.bench import run_bench

    if args.params not in ("100M", "tiny"):
        raise ReverieError(f"--params must be 100M or tiny, got {args.params!r}")
    if args.swap_mode not in SWAP_MODES:
        raise ReverieError(f"--swap-mode must be one of {', '.join(SWAP_MODES)}, got {args.swap_mode!r}")
    import contextlib

    # Ray prints shutdown notices on stdout; they go to stderr so stdout is one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_bench(swap_mode=args.swap_mode, pin_cpus=not args.no_cpu_pinning,
            swap_interval=_seconds(args.swap_interval, "--swap-interval"),
            params=args.params, replicas=_int_in(args.replicas, "--replicas", 1, 16),
            concurrency=_int_in(args.concurrency, "--concurrency", 1, 1024),
            swaps=_int_in(args.swaps, "--swaps", 1, 1000), max_tokens=_int_in(args.max_tokens, "--max-tokens", 1, 200),
            progress=lambda m: print(f"reverie: {m}", file=sys.stderr, flush=True),
        )
    print(json.dumps(report) if args.json else "\n".join(f"{k:32} {v}" for k, v in report.items()))
    return 0


def register(subparsers) -> None:
    """Add ``serve`` and ``bench`` to ``reverie``'s subcommands."""
    from simulators.tinyworld.build import SHIPPED_MODEL

    s = subparsers.add_parser("serve", help="serve the model behind an OpenAI-compatible API (Ray Serve + vLLM) that "
                                            "records experience and feedback and hot-swaps versions")
    s.add_argument("--model", default=str(SHIPPED_MODEL), help="model directory (default: the shipped tiny-world model)")
    s.add_argument("--replicas", default="1", help="vLLM engine replicas (default %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    s.add_argument("--port", default="8000", help="HTTP port (default %(default)s)")
    s.add_argument("--address", default=None, help="join this Ray cluster instead of starting a private one")
    s.add_argument("--data-dir", default="./reverie-data", help="experience store: a path or pyarrow.fs URI "
                                                                "(default %(default)s)")
    s.add_argument("--versions-dir", default=None, help="local directory of policy versions (default: DATA_DIR/versions)")
    s.add_argument("--key-file", default=None, help="JSON key file (default ~/.config/reverie/keys.json; "
                                                    "REVERIE_API_KEY/REVERIE_ADMIN_KEY take precedence)")
    s.add_argument("--swap-mode", default="wait", help="in-flight requests during a swap: wait (drain them, "
                   "default), keep (pause them and continue on the new weights), abort (end them), or standby "
                   "(each replica keeps a second engine: the new version loads there and new requests switch to "
                   "it while running ones finish on the old one; twice the engine memory)")
    s.add_argument("--no-cpu-pinning", action="store_true", help="leave every process free to run on every core "
                   "(default without --address, one replica and no GPU: the engine's worker gets every core but the "
                   "last, Ray and Serve the last)")
    s.add_argument("--swap-timeout", default="120", help="seconds a swap may take before it is undone (default %(default)s)")
    s.set_defaults(func=cmd_serve)

    b = subparsers.add_parser("bench", help="benchmarks")
    bs = b.add_subparsers(dest="bench", required=True)
    w = bs.add_parser("swap", help="hot-swap latency and serving throughput under streaming load")
    w.add_argument("--params", default="100M", help="100M (a random ~100M-parameter Llama, default) or tiny")
    w.add_argument("--replicas", default="1", help="replicas (default %(default)s)")
    w.add_argument("--concurrency", default="32", help="concurrent streaming clients (default %(default)s)")
    w.add_argument("--swaps", default="10", help="swaps to perform (default %(default)s)")
    w.add_argument("--max-tokens", default="32", help="tokens per request (default %(default)s)")
    w.add_argument("--swap-mode", default="wait", help="wait (default), keep, abort or standby: see reverie serve --help")
    w.add_argument("--swap-interval", default="1", help="seconds between one swap's end and the next one's start "
                   "(default %(default)s)")
    w.add_argument("--no-cpu-pinning", action="store_true", help="leave every process free to run on every core "
                   "(default: on a CPU-only machine the engine's worker keeps its cores to itself, raw and served alike)")
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.set_defaults(func=cmd_bench_swap)
