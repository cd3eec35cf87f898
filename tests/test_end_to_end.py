"""End to end: ``peelscan synth`` + ``peelscan run`` through Dagster on a small synthetic lot,
every table filled with the columns of shared/DESIGN.md, reruns leave no duplicates, and
``peelscan sql`` answers while another process holds the warehouse for writing."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent
PEELSCAN = [sys.executable, "-m", "peelscan.cli"]

TABLE_COLUMNS = {
    "scans": "lot_id scan_id source_uri width height dtype n_items label defect_type split ingested_at",
    "quarantine": "lot_id source_uri reason detected_at",
    "training_runs": "lot_id model_version arch n_train_tiles epochs train_loss val_loss seconds "
                     "parent_version trained_at",
    "anomaly_reports": "lot_id scan_id item_index metric score anomaly_score threshold is_anomaly label "
                       "defect_type worst_tile_row worst_tile_col model_version scored_at",
    "roc_summaries": "lot_id metric model_version n_good n_anomalous auroc auprc tpr_at_fpr_1pct "
                     "tpr_at_fpr_5pct best_accuracy threshold computed_at",
    "roc_curves": "lot_id metric model_version fpr tpr threshold",
}


def _run(args, env, timeout=900):
    out = subprocess.run(PEELSCAN + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}: {out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e") / "var"
    env = {**os.environ, "PEELSCAN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    for v in ("PEELSCAN_LANDING_URI", "PEELSCAN_LAKE_URI", "PEELSCAN_WAREHOUSE", "PEELSCAN_DASK_ADDRESS"):
        env.pop(v, None)
    (home / "dagster").mkdir(parents=True)
    _run(["synth", str(home / "landing"), "--lots", "1", "--scans", "36", "--anomaly-rate", "0.35",
          "--seed", "7"], env)
    first = _run(["run"], env)
    # the tables of the first, lot-by-lot run, for the backfill comparison (later tests rerun)
    shutil.copy(home / "warehouse.read.duckdb", home.parent / "first_run.duckdb")
    return home, env, first


def _counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLE_COLUMNS}
    finally:
        con.close()


@pytest.mark.slow
def test_run_fills_every_table_with_the_design_columns(e2e_home):
    home, env, stdout = e2e_home
    assert "lot-000" in stdout
    db = home / "warehouse.read.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table, cols in TABLE_COLUMNS.items():
            have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
            assert set(cols.split()) <= have, (table, set(cols.split()) - have)
        n_scans = con.execute("SELECT count(*) FROM scans").fetchone()[0]
        assert n_scans == 36
        for table in ("training_runs", "anomaly_reports", "roc_summaries", "roc_curves"):
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
        n_metrics = con.execute("SELECT count(DISTINCT metric) FROM anomaly_reports").fetchone()[0]
        assert n_metrics == 13
        assert con.execute("SELECT count(*) FROM roc_summaries WHERE auroc IS NULL").fetchone()[0] == 0
    finally:
        con.close()
    reports = home / "reports" / "lot-000"
    assert (reports / "roc_curves_tiles.png").stat().st_size > 5000
    assert (reports / "anomaly_heatmap.png").exists()


#: (table, columns compared, order) — every column of shared/DESIGN.md but the timestamps, the
#: model versions (content hashes that include the training time) and the landing paths
COMPARED = [
    ("scans", "lot_id, scan_id, width, height, dtype, n_items, label, defect_type, split", "scan_id"),
    ("training_runs", "lot_id, arch, n_train_tiles, epochs, train_loss, val_loss, parent_version", "arch"),
    ("anomaly_reports", "lot_id, model_kind, metric, scan_id, item_index, score, anomaly_score, threshold, "
                        "is_anomaly, label, defect_type, split, worst_tile_row, worst_tile_col",
     "model_kind, metric, scan_id"),
    ("roc_summaries", "lot_id, model_kind, metric, n_good, n_anomalous, auroc, auprc, tpr_at_fpr_1pct, "
                      "tpr_at_fpr_5pct, best_accuracy, threshold", "model_kind, metric"),
    ("roc_curves", "lot_id, model_kind, metric, fpr, tpr, threshold", "model_kind, metric, fpr, tpr, threshold"),
]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.slow
def test_backfill_gives_the_same_tables_as_lot_by_lot_runs(e2e_home, tmp_path):
    """`peelscan backfill` — one Dagster backfill over every lot partition, run by the daemon
    as a UI-launched backfill is — in a fresh home gives the tables of the lot-by-lot run."""
    home, env, _ = e2e_home
    other = tmp_path / "var"
    shutil.copytree(home / "landing", other / "landing")
    (other / "dagster").mkdir(parents=True)
    env_b = {**env, "PEELSCAN_HOME": str(other), "DAGSTER_HOME": str(other / "dagster")}
    out = _run(["backfill"], env_b, timeout=1500)
    assert "lot lot-000: run" in out and "SUCCESS" in out, out
    assert (other / "dagster" / "dagster.yaml").exists()  # per-lot run concurrency
    _compare_with_first_run(home, other)


def _compare_with_first_run(home: Path, other: Path) -> None:
    a = duckdb.connect(str(home.parent / "first_run.duckdb"), read_only=True)
    b = duckdb.connect(str(other / "warehouse.read.duckdb"), read_only=True)
    try:
        for table, cols, order in COMPARED:
            ra = a.execute(f"SELECT {cols} FROM {table} ORDER BY {order}").fetchall()
            rb = b.execute(f"SELECT {cols} FROM {table} ORDER BY {order}").fetchall()
            assert len(ra) == len(rb) > 0, (table, len(ra), len(rb))
            for x, y in zip(ra, rb):
                assert all(_same(u, v) for u, v in zip(x, y)), (table, x, y)
        qa = a.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        assert qa == b.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    finally:
        a.close()
        b.close()


LAUNCH_BACKFILL = """mutation L($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""


@pytest.mark.slow
def test_backfill_launched_from_the_ui_gives_the_same_tables(e2e_home, tmp_path):
    """The mutation the UI's "Launch backfill" dialog sends, to a real dagster-webserver on
    127.0.0.1, then the Dagster daemon: the same tables as the lot-by-lot run."""
    home, env, _ = e2e_home
    other = tmp_path / "var"
    shutil.copytree(home / "landing", other / "landing")
    (other / "dagster").mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", other / "dagster" / "dagster.yaml")
    env_b = {**env, "PEELSCAN_HOME": str(other), "DAGSTER_HOME": str(other / "dagster")}
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; "
                    "DagsterInstance.get().add_dynamic_partitions('lots', ['lot-000'])"], env=env_b, check=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bin_ = Path(sys.executable).parent
    web = subprocess.Popen([str(bin_ / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                           cwd=ROOT, env=env_b, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = None
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                time.sleep(1)
        variables = {"p": {"selector": {"partitionSetName": "lot_job_partition_set",
                                        "repositorySelector": {"repositoryName": "__repository__",
                                                               "repositoryLocationName": "pipelines.definitions"}},
                           "allPartitions": True}}
        req = urllib.request.Request(url, json.dumps({"query": LAUNCH_BACKFILL, "variables": variables}).encode(),
                                     {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=120).read())["data"]["launchPartitionBackfill"]
        assert answer["__typename"] == "LaunchBackfillSuccess", answer
        daemon = subprocess.Popen([str(bin_ / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=ROOT, env=env_b,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        check = ("from dagster import DagsterInstance, DagsterRunStatus as S, RunsFilter; import sys; "
                 "rs = DagsterInstance.get().get_runs(RunsFilter(tags={'dagster/backfill': sys.argv[1]})); "
                 "print(len(rs), sum(r.status in (S.SUCCESS, S.FAILURE, S.CANCELED) for r in rs), "
                 "sum(r.status == S.SUCCESS for r in rs))")
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", check, answer["backfillId"]], env=env_b,
                                 capture_output=True, text=True).stdout.split()
            if out and int(out[0]) >= 1 and out[0] == out[1]:
                break
            time.sleep(3)
        assert out and out[0] == out[1] == out[2] == "1", out
    finally:
        for proc in (daemon, web):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    _compare_with_first_run(home, other)


@pytest.mark.slow
def test_rerun_is_idempotent_and_leaves_no_duplicates(e2e_home):
    """Rerunning a lot whose data did not change keeps its model (no new training) and gives
    the same rows as the first run, once each."""
    home, env, _ = e2e_home
    before = _counts(home / "warehouse.read.duckdb")
    _run(["run", "--lot", "lot-000"], env)
    after = _counts(home / "warehouse.read.duckdb")
    for t in TABLE_COLUMNS:
        assert after[t] == before[t], (t, before[t], after[t])
    a = duckdb.connect(str(home.parent / "first_run.duckdb"), read_only=True)
    con = duckdb.connect(str(home / "warehouse.read.duckdb"), read_only=True)
    try:
        dup = con.execute("SELECT count(*) - count(DISTINCT (model_kind, metric, scan_id)) FROM anomaly_reports").fetchone()[0]
        assert dup == 0
        for table, cols, order in COMPARED:
            cols_v = cols + (", model_version" if table != "scans" and table != "training_runs" else "")
            ra = a.execute(f"SELECT {cols_v} FROM {table} ORDER BY {order}").fetchall()
            rb = con.execute(f"SELECT {cols_v} FROM {table} ORDER BY {order}").fetchall()
            assert len(ra) == len(rb) > 0 and all(all(_same(u, v) for u, v in zip(x, y)) for x, y in zip(ra, rb)), table
    finally:
        a.close()
        con.close()


@pytest.mark.slow
def test_sql_answers_while_another_process_holds_the_warehouse(e2e_home):
    home, env, _ = e2e_home
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); con.execute('BEGIN');"
         "con.execute('DELETE FROM scans'); print('holding', flush=True); time.sleep(60)",
         str(home / "warehouse.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        out = _run(["sql", "SELECT count(*) AS n FROM scans"], env, timeout=60)
        assert "36" in out
        bad = subprocess.run(PEELSCAN + ["sql", "DELETE FROM scans"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "read-only" in (bad.stderr + bad.stdout).lower()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_line_scorer_decides_as_the_assets_did(e2e_home, tmp_path):
    """``peelscan score`` (the line-side driver) on the lot's own landing files gives the scores
    and decisions the asset graph wrote to anomaly_reports (one implementation, two drivers),
    in batches that go through the multi-threaded front end, from files and from stdin; a
    damaged file is rejected with its reason and the rest of the batch is still decided."""
    home, env, _ = e2e_home
    lot = home / "landing" / "lot-000"
    scans = sorted(p for p in lot.glob("scan-*.tif"))[:11]
    damaged = tmp_path / "scan-broken.tif"
    damaged.write_bytes(scans[0].read_bytes()[:300])
    con = duckdb.connect(str(home / "warehouse.read.duckdb"), read_only=True)
    try:
        want = {sid: (score, bool(flag)) for sid, score, flag in con.execute(
            "SELECT scan_id, max(anomaly_score), bool_or(is_anomaly) FROM anomaly_reports "
            "WHERE model_kind = 'tiles' AND metric = 'ssim' AND anomaly_score IS NOT NULL "
            "GROUP BY scan_id").fetchall()}
    finally:
        con.close()

    def decisions(stdout: str) -> dict[str, list[str]]:
        rows = [line.split("\t") for line in stdout.splitlines() if line and not line.startswith("#")]
        return {r[0]: r[1:] for r in rows}

    by_args = decisions(_run(["score", "--lot", "lot-000", "--metric", "ssim", "--batch", "4",
                              *map(str, scans[:6]), str(damaged), *map(str, scans[6:])], env))
    piped = subprocess.run(PEELSCAN + ["score", "--lot", "lot-000", "--metric", "ssim", "--batch", "3", "-"],
                           cwd=ROOT, env=env, input="\n".join(map(str, scans)) + "\n",
                           capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr[-3000:]
    by_stdin = decisions(piped.stdout)
    assert by_args["scan-broken"][0] == "REJECTED" and "scan-broken.tif" in by_args["scan-broken"][1]
    for p in scans:
        for got in (by_args[p.stem], by_stdin[p.stem]):
            verdict, score = got[0], float(got[1].removeprefix("score="))
            assert score == pytest.approx(want[p.stem][0], abs=2e-5), (p.stem, score, want[p.stem])
            assert (verdict == "ANOMALY") == want[p.stem][1], (p.stem, verdict, want[p.stem])
