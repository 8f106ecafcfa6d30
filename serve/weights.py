"""Moving weights into a running vLLM engine: bucket files under the version registry and
the worker extension that installs them with vLLM's in-place reload.

A new version travels as a few safetensors files ("buckets", at most
``bucket_bytes`` each) written once under the version registry: a safetensors file is a packed
buffer with a small JSON manifest (name, dtype, shape, offset) in front, so
the engine's worker maps it and reads the tensors without copies through
Python objects.  Only file paths cross ``collective_rpc`` (tensors passed as
RPC arguments arrive as lists and kill the engine).  Safetensors never runs
code, so nothing from a request or a checkpoint can execute.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch

BUCKET_BYTES = 256 << 20


class WeightsMismatch(ValueError):
    """A state dict that does not fit the served model (names, shapes)."""


def reference_shapes(weight_files: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of the served model's checkpoint, read from safetensors headers only."""
    from safetensors import safe_open

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in weight_files:
        with safe_open(path, framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(sl.get_shape()), sl.get_dtype())
    return out


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def check_state_dict(state: Mapping[str, torch.Tensor], reference: dict) -> dict[str, torch.Tensor]:
    """The state dict, cast to the reference dtypes, or ``WeightsMismatch`` naming what differs."""
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise WeightsMismatch(
            f"weights do not match the served model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    out = {}
    for name, (shape, dtype) in reference.items():
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise WeightsMismatch(f"weight {name!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != shape:
            raise WeightsMismatch(f"weight {name!r} has shape {tuple(t.shape)}, the served model has {shape}")
        if not torch.isfinite(t).all():
            raise WeightsMismatch(f"weight {name!r} has non-finite values")
        out[name] = t.detach().to(device="cpu", dtype=_DTYPES.get(dtype, t.dtype)).contiguous()
    return out


def check_files(files: list[str], reference: dict) -> None:
    """Safetensors ``files`` fit the served model: the same names, shapes and dtypes as ``reference``, and
    every value finite; ``WeightsMismatch`` with a one-line reason otherwise.  Headers are compared before
    any tensor is read."""
    from safetensors import safe_open

    if not files:
        raise WeightsMismatch("there are no safetensors weight files")
    try:
        found = reference_shapes(list(files))
    except Exception as e:  # noqa: BLE001 - a missing, truncated or foreign file: the caller's one-line refusal
        raise WeightsMismatch(f"cannot read weight headers: {' '.join(str(e).split())}") from None
    missing, unexpected = sorted(set(reference) - set(found)), sorted(set(found) - set(reference))
    if missing:
        raise WeightsMismatch(f"the weights lack {len(missing)} tensor(s) of the served model, first {missing[0]!r}")
    if unexpected:
        raise WeightsMismatch(f"the weights have {len(unexpected)} unexpected tensor(s), first {unexpected[0]!r}")
    for name, (shape, dtype) in reference.items():
        if found[name] != (shape, dtype):
            raise WeightsMismatch(f"weight {name!r} is {found[name][1]} {list(found[name][0])}, the served model's "
                                  f"is {dtype} {list(shape)}")
    for path in files:
        with safe_open(path, framework="pt") as f:
            for k in f.keys():
                if not torch.isfinite(f.get_tensor(k)).all():
                    raise WeightsMismatch(f"weight {k!r} has non-finite values (NaN or inf)")


def pack_buckets(state: Mapping[str, torch.Tensor], directory: Path, bucket_bytes: int = BUCKET_BYTES) -> list[Path]:
    """Write ``state`` as safetensors buckets of at most ``bucket_bytes`` (one tensor may exceed it) into ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    buckets: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if buckets[-1] and size + n > bucket_bytes:
            buckets.append({})
            size = 0
        buckets[-1][name] = t
        size += n
    paths = []
    for i, bucket in enumerate(buckets):
        final = directory / f"bucket-{i:04d}.safetensors"
        tmp = directory / f".bucket-{i:04d}.tmp"
        save_file(bucket, str(tmp))
        os.replace(tmp, final)
        paths.append(final)
    return paths


def load_state_files(files: list[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


class WeightSwapExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``); called through ``collective_rpc``.

    Returns a status dict instead of raising, so a bad file never kills the engine.
    """

    def reverie_load_weights(self, paths: list[str]) -> dict:
        """Reload the engine's weights from safetensors ``paths``; the result carries the checksum of what the
        engine was given (``reverie.weight_sync``: per file, combined in order), which the sender compares with
        the version's own."""
        from reverie.weight_sync import Digesting, combine, tensors_of

        t0 = time.perf_counter()
        try:
            for p in paths:
                if not isinstance(p, str) or not p.endswith(".safetensors") or not os.path.isfile(p):
                    raise FileNotFoundError(f"not a safetensors file: {p!r}")
            checksums: list[str] = []
            count = 0

            def counted():
                nonlocal count
                for p in paths:
                    d = Digesting(tensors_of([p]))
                    yield from d
                    count += d.count
                    checksums.append(d.hexdigest())

            if hasattr(self, "reload_weights"):
                self.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
            else:  # older vLLM
                self.model_runner.model.load_weights(counted())
            checksum = combine(checksums) if len(checksums) == len(paths) else "incomplete"
            return {"ok": True, "tensors": count, "checksum": checksum, "seconds": time.perf_counter() - t0}
        except Exception as e:  # reported to the replica, which fails the swap loudly
            return {"ok": False, "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
