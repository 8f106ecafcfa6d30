"""Ray for every command, in one place: starting it (``start_ray``: join a cluster at ``address``, or start a
private one on this machine whose every server listens on loopback only), where an actor goes (``placed``: the
node type cluster.yaml declares for it), and keeping the HTTP clients that drive a running system quiet
(``quiet_http_clients``, for the demo and the benchmarks).

A private Ray is given the node address ``127.0.0.1``.  Ray 2.60's ``ray.init`` replaces a loopback node
address by the machine's outward one (``ray._private.services.resolve_ip_for_localhost``), and its servers
(GCS, raylet, agents, every worker) then listen on all interfaces, reachable from any host that can reach this
one.  While the private Ray starts, that replacement is turned off; with the node address left at
``127.0.0.1`` every one of them listens on loopback.  Ray Serve 2.60 then adds one server per replica that
ignores the node address (its inter-deployment gRPC server, on ``[::]:0``, hard-coded in
``ray/serve/_private/replica.py``): ``serve_replicas_on_loopback`` binds it to loopback too, in the replica's
process, where the workers of a private Ray find ``REVERIE_LOOPBACK=1``.  Tested with every listening socket of
the running system: ``tests/serving_app/test_serve.py::test_every_port_of_the_running_system_listens_on_loopback_only``.
These are the two Ray internals this module touches, and nothing else in reverie touches them.  Token
authentication stays on.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "REVERIE_LOOPBACK"  # "1" in the workers of a private Ray
SIMULATOR_SLOTS = 64  # a private Ray offers the resource simulator workers ask for (cluster.yaml's simulator nodes)


@contextlib.contextmanager
def _loopback_kept():
    from ray._private import services

    replace = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = replace


def start_ray(address: str | None = None, *, num_cpus: int | None = None, cpu_plan=None,
              namespace: str | None = "reverie", env_vars: dict | None = None) -> bool:
    """Join ``address``, or start a private Ray on loopback (never ``address='auto'``: another Ray may run
    here); nothing when this process already has Ray.  Workers import from the repository (``PYTHONPATH``);
    ``env_vars`` are added to theirs.  With a ``cpu_plan`` (reverie/cpus.py) a private Ray's processes start
    on the plan's host cores.  True when this call started or joined Ray (the caller then shuts it down)."""
    import ray

    from reverie.cpus import host_only

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT), **(env_vars or {})}}
    if address:
        ray.init(address=address, runtime_env=env, namespace=namespace, log_to_driver=False)
        return True
    env["env_vars"][LOOPBACK_ENV] = "1"
    # address="local": a new Ray, never the one whose address `ray start` (or a cluster since shut down) left
    # in Ray's temporary directory, which ray.init() with no address would join.
    with host_only(cpu_plan), _loopback_kept():
        ray.init(address="local", num_cpus=num_cpus or max(8, os.cpu_count() or 2), include_dashboard=False,
                 runtime_env=env, namespace=namespace, log_to_driver=False, resources={"simulator": SIMULATOR_SLOTS},
                 _node_ip_address=LOOPBACK)
    return True


def serve_replicas_on_loopback() -> None:
    """In a Serve replica's process of a private Ray: its inter-deployment gRPC server listens on loopback, not
    on every interface.  Called when the replica's and the ingress's modules are imported (``serve/replica.py``,
    ``serve/ingress.py``), before the replica starts that server; does nothing on a cluster or when called
    again."""
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    from ray.serve._private import replica

    if getattr(replica.add_port_to_grpc_server, "reverie_loopback", False):
        return
    add_port = replica.add_port_to_grpc_server

    def on_loopback(server, address: str):
        return add_port(server, LOOPBACK + address[len("[::]"):] if address.startswith("[::]:") else address)

    on_loopback.reverie_loopback = True
    replica.add_port_to_grpc_server = on_loopback


HEAD_RESOURCE = "node:__internal_head__"  # every Ray head node offers it
SHARE = 0.001  # of a node type's resource: it says where an actor goes, not how many fit


