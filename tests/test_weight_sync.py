"""The weight-sync interface's own rules, without an engine (the serving tests run it through real replicas:
``tests/serving_app/test_serve.py``, and across simulated nodes: ``tests/test_cluster_weights.py``)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from reverie.weight_sync import (NCCL, SHM, Digesting, TransportError, WeightMessage, WeightReceiver, WeightSender,
                                 combine, tensors_of)
from serve.weights import pack_buckets


def _buckets(tmp_path, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    state = {f"layer{i}.weight": torch.randn(64, 32, generator=g) for i in range(4)}
    state["norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
    return [str(p) for p in pack_buckets(state, tmp_path / f"v{seed}", bucket_bytes=16 << 10)]


def test_the_senders_checksum_is_what_an_engine_given_the_same_files_reports(tmp_path):
    files = _buckets(tmp_path)
    assert len(files) > 1
    message = WeightSender(SHM).send(3, files)
    per_file = []
    for f in files:  # what the worker extension does while the engine consumes the tensors
        d = Digesting(tensors_of([f]))
        assert sum(1 for _ in d) > 0
        per_file.append(d.hexdigest())
    assert combine(per_file) == message.checksum
    assert [b.checksum for b in message.buckets] == per_file


def test_other_weights_of_the_same_shapes_have_another_checksum(tmp_path):
    a = WeightSender(SHM).send(1, _buckets(tmp_path, seed=0))
    b = WeightSender(SHM).send(2, _buckets(tmp_path, seed=1))
    assert a.checksum != b.checksum


def test_a_report_with_another_checksum_is_a_failed_install_naming_both(tmp_path):
    message = WeightSender(SHM).send(5, _buckets(tmp_path))
    good = {"replica": "a", "ok": True, "checksum": message.checksum}
    wrong = {"replica": "b", "ok": True, "checksum": "0" * 64}
    (bad,) = WeightSender.check(message, [good, wrong])
    assert bad["replica"] == "b" and not bad["ok"]
    assert "000000000000" in bad["error"] and message.checksum[:12] in bad["error"] and "version 5" in bad["error"]


def test_shared_memory_on_another_node_is_refused_not_read(tmp_path):
    message = dataclasses.replace(WeightSender(SHM).send(4, _buckets(tmp_path)), node="0123456789abcdef-other")
    with pytest.raises(TransportError, match="on node 0123456789ab.*send it through the object store"):
        WeightReceiver(tmp_path / "shm").receive(message)


def test_the_nccl_slot_and_unknown_transports_are_refused_in_one_line(tmp_path):
    with pytest.raises(TransportError, match="nccl .* not built"):
        WeightSender(NCCL).send(1, _buckets(tmp_path))
    with pytest.raises(ValueError, match="unknown weight transport 'pigeon'"):
        WeightSender("pigeon")
    message = WeightMessage(1, "carrier", "local", (), "x")
    with pytest.raises(TransportError, match="'carrier'"):
        WeightReceiver(tmp_path / "shm").receive(message)
