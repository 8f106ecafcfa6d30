"""``start_ray`` with no address starts a private Ray, whatever another Ray on this machine left behind."""
from __future__ import annotations

import pytest


@pytest.fixture
def stale_cluster_address():
    """The file in which ``ray start`` (and ``ray.cluster_utils.Cluster``) records the last cluster it started,
    naming one that no longer runs, as a cluster shut down earlier on this machine leaves it; restored after."""
    from pathlib import Path

    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_text() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("127.0.0.1:1")
    yield path
    if before is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(before)


def test_a_private_ray_starts_though_an_earlier_cluster_left_its_address_behind(stale_cluster_address):
    import ray

    from reverie.ray_start import LOOPBACK, start_ray

    assert not ray.is_initialized()
    assert start_ray(num_cpus=2) is True
    try:
        assert ray.cluster_resources()["CPU"] == 2  # its own: not the stale cluster, not any other
        assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {LOOPBACK}
    finally:
        ray.shutdown()
