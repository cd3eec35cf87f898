"""The DuckDB warehouse: the report tables of shared/DESIGN.md, lot-replace writes, a read copy.

DuckDB lets one process at a time open a database file for writing, and a reader that opens
the file while a writer holds it gets a lock error. Dagster materializes several lots in
parallel processes, and a person runs ``peelscan sql`` whenever they like. So:

- **Writes** go through :meth:`Warehouse.write` (and :meth:`Warehouse.replace_lot_rows`,
  built on it), which first takes an exclusive inter-process lock — ``fcntl.flock`` on
  ``<path>.lock`` — waiting up to ``lock_timeout`` seconds, then raising
  :class:`WarehouseLockTimeout` that names the file and the holder's pid. Inside the lock the
  work runs in ONE DuckDB transaction: it commits entirely or not at all.
- **After each committed write** the file is checkpointed and copied to a *read copy*,
  ``<path without .duckdb>.read.duckdb``: copied to a temporary name in the same folder, then
  ``os.replace``-d over the old copy (atomic on POSIX: a reader opens the old or the new file,
  never half of one).
- **Reads** (:func:`query_readonly`, ``peelscan sql``) open the read copy with
  ``read_only=True``, external file access disabled and the configuration locked, and accept
  only queries (SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN). They never touch the
  writer's file, so they never see a lock error, even while a run writes.

Crash safety: a process killed inside a write leaves no trace in either file (DuckDB discards
an uncommitted transaction; the read copy is only replaced after commit). A process killed
after the commit but before the copy leaves a ``<path>.unpublished`` marker; the next
:class:`Warehouse` opened on the file republishes the read copy. A half-written temporary copy
is removed by the next writer.

All values go to SQL as parameters or as registered relations (DataFrames / Arrow tables);
identifiers come only from :data:`TABLES` (never from the caller); lot ids are validated with
:func:`peelscan.ids.validate_id`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pandas as pd
import pyarrow as pa

from peelscan.ids import validate_id

__all__ = [
    "TABLES",
    "VIEWS",
    "Warehouse",
    "WarehouseError",
    "WarehouseLockTimeout",
    "WarehouseReadOnlyError",
    "query_readonly",
    "read_copy_path",
]

#: The tables (shared/DESIGN.md, plus the columns the pipeline adds): name -> [(column, type)].
#: ``model_kind`` is ``tiles`` (the tile autoencoder) or ``whole`` (the whole-item baseline).
TABLES: dict[str, list[tuple[str, str]]] = {
    "scans": [
        ("lot_id", "VARCHAR NOT NULL"), ("scan_id", "VARCHAR NOT NULL"), ("source_uri", "VARCHAR"),
        ("width", "INTEGER"), ("height", "INTEGER"), ("dtype", "VARCHAR"), ("n_items", "INTEGER"),
        ("label", "VARCHAR"), ("defect_type", "VARCHAR"), ("split", "VARCHAR"),
        ("ingested_at", "TIMESTAMPTZ"),
    ],
    "quarantine": [
        ("lot_id", "VARCHAR NOT NULL"), ("source_uri", "VARCHAR"), ("reason", "VARCHAR"),
        ("detected_at", "TIMESTAMPTZ"),
    ],
    "training_runs": [
        ("lot_id", "VARCHAR NOT NULL"), ("model_version", "VARCHAR NOT NULL"), ("model_kind", "VARCHAR"),
        ("arch", "VARCHAR"), ("n_train_tiles", "BIGINT"), ("epochs", "INTEGER"),
        ("train_loss", "DOUBLE"), ("val_loss", "DOUBLE"), ("seconds", "DOUBLE"),
        ("parent_version", "VARCHAR"), ("trained_at", "TIMESTAMPTZ"),
    ],
    "anomaly_reports": [
        ("lot_id", "VARCHAR NOT NULL"), ("scan_id", "VARCHAR NOT NULL"), ("item_index", "INTEGER"),
        ("metric", "VARCHAR NOT NULL"), ("score", "DOUBLE"), ("anomaly_score", "DOUBLE"),
        ("threshold", "DOUBLE"), ("is_anomaly", "BOOLEAN"), ("label", "VARCHAR"),
        ("defect_type", "VARCHAR"), ("worst_tile_row", "INTEGER"), ("worst_tile_col", "INTEGER"),
        ("model_version", "VARCHAR"), ("model_kind", "VARCHAR"), ("split", "VARCHAR"),
        ("calibration_source", "VARCHAR"), ("scored_at", "TIMESTAMPTZ"),
    ],
    "roc_summaries": [
        ("lot_id", "VARCHAR NOT NULL"), ("metric", "VARCHAR NOT NULL"), ("model_version", "VARCHAR"),
        ("model_kind", "VARCHAR"), ("n_good", "INTEGER"), ("n_anomalous", "INTEGER"),
        ("auroc", "DOUBLE"), ("auprc", "DOUBLE"), ("tpr_at_fpr_1pct", "DOUBLE"),
        ("tpr_at_fpr_5pct", "DOUBLE"), ("best_accuracy", "DOUBLE"), ("threshold", "DOUBLE"),
        ("computed_at", "TIMESTAMPTZ"),
    ],
    "roc_curves": [
        ("lot_id", "VARCHAR NOT NULL"), ("metric", "VARCHAR NOT NULL"), ("model_version", "VARCHAR"),
        ("model_kind", "VARCHAR"), ("fpr", "DOUBLE"), ("tpr", "DOUBLE"), ("threshold", "DOUBLE"),
    ],
    "lot_summaries": [
        ("lot_id", "VARCHAR NOT NULL"), ("model_kind", "VARCHAR"), ("model_version", "VARCHAR"),
        ("metric", "VARCHAR"), ("n_scans", "INTEGER"), ("n_judged", "INTEGER"),
        ("n_anomalies_found", "INTEGER"), ("anomaly_rate", "DOUBLE"),
        ("n_labelled_anomalous", "INTEGER"),
        # {"<defect type>": {"scans": n, "found": m}, ...}; query with ->> / json_extract
        ("by_defect_type", "JSON"), ("threshold", "DOUBLE"), ("computed_at", "TIMESTAMPTZ"),
    ],
}

#: Views for people who query the warehouse.
VIEWS: dict[str, str] = {
    # one line per lot and model kind: what a quality manager asks first
    "lot_report": """
        SELECT s.lot_id, l.model_kind, s.n_scans, coalesce(q.n_quarantined, 0) AS n_quarantined,
               l.n_judged, l.n_anomalies_found, l.anomaly_rate, l.metric AS decision_metric,
               r.auroc, r.auprc, r.tpr_at_fpr_1pct, r.best_accuracy, l.model_version, l.computed_at
        FROM (SELECT lot_id, count(*) AS n_scans FROM scans GROUP BY lot_id) s
        LEFT JOIN (SELECT lot_id, count(*) AS n_quarantined FROM quarantine GROUP BY lot_id) q
               USING (lot_id)
        LEFT JOIN lot_summaries l USING (lot_id)
        LEFT JOIN roc_summaries r
               ON r.lot_id = l.lot_id AND r.metric = l.metric AND r.model_kind IS NOT DISTINCT FROM l.model_kind
                  AND r.model_version IS NOT DISTINCT FROM l.model_version
    """,
    # the thirteen measures ranked over every lot with labelled eval scans
    "measure_ranking": """
        SELECT model_kind, metric, count(auroc) AS n_lots, avg(auroc) AS mean_auroc,
               min(auroc) AS min_auroc, avg(auprc) AS mean_auprc,
               avg(tpr_at_fpr_1pct) AS mean_tpr_at_fpr_1pct, avg(best_accuracy) AS mean_best_accuracy
        FROM roc_summaries WHERE auroc IS NOT NULL
        GROUP BY model_kind, metric
    """,
}

#: Statement types :func:`query_readonly` runs.
_QUERY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class WarehouseError(RuntimeError):
    """A warehouse operation failed; the message names the file and the reason."""


class WarehouseLockTimeout(WarehouseError, TimeoutError):
    """Another process held the warehouse for writing longer than the lock timeout."""


class WarehouseReadOnlyError(WarehouseError, PermissionError):
    """A statement other than a query was sent to the read-only path."""


def read_copy_path(path: str | os.PathLike) -> Path:
    """``/x/warehouse.duckdb`` -> ``/x/warehouse.read.duckdb`` (any other name: + ``.read.duckdb``)."""
    p = Path(path)
    stem = p.name[: -len(".duckdb")] if p.name.endswith(".duckdb") else p.name
    return p.with_name(f"{stem}.read.duckdb")


def _default_path() -> str:
    from peelscan.config import settings

    return settings().warehouse


# threads of one process: flock on two descriptors of the same file conflicts too, but a
# thread that re-enters its own write would wait for itself; refuse that clearly instead
_local = threading.local()


class Warehouse:
    """The warehouse file at ``path`` (created with the schema if missing).

    Args:
        path: the DuckDB file (``PEELSCAN_WAREHOUSE``); its folder is created.
        lock_timeout: seconds a write waits for the inter-process lock (and for a foreign
            process that holds DuckDB's own file lock) before :class:`WarehouseLockTimeout`.
    """

    def __init__(self, path: str | os.PathLike | None = None, lock_timeout: float = 600.0) -> None:
        self.path = Path(path if path is not None else _default_path()).expanduser().resolve()
        self.read_path = read_copy_path(self.path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.marker_path = self.path.with_name(self.path.name + ".unpublished")
        self.lock_timeout = float(lock_timeout)
        if self.path.exists() and self.path.is_dir():
            raise WarehouseError(f"warehouse {self.path}: is a folder, expected a DuckDB file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ensure_schema()

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    # -- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``<path>.lock`` exclusively (flock), polling until ``lock_timeout``."""
        held = getattr(_local, "held", set())
        if str(self.path) in held:
            raise WarehouseError(f"warehouse {self.path}: nested write in the same thread "
                                 "(a write is already open; finish it first)")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise WarehouseError(f"warehouse {self.path}: cannot lock {self.lock_path}: {exc}") from exc
                    if time.monotonic() >= deadline:
                        raise WarehouseLockTimeout(
                            f"warehouse {self.path}: another process ({self._holder(fd)}) has held the write "
                            f"lock {self.lock_path} for more than {self.lock_timeout:g} s; "
                            "try again when its run has finished") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.25)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _local.held = held | {str(self.path)}
            try:
                yield
            finally:
                _local.held = getattr(_local, "held", set()) - {str(self.path)}
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "pid unknown"

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """A read-write connection to the main file (caller holds the lock). A foreign process
        that opened the file directly holds DuckDB's own lock: wait for it, within the timeout."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise WarehouseError(f"warehouse {self.path}: cannot open: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise WarehouseLockTimeout(
                        f"warehouse {self.path}: the file is held open by a process outside peelscan's "
                        f"write lock for more than {self.lock_timeout:g} s ({exc})") from exc
                time.sleep(0.2)

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: lock, BEGIN, yield the connection, COMMIT, publish.

        An exception inside the block rolls everything back (and is re-raised); the read copy
        is replaced only after a successful commit.
        """
        with self._locked():
            had_marker = self.marker_path.exists()
            self.marker_path.touch()
            con = self._connect()
            committed = False
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                    committed = True
                except BaseException:
                    with contextlib.suppress(Exception):
                        con.execute("ROLLBACK")
                    raise
                con.execute("CHECKPOINT")
            finally:
                con.close()
                if not committed and not had_marker:
                    with contextlib.suppress(FileNotFoundError):
                        self.marker_path.unlink()
            self._publish_locked()

    def ensure_schema(self) -> None:
        """Create missing tables, add missing columns (older files), (re)create the views, and
        republish the read copy when it is missing or a crash left it behind."""
        with self._locked():
            con = self._connect()
            try:
                have: dict[str, set[str]] = {}
                for t, c in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                        "WHERE table_schema = 'main'").fetchall():
                    have.setdefault(t, set()).add(c)
                views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() "
                                                   "WHERE NOT internal").fetchall()}
                ddl = []
                for table, cols in TABLES.items():
                    if table not in have:
                        ddl.append(f"CREATE TABLE {table} (" + ", ".join(f'"{c}" {t}' for c, t in cols) + ")")
                    else:
                        ddl += [f'ALTER TABLE {table} ADD COLUMN "{c}" {t.replace(" NOT NULL", "")}'
                                for c, t in cols if c not in have[table]]
                changed = bool(ddl) or not set(VIEWS) <= views
                if changed:
                    ddl += [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in VIEWS.items()]
                    con.execute("BEGIN TRANSACTION")
                    try:
                        for stmt in ddl:
                            con.execute(stmt)
                        con.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(Exception):
                            con.execute("ROLLBACK")
                        raise
                    self.marker_path.touch()
                    con.execute("CHECKPOINT")
            finally:
                con.close()
            if self.marker_path.exists() or not self.read_path.exists():
                self._publish_locked()

    def publish_read_copy(self) -> Path:
        """Copy the warehouse to its read copy now (under the lock); returns the read path."""
        with self._locked():
            con = self._connect()  # replays a WAL left by a crash, then checkpoints it
            try:
                con.execute("CHECKPOINT")
            finally:
                con.close()
            self._publish_locked()
        return self.read_path

    def _publish_locked(self) -> None:
        folder = self.read_path.parent
        prefix = f".{self.read_path.name}."
        for stale in folder.glob(prefix + "*.tmp"):  # left by a writer killed mid-copy
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        wal = self.path.with_name(self.path.name + ".wal")
        if wal.exists() and wal.stat().st_size > 0:
            # never copy a file whose committed data still sits in the WAL
            con = self._connect()
            try:
                con.execute("CHECKPOINT")
            finally:
                con.close()
        tmp = folder / f"{prefix}{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(self.path, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.read_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        with contextlib.suppress(FileNotFoundError):
            self.marker_path.unlink()

    def replace_lot_rows(self, table: str, lot_id: str, rows: pd.DataFrame | pa.Table | None,
                         extra_key: dict[str, Any] | None = None) -> int:
        """Replace a lot's rows of ``table`` with ``rows``, in one transaction.

        Deletes the rows ``WHERE lot_id = lot_id [AND k = v for k, v in extra_key]`` and inserts
        ``rows``; readers see the old rows or the new ones, never both or neither, and a rerun
        leaves no duplicates.

        Args:
            table: a name of :data:`TABLES`.
            lot_id: validated with :func:`peelscan.ids.validate_id`.
            rows: DataFrame or Arrow table whose columns are a subset of the table's (missing
                columns are NULL; ``lot_id`` and the ``extra_key`` columns are filled in when
                absent and must equal the key when present). None or no rows = delete only.
            extra_key: narrows the replaced rows, e.g. ``{"model_version": v}`` or
                ``{"model_kind": "tiles"}``; keys must be columns of the table, values not None.

        Returns:
            The number of rows inserted.
        """
        cols = self._columns(table)
        lot = validate_id(lot_id, "lot id")
        key = {"lot_id": lot, **(extra_key or {})}
        for k, v in key.items():
            if k not in cols:
                raise ValueError(f"warehouse {self.path}: {table} has no column {k!r} for extra_key")
            if v is None:
                raise ValueError(f"warehouse {self.path}: extra_key {k!r} of {table} is None")
        df = self._rows_frame(table, rows, key, cols)
        where = " AND ".join(f'"{k}" = ?' for k in key)
        with self.write() as con:
            con.execute(f"DELETE FROM {table} WHERE {where}", list(key.values()))
            if df is not None and len(df):
                self._insert(con, table, df, cols)
        return 0 if df is None else len(df)

    def update_n_items(self, lot_id: str, n_items: dict[str, int]) -> int:
        """Set ``scans.n_items`` of a lot's scans from ``{scan_id: number of items}``.

        Returns the number of rows updated."""
        lot = validate_id(lot_id, "lot id")
        m = pd.DataFrame({"scan_id": pd.Series(list(n_items.keys()), dtype=object),
                          "n_items": pd.Series([int(v) for v in n_items.values()], dtype="int64")})
        if not len(m):
            return 0
        with self.write() as con:
            con.register("_peelscan_n_items", m)
            try:
                res = con.execute("UPDATE scans SET n_items = CAST(m.n_items AS INTEGER) FROM _peelscan_n_items m "
                                  "WHERE scans.lot_id = ? AND scans.scan_id = m.scan_id", [lot]).fetchone()
            finally:
                with contextlib.suppress(duckdb.Error):
                    con.unregister("_peelscan_n_items")
        return int(res[0]) if res else 0

    # -- reading ---------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """A read-only query on the read copy (see :func:`query_readonly`)."""
        return query_readonly(sql, params, path=self.path)

    def read_table(self, table: str, lot_id: str | None = None) -> pd.DataFrame:
        """A table (or one lot of it) from the read copy, as a DataFrame."""
        self._columns(table)
        sql = f"SELECT * FROM {table}"
        params: list[Any] = []
        if lot_id is not None:
            sql += " WHERE lot_id = ?"
            params.append(validate_id(lot_id, "lot id"))
        cols, rows = query_readonly(sql, params, path=self.path)
        return pd.DataFrame.from_records(rows, columns=cols)

    # -- helpers ---------------------------------------------------------------------------

    def _columns(self, table: str) -> dict[str, str]:
        if table not in TABLES:
            raise ValueError(f"warehouse {self.path}: unknown table {table!r}; tables: {sorted(TABLES)}")
        return {c: t.replace(" NOT NULL", "") for c, t in TABLES[table]}

    def _rows_frame(self, table: str, rows: Any, key: dict[str, Any], cols: dict[str, str]) -> pd.DataFrame | None:
        if rows is None:
            return None
        if isinstance(rows, pa.Table):
            df = rows.to_pandas()
        elif isinstance(rows, pd.DataFrame):
            df = rows.copy()
        else:
            raise TypeError(f"warehouse {self.path}: rows for {table} must be a pandas DataFrame or a "
                            f"pyarrow Table, got {type(rows).__name__}")
        if not len(df):
            return None
        unknown = [c for c in df.columns if c not in cols]
        if unknown:
            raise ValueError(f"warehouse {self.path}: {table} has no column(s) {unknown}; "
                             f"columns: {list(cols)}")
        for k, v in key.items():
            if k not in df.columns:
                df[k] = v
            else:
                bad = df[k].isna() | (df[k].astype(object) != v)
                if bad.any():
                    shown = sorted({str(x) for x in df.loc[bad, k].tolist()})[:5]
                    raise ValueError(f"warehouse {self.path}: {int(bad.sum())} row(s) for {table} have "
                                     f"{k} {shown}, but the rows replace {k} = {v!r}")
        return df.reset_index(drop=True)

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, cols: dict[str, str]) -> None:
        names = [c for c in cols if c in df.columns]
        select = ", ".join(f'CAST("{c}" AS {cols[c]}) AS "{c}"' for c in names)
        con.register("_peelscan_rows", df)
        try:
            con.execute(f"INSERT INTO {table} (" + ", ".join(f'"{c}"' for c in names) + ") "
                        f"SELECT {select} FROM _peelscan_rows")
        except duckdb.Error as exc:
            raise WarehouseError(f"inserting {len(df)} row(s) into {table}: {exc}") from exc
        finally:
            with contextlib.suppress(duckdb.Error):  # an aborted transaction refuses even this
                con.unregister("_peelscan_rows")


