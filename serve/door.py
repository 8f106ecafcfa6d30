"""The serving side's door: the names the application, its ingress, its replicas and the weight broadcaster
share, in one small module they all import (and that imports none of them, so there is no cycle).

- ``APP_NAME``, ``LLM_DEPLOYMENT``, ``INGRESS_DEPLOYMENT``: the Serve application and its two deployments.
- ``INSTALL``, ``STATUS``: the replica methods the broadcaster calls on every replica (``serve/replica.py``
  defines them under these names; a test checks they exist).
- ``ReplicaReport``: what a replica answers to either call.
- ``MARKER``: the key of the first item a replica yields for a request, which carries the version and the
  replica that answer it; the ingress turns it into the ``x-reverie-version`` header.
"""
from __future__ import annotations

from typing import TypedDict

APP_NAME = "reverie"
LLM_DEPLOYMENT = "ReverieLLMServer"
INGRESS_DEPLOYMENT = "ReverieIngress"

INSTALL = "reverie_install"  # (version, message: reverie.weight_sync.WeightMessage, mode, timeout_s) -> ReplicaReport
STATUS = "reverie_status"  # () -> ReplicaReport (without ok/previous/seconds)

MARKER = "__reverie__"


class ReplicaReport(TypedDict, total=False):
    replica: str  # Serve's replica id
    node: str  # the Ray node it runs on
    ok: bool  # the install succeeded (an install never raises: a failure is ok False and an error)
    error: str
    version: int | None  # the version its active engine serves (None: weights of no registered version)
    checksum: str | None  # of what its active engine loaded (reverie.weight_sync)
    previous: int | None
    transport: str  # how the weights came (shm, object_store)
    seconds: float
    receive_seconds: float
    drain_seconds: float
    pause_seconds: float
    load_seconds: float
    # STATUS only
    actor: str | None
    standby_version: int | None
    inflight: int
    swapping: bool
