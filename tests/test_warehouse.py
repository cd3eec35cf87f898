"""peelscan.warehouse: schema, lot-replace writes, the read copy, locks, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from peelscan.ids import InvalidIdError
from peelscan.warehouse import (TABLES, Warehouse, WarehouseError, WarehouseLockTimeout, WarehouseReadOnlyError,
                                query_readonly, read_copy_path)

ROOT = Path(__file__).resolve().parent.parent

# shared/DESIGN.md, "DuckDB tables (at least these columns)"
DESIGN_COLUMNS = {
    "scans": "lot_id scan_id source_uri width height dtype n_items label defect_type split ingested_at",
    "quarantine": "lot_id source_uri reason detected_at",
    "training_runs": "lot_id model_version arch n_train_tiles epochs train_loss val_loss seconds "
                     "parent_version trained_at",
    "anomaly_reports": "lot_id scan_id item_index metric score anomaly_score threshold is_anomaly label "
                       "defect_type worst_tile_row worst_tile_col model_version scored_at",
    "roc_summaries": "lot_id metric model_version n_good n_anomalous auroc auprc tpr_at_fpr_1pct "
                     "tpr_at_fpr_5pct best_accuracy threshold computed_at",
    "roc_curves": "lot_id metric model_version fpr tpr threshold",
    "lot_summaries": "lot_id model_version n_scans n_anomalies_found anomaly_rate by_defect_type computed_at",
}
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _scans(lot: str, ids: list[str], label: str = "good") -> pd.DataFrame:
    return pd.DataFrame({"lot_id": lot, "scan_id": ids, "source_uri": [f"landing/{lot}/{i}.tif" for i in ids],
                         "width": 64, "height": 48, "dtype": "uint16", "n_items": None, "label": label,
                         "defect_type": None, "split": "eval", "ingested_at": NOW})


def _count(path: Path, sql: str, params=None) -> int:
    return query_readonly(sql, params, path=path)[1][0][0]


def _python(code: str, path: Path) -> subprocess.Popen:
    """A child Python process running ``code`` with ``WH`` = the warehouse path."""
    prog = "import sys, time\nfrom peelscan.warehouse import Warehouse\nWH = sys.argv[1]\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", prog, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline().strip()
    if line != word:
        proc.kill()
        raise AssertionError(f"child said {line!r}, expected {word!r}: {proc.stderr.read()[-2000:]}")


@pytest.fixture()
def wh(tmp_path) -> Warehouse:
    w = Warehouse(tmp_path / "wh" / "warehouse.duckdb", lock_timeout=20)
    w.replace_lot_rows("scans", "lot-1", _scans("lot-1", ["a", "b", "c"]))
    w.replace_lot_rows("scans", "lot-2", _scans("lot-2", ["a", "d"]))
    return w


def test_schema_has_the_design_columns_and_a_read_copy(tmp_path):
    w = Warehouse(tmp_path / "warehouse.duckdb")
    assert w.read_path == tmp_path / "warehouse.read.duckdb" and w.read_path.exists()
    assert read_copy_path("/x/y.db") == Path("/x/y.db.read.duckdb")
    for table, cols in DESIGN_COLUMNS.items():
        have = [r[0] for r in w.query(f"DESCRIBE {table}")[1]]
        assert set(cols.split()) <= set(have), (table, set(cols.split()) - set(have))
    assert {"lot_report", "measure_ranking"} <= {r[0] for r in w.query("SELECT view_name FROM duckdb_views()")[1]}
    # opening again changes nothing and keeps the data
    w.replace_lot_rows("quarantine", "lot-1", pd.DataFrame({"source_uri": ["x.tif"], "reason": ["truncated"],
                                                            "detected_at": [NOW]}))
    w2 = Warehouse(tmp_path / "warehouse.duckdb")
    assert _count(w2.path, "SELECT count(*) FROM quarantine") == 1


def test_older_file_gets_the_missing_columns(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE scans (lot_id VARCHAR, scan_id VARCHAR)")
    con.execute("INSERT INTO scans VALUES ('lot-1', 'a')")
    con.close()
    w = Warehouse(path)
    have = {r[0] for r in w.query("DESCRIBE scans")[1]}
    assert set(DESIGN_COLUMNS["scans"].split()) <= have
    assert w.query("SELECT scan_id, label FROM scans")[1] == [("a", None)]


def test_replace_twice_leaves_no_duplicates_and_other_lots_alone(wh):
    for _ in range(2):
        n = wh.replace_lot_rows("scans", "lot-1", _scans("lot-1", ["a", "b", "c"]))
        assert n == 3
    assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = ?", ["lot-1"]) == 3
    assert _count(wh.path, "SELECT count(*) - count(DISTINCT (lot_id, scan_id)) FROM scans") == 0
    assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = ?", ["lot-2"]) == 2
    # a rerun with fewer scans replaces, it does not merge
    wh.replace_lot_rows("scans", "lot-1", _scans("lot-1", ["z"]))
    assert wh.query("SELECT scan_id FROM scans WHERE lot_id = 'lot-1'")[1] == [("z",)]
    # no rows: the lot's rows are removed
    wh.replace_lot_rows("scans", "lot-1", _scans("lot-1", [])[:0])
    wh.replace_lot_rows("quarantine", "lot-1", None)
    assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = 'lot-1'") == 0
    # lot_id may be left out of the rows: it is filled in
    wh.replace_lot_rows("scans", "lot-3", _scans("lot-3", ["q"]).drop(columns=["lot_id"]))
    assert wh.query("SELECT lot_id, scan_id FROM scans WHERE lot_id = 'lot-3'")[1] == [("lot-3", "q")]


def test_extra_key_narrows_the_replacement(wh):
    def runs(version, loss):
        return pd.DataFrame([{"model_version": version, "model_kind": "tiles", "arch": "tiles:ConvAE",
                              "n_train_tiles": 100, "epochs": 3, "train_loss": loss, "val_loss": loss,
                              "seconds": 1.5, "parent_version": None, "trained_at": NOW}])
    wh.replace_lot_rows("training_runs", "lot-1", runs("v1", 0.1), extra_key={"model_version": "v1"})
    wh.replace_lot_rows("training_runs", "lot-1", runs("v2", 0.2), extra_key={"model_version": "v2"})
    wh.replace_lot_rows("training_runs", "lot-1", runs("v2", 0.3), extra_key={"model_version": "v2"})
    assert wh.query("SELECT model_version, train_loss FROM training_runs ORDER BY 1")[1] == [("v1", 0.1), ("v2", 0.3)]
    with pytest.raises(ValueError, match=r"model_version \['v9'\], but the rows replace model_version = 'v2'"):
        wh.replace_lot_rows("training_runs", "lot-1", runs("v9", 0.3), extra_key={"model_version": "v2"})
    with pytest.raises(ValueError, match="no column 'nope'"):
        wh.replace_lot_rows("training_runs", "lot-1", runs("v2", 0.3), extra_key={"nope": 1})


def test_arrow_rows_types_and_values_are_parameters(wh):
    evil = "x'); DROP TABLE scans; --"
    table = pa.table({"lot_id": ["lot-1"] * 2, "scan_id": ["s1", "s2"], "item_index": pa.array([0, None], pa.int32()),
                      "metric": ["fsim", "fsim"], "score": [0.9, None], "anomaly_score": [0.1, None],
                      "threshold": [0.2, 0.2], "is_anomaly": pa.array([False, None]), "label": [evil, None],
                      "worst_tile_row": pa.array([16, None], pa.int32()), "scored_at": [NOW, NOW]})
    assert wh.replace_lot_rows("anomaly_reports", "lot-1", table) == 2
    rows = wh.query("SELECT scan_id, item_index, is_anomaly, label FROM anomaly_reports ORDER BY scan_id")[1]
    assert rows == [("s1", 0, False, evil), ("s2", None, None, None)]
    assert _count(wh.path, "SELECT count(*) FROM scans") == 5  # still there
    # pandas nullable dtypes and JSON
    wh.replace_lot_rows("lot_summaries", "lot-1", pd.DataFrame({
        "model_kind": ["tiles"], "metric": ["fsim"], "n_scans": [3], "n_anomalies_found": [1],
        "anomaly_rate": [1 / 3], "by_defect_type": ['{"stone": {"scans": 1, "found": 1}}'], "computed_at": [NOW]}))
    assert wh.query("SELECT by_defect_type->'$.stone'->>'found' FROM lot_summaries")[1] == [("1",)]


def test_bad_input_is_refused_clearly(wh):
    for bad in ("../etc", "lot 1", "lot|2", "lot,3", "", "é"):
        with pytest.raises(InvalidIdError, match="invalid lot id"):
            wh.replace_lot_rows("scans", bad, _scans("x", ["a"]))
    with pytest.raises(ValueError, match="unknown table 'scans; DROP TABLE x'"):
        wh.replace_lot_rows("scans; DROP TABLE x", "lot-1", None)
    with pytest.raises(ValueError, match=r"scans has no column\(s\) \['colour'\]"):
        wh.replace_lot_rows("scans", "lot-1", _scans("lot-1", ["a"]).assign(colour="red"))
    with pytest.raises(ValueError, match=r"have lot_id \['lot-2'\], but the rows replace lot_id = 'lot-1'"):
        wh.replace_lot_rows("scans", "lot-1", _scans("lot-2", ["a"]))
    with pytest.raises(TypeError, match="DataFrame or a pyarrow Table"):
        wh.replace_lot_rows("scans", "lot-1", [{"scan_id": "a"}])
    with pytest.raises(WarehouseError, match="inserting 1 row"):
        wh.replace_lot_rows("scans", "lot-1", _scans("lot-1", ["a"]).assign(width="wide"))
    # the failed writes changed nothing
    assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = 'lot-1'") == 3


def test_query_readonly_refuses_everything_but_queries(wh):
    with pytest.raises(WarehouseReadOnlyError, match="read-only here: INSERT statements are refused"):
        query_readonly("INSERT INTO scans (lot_id, scan_id) VALUES ('lot-9', 'x')", path=wh.path)
    for sql in ("DELETE FROM scans", "DROP TABLE scans", "COPY scans TO 'out.csv'", "ATTACH 'other.duckdb'",
                "SET threads = 1", "CREATE TABLE t AS SELECT 1", "SELECT 1; DELETE FROM scans"):
        with pytest.raises(WarehouseReadOnlyError, match="read-only"):
            query_readonly(sql, path=wh.path)
    # even past the statement filter, the file is opened read-only and without file access
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        query_readonly(f"SELECT * FROM read_csv('{wh.path.parent / 'nothing.csv'}')", path=wh.path)
    con = duckdb.connect(str(wh.read_path), read_only=True)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("INSERT INTO scans (lot_id, scan_id) VALUES ('lot-9', 'x')")
    con.close()
    cols, rows = query_readonly("SELECT scan_id FROM scans WHERE lot_id = ? ORDER BY 1", ["lot-2"], path=wh.path)
    assert cols == ["scan_id"] and rows == [("a",), ("d",)]
    assert query_readonly("EXPLAIN SELECT 1", path=wh.path)[1]
    with pytest.raises(FileNotFoundError, match="nothing has been written"):
        query_readonly("SELECT 1", path=wh.path.parent / "never.duckdb")


def test_exception_inside_the_transaction_leaves_the_old_rows(wh):
    before = wh.query("SELECT * FROM scans ORDER BY lot_id, scan_id")[1]
    with pytest.raises(RuntimeError, match="boom"):
        with wh.write() as con:
            con.execute("DELETE FROM scans WHERE lot_id = ?", ["lot-1"])
            assert con.execute("SELECT count(*) FROM scans WHERE lot_id = 'lot-1'").fetchone()[0] == 0
            raise RuntimeError("boom")
    assert wh.query("SELECT * FROM scans ORDER BY lot_id, scan_id")[1] == before
    con = duckdb.connect(str(wh.path), read_only=True)  # the main file too
    assert con.execute("SELECT count(*) FROM scans WHERE lot_id = 'lot-1'").fetchone()[0] == 3
    con.close()
    assert not wh.marker_path.exists()
    with wh.write():
        with pytest.raises(WarehouseError, match="nested write"):
            with wh.write():
                pass


def test_readers_answer_while_another_process_holds_the_write_lock(wh):
    holder = _python("""
        w = Warehouse(WH)
        with w.write() as con:
            con.execute("DELETE FROM scans WHERE lot_id = 'lot-1'")
            print("holding", flush=True)
            time.sleep(60)
    """, wh.path)
    try:
        _wait_for(holder, "holding")
        t0 = time.monotonic()
        assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = 'lot-1'") == 3  # old rows, no error
        assert time.monotonic() - t0 < 5
        # the CLI's path too
        out = subprocess.run([sys.executable, "-m", "peelscan.cli", "sql", "SELECT count(*) AS n FROM scans"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PEELSCAN_WAREHOUSE": str(wh.path)})
        assert out.returncode == 0 and "5" in out.stdout, out.stderr[-2000:]
        # a second writer waits, then says who holds the lock
        impatient = Warehouse.__new__(Warehouse)
        impatient.__dict__.update(wh.__dict__, lock_timeout=0.5)
        with pytest.raises(WarehouseLockTimeout, match=rf"another process \(pid {holder.pid}\).*lock"):
            impatient.replace_lot_rows("scans", "lot-2", _scans("lot-2", ["e"]))
    finally:
        holder.kill()
        holder.wait()
    # the killed holder released the lock and its transaction is gone
    wh.replace_lot_rows("scans", "lot-2", _scans("lot-2", ["e"]))
    assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = 'lot-1'") == 3


def test_a_foreign_process_holding_the_file_gives_a_clear_timeout(wh):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); con.execute('BEGIN');"
                               "con.execute('DELETE FROM scans'); print('holding', flush=True); time.sleep(60)",
                               str(wh.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(holder, "holding")
        assert _count(wh.path, "SELECT count(*) FROM scans") == 5
        wh.lock_timeout = 0.5
        with pytest.raises(WarehouseLockTimeout, match="held open by a process outside"):
            wh.replace_lot_rows("scans", "lot-2", _scans("lot-2", ["e"]))
    finally:
        holder.kill()
        holder.wait()


def test_killed_mid_write_leaves_the_previous_contents(wh):
    before = wh.query("SELECT * FROM scans ORDER BY lot_id, scan_id")[1]
    child = _python("""
        import pandas as pd
        w = Warehouse(WH)
        with w.write() as con:
            con.execute("DELETE FROM scans WHERE lot_id = 'lot-1'")
            con.register("r", pd.DataFrame({"lot_id": ["lot-1"] * 5000, "scan_id": [str(i) for i in range(5000)]}))
            con.execute("INSERT INTO scans (lot_id, scan_id) SELECT lot_id, scan_id FROM r")
            print("mid-write", flush=True)
            time.sleep(60)
    """, wh.path)
    _wait_for(child, "mid-write")
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert wh.query("SELECT * FROM scans ORDER BY lot_id, scan_id")[1] == before
    w2 = Warehouse(wh.path)  # the next run opens the main file: the killed transaction is gone
    con = duckdb.connect(str(w2.path), read_only=True)
    assert con.execute("SELECT count(*) FROM scans").fetchone()[0] == 5
    con.close()
    w2.replace_lot_rows("scans", "lot-1", _scans("lot-1", ["n"]))
    assert _count(wh.path, "SELECT count(*) FROM scans") == 3


def test_killed_between_commit_and_publish_is_recovered_by_the_next_run(wh):
    child = _python("""
        import pandas as pd
        w = Warehouse(WH)
        def stall():
            print("committed", flush=True)
            time.sleep(60)
        w._publish_locked = stall
        w.replace_lot_rows("scans", "lot-1", pd.DataFrame({"scan_id": ["only"]}))
    """, wh.path)
    _wait_for(child, "committed")
    child.send_signal(signal.SIGKILL)
    child.wait()
    # readers still see the last published, consistent state
    assert _count(wh.path, "SELECT count(*) FROM scans WHERE lot_id = 'lot-1'") == 3
    assert wh.marker_path.exists()
    # a half-copied read file from an earlier crash lies around too
    stale = wh.read_path.parent / f".{wh.read_path.name}.999.dead.tmp"
    stale.write_bytes(b"half a database")
    Warehouse(wh.path)  # the next run republishes
    assert not wh.marker_path.exists() and not stale.exists()
    assert wh.query("SELECT scan_id FROM scans WHERE lot_id = 'lot-1'")[1] == [("only",)]


def test_parallel_writers_lose_nothing(tmp_path):
    path = tmp_path / "par.duckdb"
    Warehouse(path)
    code = """
        import pandas as pd
        lot = sys.argv[2]
        w = Warehouse(WH, lock_timeout=60)
        for i in range(6):
            w.replace_lot_rows("scans", lot, pd.DataFrame({"scan_id": [f"s{j}" for j in range(i + 1)]}))
            w.query("SELECT count(*) FROM scans")
        print("done", flush=True)
    """
    prog = "import sys, time\nfrom peelscan.warehouse import Warehouse\nWH = sys.argv[1]\n" + textwrap.dedent(code)
    procs = [subprocess.Popen([sys.executable, "-c", prog, str(path), f"lot-{k}"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done", err[-2000:]
    rows = query_readonly("SELECT lot_id, count(*) FROM scans GROUP BY 1 ORDER BY 1", path=path)[1]
    assert rows == [("lot-0", 6), ("lot-1", 6), ("lot-2", 6)]
    assert set(TABLES) <= {r[0] for r in query_readonly("SHOW TABLES", path=path)[1]}