def query_readonly(sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
                   path: str | os.PathLike | None = None) -> tuple[list[str], list[tuple]]:
    """Run one query on the warehouse's read copy; never blocks on, or is blocked by, a writer.

    Args:
        sql: ONE query statement (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, VALUES,
            EXPLAIN). Values belong in ``params`` (``?`` or ``$name`` placeholders).
        params: query parameters.
        path: the warehouse file (default ``PEELSCAN_WAREHOUSE``); its read copy is opened.

    Returns:
        ``(column names, rows as tuples)``.

    Raises:
        WarehouseReadOnlyError: a statement that is not a query (INSERT, DELETE, COPY, ATTACH,
            SET, ...) or several statements.
        FileNotFoundError: nothing has been published yet.
        duckdb.Error: the query itself failed (its message says why).
    """
    if not isinstance(sql, str) or not sql.strip():
        raise ValueError("query_readonly: empty query")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise duckdb.ParserException(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1:
        raise WarehouseReadOnlyError(f"the warehouse is read-only here and takes one query at a time; "
                                     f"got {len(statements)} statements")
    kind = statements[0].type
    if kind not in _QUERY_TYPES:
        raise WarehouseReadOnlyError(
            f"the warehouse is read-only here: {kind.name} statements are refused "
            "(queries only: SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)")
    main = Path(path if path is not None else _default_path()).expanduser().resolve()
    rp = read_copy_path(main)
    if not rp.exists():
        raise FileNotFoundError(f"no warehouse read copy at {rp}: nothing has been written to {main} yet "
                                "(run `peelscan run` first)")
    con = duckdb.connect(str(rp), read_only=True,
                         config={"enable_external_access": False, "lock_configuration": True})
    try:
        try:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
        except duckdb.InvalidInputException as exc:
            if "read-only" in str(exc):
                raise WarehouseReadOnlyError(f"the warehouse is read-only here: {exc}") from exc
            raise
        cols = [d[0] for d in (cur.description or [])]
        return cols, cur.fetchall()
    finally:
        con.close()
