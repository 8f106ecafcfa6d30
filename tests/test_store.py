"""The experience store: exactly-once appends, nothing acknowledged lost, no half-written file visible."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pyarrow.dataset as ds
import pytest

from actors.store import ExperienceStoreCore, RecordError, read_table


def rec(i: int, **kw) -> bytes:
    base = {"id": f"r{i}", "created": 1.0 + i, "kind": "chat", "version": 3,
            "messages": [{"role": "user", "content": f"q{i}"}], "completion_token_ids": [1, 2], "logprobs": [-0.1, -0.2]}
    base.update(kw)
    return msgpack.packb(base)


def test_duplicate_ids_are_ignored_within_a_call_across_calls_and_after_a_restart(tmp_path):
    s = ExperienceStoreCore(str(tmp_path), flush_rows=2)
    assert s.append("interactions", [rec(1), rec(1), rec(2)]) == 2
    assert s.append("interactions", [rec(2), rec(3)]) == 1
    s.close()
    s2 = ExperienceStoreCore(str(tmp_path))
    assert s2.append("interactions", [rec(3), rec(4)]) == 1
    s2.close()
    ids = read_table(str(tmp_path), "interactions").column("id").to_pylist()
    assert sorted(ids) == ["r1", "r2", "r3", "r4"]


def test_acknowledged_records_survive_a_crash_before_flush(tmp_path):
    s = ExperienceStoreCore(str(tmp_path), flush_rows=1000, flush_seconds=3600)
    assert s.append("feedback", [msgpack.packb({"id": "f1", "response_id": "r1", "rating": 0.5})]) == 1
    assert read_table(str(tmp_path), "feedback").num_rows == 0  # not flushed yet
    del s  # a crash: no close(), no flush
    s2 = ExperienceStoreCore(str(tmp_path))  # replays the write-ahead log
    rows = read_table(str(tmp_path), "feedback").to_pylist()
    assert [(r["id"], r["rating"]) for r in rows] == [("f1", 0.5)]
    assert s2.append("feedback", [msgpack.packb({"id": "f1", "response_id": "r1"})]) == 0


def test_unknown_fields_are_kept_in_extra_and_get_finds_buffered_and_flushed_rows(tmp_path):
    s = ExperienceStoreCore(str(tmp_path), flush_rows=1000)
    s.append("trajectories", [msgpack.packb({"id": "t1", "task_id": "k", "env": "tools", "policy_version": 2,
                                             "reward": 1.0, "success": True, "simulated": True,
                                             "messages": [{"role": "user", "content": "x"}],
                                             "started": 5.0, "seconds": 0.5, "provenance": "dream",
                                             "seed": 7})])
    assert s.get("trajectories", "t1")["env"] == "tools"
    s.flush()
    row = s.get("trajectories", "t1")
    assert msgpack.unpackb(row["extra"]) == {"seed": 7} and row["simulated"] is True
    assert s.get("trajectories", "nope") is None


@pytest.mark.parametrize("table,records,match", [
    ("interactions", [b"\xc1"], "msgpack"),
    ("interactions", [msgpack.packb({"version": 1})], "id"),
    ("interactions", [msgpack.packb({"id": "a", "version": "three"})], "does not fit"),
    ("nope", [msgpack.packb({"id": "a"})], "unknown table"),
])
def test_bad_records_are_refused_whole_and_nothing_is_written(tmp_path, table, records, match):
    s = ExperienceStoreCore(str(tmp_path))
    with pytest.raises(RecordError, match=match):
        s.append(table, [rec(9)] + records if table == "interactions" else records)
    s.close()
    assert read_table(str(tmp_path), "interactions").num_rows == 0


def test_no_temporary_file_is_visible_to_readers(tmp_path):
    s = ExperienceStoreCore(str(tmp_path), flush_rows=1)
    for i in range(3):
        s.append("interactions", [rec(i)])
    (tmp_path / "interactions" / ".tmp-part-crashed.parquet").write_bytes(b"half a file")
    files = ds.dataset(str(tmp_path / "interactions"), format="parquet").files
    assert len(files) == 3 and all("/part-" in f for f in files)
    assert read_table(str(tmp_path), "interactions").num_rows == 3


def test_a_pyarrow_filesystem_uri_works(tmp_path):
    uri = f"file://{tmp_path}/remote"
    s = ExperienceStoreCore(uri, wal_dir=str(tmp_path / "wal"))
    s.append("interactions", [rec(1)])
    s.close()
    assert read_table(uri, "interactions").column("id").to_pylist() == ["r1"]


def test_pandas_reads_one_row_per_interaction_with_its_token_ids(tmp_path):
    import pandas as pd

    s = ExperienceStoreCore(str(tmp_path), flush_rows=2)
    s.append("interactions", [rec(1), rec(2)])
    s.append("interactions", [rec(3)])
    s.close()
    df = pd.read_parquet(tmp_path / "interactions").sort_values("id")
    assert list(df["id"]) == ["r1", "r2", "r3"]
    assert list(df.iloc[0]["completion_token_ids"]) == [1, 2] and df.iloc[0]["version"] == 3


def test_read_table_by_ids_returns_exactly_those_rows_and_none_for_an_empty_list(tmp_path):
    core = ExperienceStoreCore(str(tmp_path))
    core.append("feedback", [msgpack.packb({"id": f"f{i}", "response_id": "r"}) for i in range(3)])
    core.close()
    assert read_table(str(tmp_path), "feedback", ids=[]).num_rows == 0  # a cycle with no feedback, only dreams
    assert sorted(read_table(str(tmp_path), "feedback", ids=["f0", "f2"]).column("id").to_pylist()) == ["f0", "f2"]
    assert read_table(str(tmp_path), "feedback", ids=["f1"], columns=["id"]).column_names == ["id"]


def test_records_acknowledged_after_a_torn_log_tail_survive_the_next_crash(tmp_path):
    s = ExperienceStoreCore(str(tmp_path), flush_rows=1000, flush_seconds=3600)
    s.append("interactions", [rec(1)])
    s.close()
    torn = rec(2)
    with open(tmp_path / "_wal" / "interactions.msgpack", "ab") as f:  # a crash in the middle of an append
        f.write(torn[: len(torn) // 2])
    s = ExperienceStoreCore(str(tmp_path), flush_rows=1000, flush_seconds=3600)
    assert s.append("interactions", [rec(3), rec(4)]) == 2  # acknowledged
    del s  # a crash: no close(), no flush
    ExperienceStoreCore(str(tmp_path)).close()
    assert sorted(read_table(str(tmp_path), "interactions").column("id").to_pylist()) == ["r1", "r3", "r4"]


def test_a_second_writer_on_one_data_directory_is_refused_with_a_one_line_message(tmp_path):
    from actors.store import StoreBusyError

    s = ExperienceStoreCore(str(tmp_path))
    with pytest.raises(StoreBusyError, match=f"in use by another experience store \\(pid {os.getpid()}\\)") as e:
        ExperienceStoreCore(str(tmp_path))
    assert "\n" not in str(e.value)
    s.append("interactions", [rec(1)])
    s.close()
    ExperienceStoreCore(str(tmp_path)).close()  # closed: the directory is free again
    assert read_table(str(tmp_path), "interactions").num_rows == 1


def test_a_writer_killed_with_sigkill_does_not_leave_its_data_directory_locked(tmp_path):
    code = ("import sys, time; from actors.store import ExperienceStoreCore; "
            f"s = ExperienceStoreCore({str(tmp_path)!r}); print('open', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    try:
        assert p.stdout.readline().strip() == "open"
        from actors.store import StoreBusyError

        with pytest.raises(StoreBusyError, match=f"pid {p.pid}"):
            ExperienceStoreCore(str(tmp_path))
    finally:
        p.kill()
        p.wait()
    ExperienceStoreCore(str(tmp_path)).close()


def test_checking_for_a_writer_claims_nothing(tmp_path):
    from actors.store import check_no_writer

    ExperienceStoreCore(str(tmp_path)).close()
    lock = tmp_path / "_wal" / "writer.lock"
    lock.write_text("12345")  # the last writer, another process
    check_no_writer(str(tmp_path))
    assert lock.read_text() == "12345"


def test_ray_data_reads_only_the_parts_flushed_after_the_watermark(tmp_path):
    """What the controller's look reads (``read_new``): every row flushed since its watermark, through Ray
    Data on a ``pyarrow.fs`` URI, then nothing until the next flush, then only that flush's rows."""
    import ray

    from actors.store import read_new
    from reverie.ray_start import start_ray

    uri = f"file://{tmp_path}/data"
    s = ExperienceStoreCore(uri, wal_dir=str(tmp_path / "wal"))
    started = start_ray(num_cpus=2)
    try:
        s.append("interactions", [rec(1), rec(2)])
        s.flush()
        rows, mark = read_new(uri, "interactions")
        assert sorted(r["id"] for r in rows) == ["r1", "r2"]
        assert rows[0]["messages"] == [{"role": "user", "content": f"q{rows[0]['id'][1:]}"}]
        assert read_new(uri, "interactions", mark) == ([], mark)  # nothing new: no read, the same watermark
        s.append("interactions", [rec(3)])
        s.append("interactions", [rec(4)])  # acknowledged, not flushed yet: not visible
        s.flush()
        s.append("interactions", [rec(5)])
        rows, later = read_new(uri, "interactions", mark, columns=["id", "version"])
        assert sorted(r["id"] for r in rows) == ["r3", "r4"] and later > mark
        assert set(rows[0]) == {"id", "version"}
    finally:
        s.close()
        if started:
            ray.shutdown()


def test_a_look_at_new_parts_starts_no_ray_actors(tmp_path):
    """The controller looks at the store every ``poll_s`` while traffic flushes a part every second.  Ray
    2.60's default Parquet path (DataSourceV2) provisions 32 footer-reader actors, each a new process, for every
    ``read_parquet``, however small.  After the first read (Ray Data's own stats actor), a look must add no
    actor."""
    import ray

    from actors.store import read_new
    from reverie.ray_start import start_ray

    s = ExperienceStoreCore(str(tmp_path / "data"), wal_dir=str(tmp_path / "wal"))
    started = start_ray(num_cpus=2)
    try:
        s.append("interactions", [rec(1)])
        s.flush()
        _, mark = read_new(s.data_dir, "interactions")
        before = set(ray._private.state.actors())  # every actor the cluster has had, dead ones included
        s.append("interactions", [rec(2)])
        s.flush()
        rows, _ = read_new(s.data_dir, "interactions", mark)
        assert [r["id"] for r in rows] == ["r2"]
        added = [a["ActorClassName"] for k, a in ray._private.state.actors().items() if k not in before]
        assert added == [], f"a look at the store started actors: {added}"
    finally:
        s.close()
        if started:
            ray.shutdown()
