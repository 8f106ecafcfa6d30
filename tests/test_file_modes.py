"""What reverie writes atomically (a hidden temporary file or directory, renamed into place) ends with the mode any
new file or directory of the process gets, as its umask says: ``mkstemp`` and ``mkdtemp`` make 0600 files and 0700
directories, and a rename keeps that mode, so a version's weights, a checkpoint or the registry would be readable by
their owner alone (a serving process of another user, a cluster node's other account, a backup could not read
them)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from learner.checkpoint import export_model, save_checkpoint
from learner.model import ModelShape, build_model
from reverie.files import atomic_write_json
from reverie.versions import VersionRegistry


@pytest.fixture
def umask_027():
    before = os.umask(0o027)
    yield 0o027
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_is_read_without_changing_it(umask_027):
    from reverie.files import current_umask

    assert current_umask() == 0o027 and current_umask() == 0o027


def test_files_and_directories_put_in_place_get_the_mode_the_umask_gives(tmp_path, umask_027):
    file_mode, dir_mode = 0o666 & ~umask_027, 0o777 & ~umask_027  # 0o640, 0o750
    atomic_write_json(tmp_path / "state.json", {"a": 1})
    assert mode(tmp_path / "state.json") == file_mode

    model = build_model(ModelShape(hidden=64, layers=2, heads=2, intermediate=128), 97, pad_id=0, eos_id=1, seed=0)
    exported = export_model(model, tmp_path / "exported")
    ckpt = save_checkpoint(tmp_path / "ckpts", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           step=1, version=1)
    registry = VersionRegistry(tmp_path / "versions")
    version = registry.register(exported, source="base")
    placed = [exported, ckpt, registry.version_dir(version.version)]
    for d in placed:
        assert mode(d) == dir_mode, (d, oct(mode(d)))
        for f in d.iterdir():
            assert mode(f) == (dir_mode if f.is_dir() else file_mode), (f, oct(mode(f)))
    for f in (tmp_path / "versions").rglob("*"):
        assert mode(f) == (dir_mode if f.is_dir() else file_mode), (f, oct(mode(f)))
