"""The experience store: an append-only Parquet dataset, written by one Ray actor.

Layout under the data directory (a local path or any ``pyarrow.fs`` URI)::

    <data_dir>/<table>/part-<ns>-<uuid>.parquet

Records arrive as msgpack bytes (a map with a string ``id``).  Each table has
a fixed Arrow schema (``SCHEMAS``); fields a record carries beyond the schema
are kept, msgpack-encoded, in the binary column ``extra``, so producers can add
fields without breaking readers.

Guarantees:
- exactly once: a record whose id is already stored (in Parquet, or accepted
  and not yet flushed) is ignored; ids are reloaded from the dataset at start,
  so this holds across restarts.
- nothing acknowledged is lost: ``append`` returns only after the records are
  in a write-ahead log (fsynced, on local disk); Parquet files are written in
  batches (``flush_rows`` records or every ``flush_seconds``) and on shutdown,
  and the log is replayed (deduplicated by id) when the store starts again.
- no half-written file is visible: a part is written under a hidden name
  (``.tmp-...``, which ``pyarrow.dataset`` ignores) and then renamed.
- one writer per data directory: a store holds an exclusive lock on its log
  directory (``_wal/writer.lock``) while it is open; a second store on the same
  directory fails with ``StoreBusyError``.  The kernel releases the lock when
  the process ends, so a crashed writer leaves nothing held.  (For a remote
  data directory the log, and so the lock, is on the writer's machine.)
- a torn record at the end of the log (a crash mid-append) is cut off when the
  store starts, so later appends are never written behind it.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

DEFAULT_DATA_DIR = "./reverie-data"
STORE_ACTOR_NAME = "reverie-experience-store"

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

SCHEMAS: dict[str, pa.Schema] = {
    "interactions": pa.schema([
        ("id", pa.string()),  # the OpenAI response id (chatcmpl-..., cmpl-...)
        ("created", pa.float64()),  # unix time the request was dispatched
        ("kind", pa.string()),  # "chat" or "completion"
        ("model", pa.string()),
        ("version", pa.int64()),  # policy version stamped at dispatch
        ("replica", pa.string()),
        ("messages", _MESSAGES),  # chat requests
        ("prompt", pa.string()),  # completion requests
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion", pa.string()),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),  # log-prob of each sampled token, as sampled
        ("finish_reason", pa.string()),
        ("latency_s", pa.float64()),
        ("stream", pa.bool_()),
        ("sampling", pa.string()),  # JSON of the sampling parameters
        ("extra", pa.binary()),
    ]),
    "feedback": pa.schema([
        ("id", pa.string()),
        ("response_id", pa.string()),
        ("created", pa.float64()),
        ("version", pa.int64()),  # the version that produced the response
        ("rating", pa.float64()),
        ("correction", pa.string()),
        ("rule", pa.string()),
        ("approved", pa.bool_()),
        ("extra", pa.binary()),
    ]),
    "trajectories": pa.schema([
        ("id", pa.string()),
        ("task_id", pa.string()),
        ("env", pa.string()),
        ("policy_version", pa.int64()),
        ("reward", pa.float64()),
        ("success", pa.bool_()),
        ("simulated", pa.bool_()),
        ("messages", _MESSAGES),
        ("started", pa.float64()),
        ("seconds", pa.float64()),
        ("provenance", pa.string()),
        ("extra", pa.binary()),
    ]),
}


class RecordError(ValueError):
    """A record that cannot be stored (bad msgpack, no id, a field of the wrong type, unknown table)."""


class StoreBusyError(RuntimeError):
    """Another experience store writes to this data directory (one writer per data directory)."""


def _lock_writer(path: Path, data_dir: str, *, claim: bool = True):
    """Hold an exclusive ``flock`` on ``path`` for as long as the returned file is open.  The kernel drops
    the lock when the process ends, however it ends, so a crashed writer never leaves it held."""
    import fcntl

    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StoreBusyError(
            f"data directory {data_dir!r} is in use by another experience store (pid {holder}): one writer per "
            "data directory; write through that store or stop it first") from None
    if claim:  # the holder's pid, for the message a second writer gets
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
    return f


def _filesystem(data_dir: str) -> tuple[pafs.FileSystem, str]:
    if "://" in str(data_dir):
        return pafs.FileSystem.from_uri(str(data_dir))
    return pafs.LocalFileSystem(), str(Path(data_dir).resolve())


def _schema(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise RecordError(f"unknown table {table!r}; tables are: {', '.join(SCHEMAS)}") from None


def _row(table: str, record: dict) -> dict:
    schema = _schema(table)
    names = set(schema.names) - {"extra"}
    row = {n: record.get(n) for n in names}
    rest = {k: v for k, v in record.items() if k not in names}
    row["extra"] = msgpack.packb(rest, use_bin_type=True) if rest else None
    return row


def check_no_writer(data_dir: str) -> None:
    """Raise ``StoreBusyError`` when an experience store has ``data_dir`` (local) open for writing, so that
    a command can refuse before it starts a cluster; the store itself enforces the rule in any case."""
    fs, base = _filesystem(str(data_dir))
    path = Path(base) / "_wal" / "writer.lock"
    if isinstance(fs, pafs.LocalFileSystem) and path.is_file():
        _lock_writer(path, str(data_dir), claim=False).close()  # only a look: the last writer's pid stays


def read_table(data_dir: str = DEFAULT_DATA_DIR, table: str = "interactions", ids=None, columns=None) -> pa.Table:
    """Every flushed row of ``table`` (no Ray needed), or only those whose id is in ``ids``, with only
    ``columns`` when given; an empty table if nothing was written."""
    schema = _schema(table)
    fs, base = _filesystem(data_dir)
    path = f"{base}/{table}"
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    data = ds.dataset(path, filesystem=fs, format="parquet", schema=schema)
    where = None if ids is None else ds.field("id").isin(pa.array(list(ids), type=pa.string()))
    return data.to_table(filter=where, columns=columns)


def parts(data_dir: str, table: str, after: str = "") -> list[str]:
    """The paths of the table's Parquet parts flushed after the part named ``after`` (a watermark: part names
    begin with their flush time in nanoseconds, so they sort in the order they were written), oldest first."""
    _schema(table)
    fs, base = _filesystem(data_dir)
    path = f"{base}/{table}"
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    names = sorted(i.base_name for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    return [f"{path}/{n}" for n in names if n > after]


def read_new(data_dir: str, table: str, after: str = "", columns=None) -> tuple[list[dict], str]:
    """The rows of every part of ``table`` flushed after the watermark ``after`` (a part's name, ``""``: from
    the start), read with Ray Data (``ray.data.read_parquet``, streamed row by row, only ``columns`` when
    given), and the new watermark: the newest part read.  Nothing new: no read at all, and the same watermark.
    Needs Ray (a driver or an actor of the cluster); the data directory is a path or any ``pyarrow.fs`` URI."""
    import ray
    import ray.data

    if not ray.is_initialized():  # Ray Data would start a Ray of its own here
        raise RuntimeError("read_new reads with Ray Data: connect to Ray first (reverie.ray_start.start_ray)")
    paths = parts(data_dir, table, after)
    if not paths:
        return [], after
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # a reader inside the controller: its log, not a terminal
    # Read tasks, not Ray 2.60's default DataSourceV2 path: that one provisions 32 footer-reader actors (new
    # processes) for every read, however small (tests/test_store.py::test_a_look_at_new_parts_starts_no_ray_actors).
    context.use_datasource_v2 = False
    fs, _ = _filesystem(data_dir)
    data = ray.data.read_parquet(paths, filesystem=fs)
    if columns is not None:
        data = data.select_columns(list(columns))
    return list(data.iter_rows()), paths[-1].rsplit("/", 1)[1]


class ExperienceStoreCore:
    """The store's logic, without Ray (the actor below wraps it)."""

    def __init__(self, data_dir: str = DEFAULT_DATA_DIR, *, flush_rows: int = 256, flush_seconds: float = 1.0,
                 wal_dir: str | None = None):
        self.data_dir = str(data_dir)
        self.fs, self.base = _filesystem(self.data_dir)
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        if wal_dir is None:
            if isinstance(self.fs, pafs.LocalFileSystem):
                wal_dir = f"{self.base}/_wal"
            else:  # remote data dir: the log stays on this machine's disk
                digest = hashlib.sha256(self.data_dir.encode()).hexdigest()[:16]
                wal_dir = str(Path.home() / ".cache" / "reverie" / "wal" / digest)
        self.wal_dir = Path(wal_dir)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_writer(self.wal_dir / "writer.lock", self.data_dir)
        self._ids: dict[str, set[str]] = {}
        self._buffer: dict[str, list[dict]] = {t: [] for t in SCHEMAS}
        self._wal: dict[str, Any] = {}
        for table in SCHEMAS:
            self._ids[table] = set(read_table(self.data_dir, table).column("id").to_pylist())
            self._replay(table)
        self.flush()

    # ---------------------------------------------------------------- log
    def _wal_path(self, table: str) -> Path:
        return self.wal_dir / f"{table}.msgpack"

    def _replay(self, table: str) -> None:
        """Accept every whole record of the table's log; cut a torn tail (a crash mid-append) off the file,
        so that the next appends are not written behind bytes that no replay can read past."""
        path = self._wal_path(table)
        if not path.exists():
            return
        data = path.read_bytes()
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        whole = 0  # bytes of whole records
        try:
            for raw in unpacker:
                whole = unpacker.tell()
                try:
                    self._accept(table, raw)
                except RecordError:
                    continue
        except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
                msgpack.exceptions.StackError):  # a torn or garbled record from a crash
            pass
        if whole < len(data):
            with open(path, "r+b") as f:
                f.truncate(whole)
                os.fsync(f.fileno())

    def _wal_file(self, table: str):
        f = self._wal.get(table)
        if f is None:
            f = self._wal[table] = open(self._wal_path(table), "ab")
        return f

    # ---------------------------------------------------------------- API
    def _decode(self, raw: bytes) -> dict:
        try:
            rec = msgpack.unpackb(raw, raw=False)
        except Exception as e:
            raise RecordError(f"record is not valid msgpack: {e}") from None
        if not isinstance(rec, dict):
            raise RecordError(f"record must be a msgpack map, got {type(rec).__name__}")
        rid = rec.get("id")
        if not isinstance(rid, str) or not rid:
            raise RecordError("record has no string 'id'")
        return rec

    def _accept(self, table: str, raw: bytes) -> dict | None:
        rec = self._decode(raw)
        if rec["id"] in self._ids[table]:
            return None
        row = _row(table, rec)
        try:
            pa.Table.from_pylist([row], schema=_schema(table))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise RecordError(f"record {rec['id']!r} does not fit table {table!r}: {e}") from None
        self._ids[table].add(rec["id"])
        self._buffer[table].append(row)
        return row

    def append(self, table: str, records: list[bytes]) -> int:
        _schema(table)
        decoded = [self._decode(r) for r in records]  # all-or-nothing validation
        fresh, seen = [], set()
        for raw, rec in zip(records, decoded):
            if rec["id"] in self._ids[table] or rec["id"] in seen:
                continue
            try:
                pa.Table.from_pylist([_row(table, rec)], schema=_schema(table))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
                raise RecordError(f"record {rec['id']!r} does not fit table {table!r}: {e}") from None
            seen.add(rec["id"])
            fresh.append(raw)
        if not fresh:
            return 0
        f = self._wal_file(table)
        f.write(b"".join(msgpack.packb(r, use_bin_type=True) for r in fresh))
        f.flush()
        os.fsync(f.fileno())
        for raw in fresh:
            self._accept(table, raw)
        if len(self._buffer[table]) >= self.flush_rows:
            self.flush(table)
        return len(fresh)

    def flush(self, table: str | None = None) -> int:
        written = 0
        for t in [table] if table else list(SCHEMAS):
            rows = self._buffer[t]
            if not rows:
                continue
            data = pa.Table.from_pylist(rows, schema=SCHEMAS[t])
            directory = f"{self.base}/{t}"
            self.fs.create_dir(directory, recursive=True)
            name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = f"{directory}/.tmp-{name}"
            pq.write_table(data, tmp, filesystem=self.fs)
            self.fs.move(tmp, f"{directory}/{name}")
            self._buffer[t] = []
            written += len(rows)
            # The rows are in Parquet: the log can start over.
            f = self._wal.pop(t, None)
            if f is not None:
                f.close()
            with open(self._wal_path(t), "wb") as f:
                os.fsync(f.fileno())
        return written

    def get(self, table: str, id: str) -> dict | None:
        _schema(table)
        if id not in self._ids[table]:
            return None
        for row in self._buffer[table]:
            if row["id"] == id:
                return dict(row)
        fs, base = self.fs, self.base
        data = ds.dataset(f"{base}/{table}", filesystem=fs, format="parquet", schema=SCHEMAS[table])
        rows = data.to_table(filter=ds.field("id") == id).to_pylist()
        return rows[0] if rows else None

    def has(self, table: str, id: str) -> bool:
        _schema(table)
        return id in self._ids[table]

    def count(self, table: str) -> int:
        return len(self._ids[table])

    def close(self) -> int:
        n = self.flush()
        for f in self._wal.values():
            f.close()
        self._wal.clear()
        if self._lock is not None:
            self._lock.close()  # releases the writer's lock
            self._lock = None
        return n


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
    class ExperienceStore:
        """Ray actor over ``ExperienceStoreCore``; flushes every ``flush_seconds`` in the background."""

        def __init__(self, data_dir: str = DEFAULT_DATA_DIR, flush_rows: int = 256, flush_seconds: float = 1.0,
                     wal_dir: str | None = None):
            self._core = ExperienceStoreCore(data_dir, flush_rows=flush_rows, flush_seconds=flush_seconds,
                                             wal_dir=wal_dir)
            self._task = None

        async def _flusher(self):
            while True:
                await asyncio.sleep(self._core.flush_seconds)
                self._core.flush()

        def _ensure_flusher(self):
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._flusher())

        async def append(self, table: str, records: list[bytes]) -> int:
            self._ensure_flusher()
            return self._core.append(table, records)

        async def flush(self) -> int:
            return self._core.flush()

        async def get(self, table: str, id: str) -> dict | None:
            return self._core.get(table, id)

        async def count(self, table: str) -> int:
            return self._core.count(table)

        async def close(self) -> int:
            return self._core.close()

        async def data_dir(self) -> str:
            return self._core.data_dir

    return ExperienceStore


ExperienceStore = _actor_class()


def start_store(data_dir: str = DEFAULT_DATA_DIR, *, name: str = STORE_ACTOR_NAME, namespace: str = "reverie", **kwargs):
    """The named store actor, created if it does not exist yet (ray must be initialised), on the head node: the
    autoscaler never removes it."""
    from reverie.ray_start import placed

    return ExperienceStore.options(name=name, namespace=namespace, get_if_exists=True, lifetime=None,
                                   **placed("head")).remote(str(data_dir), **kwargs)