def placed(node_type: str, units: float = SHARE) -> dict:
    """Ray options that put an actor on a node of ``node_type`` (cluster.yaml's custom resources: ``learner``,
    ``serving``, ``simulator``; or ``head``) when the cluster offers it, and ``{}`` when it does not (one
    machine: anywhere).  ``units`` of the resource are asked for: a share that only says where (the default),
    or whole slots (a serving replica takes one: cluster.yaml's ``serving: 1`` is one replica per node).  Call
    once Ray is up."""
    import ray

    resource = HEAD_RESOURCE if node_type == "head" else node_type
    return {"resources": {resource: units}} if ray.cluster_resources().get(resource, 0) > 0 else {}


HTTP_CLIENT_LOGGERS = ("httpx", "httpx2", "openai")  # openai 3 sends through httpx2, which logs as "httpx2"


def quiet_http_clients() -> None:
    """No log line per HTTP request from the clients a command drives the API with (under Ray's logging setup
    they show at INFO): the demo and the benchmarks print their own progress."""
    import logging

    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------ what every node must see
PROBE = ".reverie-shared-probe-"  # + a token: written into a directory every node must share, looked for on each


def _sees(paths: dict, token: str) -> dict:
    """On one node: for each name, what it finds at its path: ``shared``, whether the probe with ``token`` is
    there (it is not in another directory); ``copied``, the names and sizes of its weights and JSON files; or
    ``"missing"``, or ``"unreadable: ..."``."""
    out = {}
    for name, (path, how) in paths.items():
        p = Path(path)
        try:
            if not p.is_dir():
                out[name] = "missing"
            elif how == "shared":
                out[name] = (p / (PROBE + token)).is_file()
            else:
                out[name] = sorted([f.name, f.stat().st_size] for f in p.iterdir()
                                   if f.suffix in (".safetensors", ".json") and f.is_file())
        except OSError as e:
            out[name] = f"unreadable: {e.strerror or e}"
    return out


def _label(node: dict) -> str:
    res = node.get("Resources", {})
    kinds = ["head"] * (res.get(HEAD_RESOURCE, 0) > 0) + [k for k in ("learner", "serving", "simulator")
                                                           if res.get(k, 0) > 0]
    return f"node {node['NodeManagerAddress']} {node['NodeID'][:8]} ({', '.join(kinds) or 'no node type'})"


def _other_nodes() -> list[dict]:
    """The live nodes of the cluster other than this process's (none on one machine)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]


def unlike_here(paths: dict, token: str = "") -> list[str]:
    """Each node of the cluster that does not see ``paths`` as this process does, one line per path and node.

    ``paths``: ``{name: (directory, how)}``; ``how`` is ``"shared"`` (the very same directory, a shared file
    system mounted at the same path: the caller has written the probe ``PROBE + token`` into it) or ``"copied"``
    (the same weights and JSON files, by name and size, at the same path).  Every other live node looks in a
    task of its own; on one machine there is none and nothing is run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    others = _other_nodes()
    if not others:
        return []
    expected = _sees(paths, token)
    look = ray.remote(num_cpus=0)(_sees)
    seen = ray.get([look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(paths, token) for n in others], timeout=300)
    lines = []
    for node, found in zip(others, seen):
        for name, (path, how) in paths.items():
            got = found[name]
            if got == expected[name]:
                continue
            if got == "missing":
                why = "does not exist"
            elif isinstance(got, str):
                why = f"is {got}"
            elif how == "shared":
                why = "is another directory (not the same shared file system)"
            else:
                why = "holds other files"
            lines.append(f"{name} {path} {why} on {_label(node)}")
    return lines


def check_shared(versions_dir: str | Path, model_dir: str | Path) -> None:
    """On a cluster, every node must reach the version registry (one shared directory: replicas, the learner,
    the gate and the dreams load versions from it by path) and the model directory (the same files at the same
    path); otherwise a ``ReverieError`` naming each node that does not, before anything starts there.  Nothing
    is run on one machine."""
    import secrets

    from reverie.errors import ReverieError

    if not _other_nodes():
        return  # one machine: no probe written, no task run
    token = secrets.token_hex(8)
    probe = Path(versions_dir) / (PROBE + token)
    probe.write_text(token)
    try:
        lines = unlike_here({"--versions-dir": (str(versions_dir), "shared"),
                             "the model directory": (str(model_dir), "copied")}, token)
    finally:
        probe.unlink(missing_ok=True)
    if lines:
        raise ReverieError("on a cluster, --versions-dir must be one shared file system mounted at the same path "
                           "on every node, and the model directory must be at the same path on every node: "
                           + "; ".join(lines))
