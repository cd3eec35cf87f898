"""The ``peelscan`` command line (shared/DESIGN.md, "The command line").

- ``peelscan synth ROOT --lots N --scans M --anomaly-rate R --seed S``: synthetic landing data.
- ``peelscan run [--lot LOT ...]``: materialize the asset graph through Dagster for the lots
  (all valid lot folders of the landing store by default), then print the per-lot report.
- ``peelscan backfill``: the same for every lot, as one Dagster backfill over the partitions.
- ``peelscan demo``: synth into the default landing + run.
- ``peelscan sql "SELECT ..."``: query the warehouse (read-only; works while a run writes).
- ``peelscan score PATH...``: score scans with a lot's model outside Dagster (line side).

This module does not import dagster: ``run``/``demo``/``backfill`` load the code location
(``pipelines``) lazily, only when asked to drive Dagster.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peelscan.config import settings


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    def fmt(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def cmd_synth(args: argparse.Namespace) -> int:
    from peelscan.synth import write_landing

    lots = write_landing(args.root, lots=args.lots, scans=args.scans, anomaly_rate=args.anomaly_rate,
                         seed=args.seed, size=args.size, pixel_mm=args.pixel_mm, png8=args.png8,
                         objects_per_scan=args.objects, lot_prefix=args.lot_prefix)
    print(f"wrote {len(lots)} lot(s) of {args.scans} scans to {args.root}: {', '.join(lots)}")
    return 0


def _ensure_dagster_home() -> None:
    s = settings()
    os.environ.setdefault("DAGSTER_HOME", s.dagster_home)
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)


def print_report(lots: list[str] | None = None) -> None:
    """The per-lot report table from the warehouse's read copy."""
    from peelscan.warehouse import query_readonly

    cols, rows = query_readonly(REPORT_SQL)
    if lots:
        rows = [r for r in rows if r[0] in set(lots)]
    _print_table(cols, rows)


REPORT_SQL = """
SELECT s.lot_id,
       s.n_scans,
       q.n_quarantined,
       l.n_anomalies_found AS anomalies,
       l.anomaly_rate,
       r.auroc AS auroc_fsim,
       r.tpr_at_fpr_1pct AS tpr_at_1pct_fpr,
       l.model_version
FROM (SELECT lot_id, count(*) AS n_scans FROM scans GROUP BY lot_id) s
LEFT JOIN (SELECT lot_id, count(*) AS n_quarantined FROM quarantine GROUP BY lot_id) q USING (lot_id)
LEFT JOIN (SELECT * FROM lot_summaries WHERE model_kind = 'tiles') l USING (lot_id)
LEFT JOIN (SELECT * FROM roc_summaries WHERE metric = 'fsim' AND model_kind = 'tiles') r
       ON r.lot_id = s.lot_id AND r.model_version = l.model_version
ORDER BY s.lot_id
"""


def cmd_run(args: argparse.Namespace) -> int:
    _ensure_dagster_home()
    from pipelines.runner import run_lots

    ok = run_lots(args.lot or None, raise_on_error=False)
    print()
    print_report(args.lot or None)
    return 0 if ok else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    _ensure_dagster_home()
    from pipelines.runner import backfill_all

    ok = backfill_all()
    print()
    print_report()
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from peelscan.synth import write_landing

    s = settings()
    landing = s.landing_uri
    print(f"writing synthetic scans for {args.lots} lots to {landing} ...")
    write_landing(landing, lots=args.lots, scans=args.scans, anomaly_rate=args.anomaly_rate, seed=args.seed)
    args.lot = None
    return cmd_run(args)


def cmd_sql(args: argparse.Namespace) -> int:
    from peelscan.warehouse import query_readonly

    try:
        cols, rows = query_readonly(args.query)
    except Exception as exc:  # noqa: BLE001 - shown to the user as one line
        print(f"peelscan sql: {exc}", file=sys.stderr)
        return 2
    _print_table(cols, rows)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from peelscan.linescan import main as score_main

    return score_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peelscan", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic scans that follow the landing contract")
    s.add_argument("root", help="landing root (local path)")
    s.add_argument("--lots", type=int, default=3)
    s.add_argument("--scans", type=int, default=60)
    s.add_argument("--anomaly-rate", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    s.add_argument("--pixel-mm", type=float, default=0.5)
    s.add_argument("--png8", action="store_true", help="pre-corrected 8-bit PNG, no dark/flat")
    s.add_argument("--objects", type=int, default=1, help="objects per scan")
    s.add_argument("--lot-prefix", default="lot")
    s.set_defaults(fn=cmd_synth)

    r = sub.add_parser("run", help="materialize the asset graph for lots, print the report")
    r.add_argument("--lot", action="append", help="a lot id (repeatable); default: every lot")
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("backfill", help="one Dagster backfill over every lot partition")
    b.set_defaults(fn=cmd_backfill)

    d = sub.add_parser("demo", help="synthetic lots into the default landing, then run")
    d.add_argument("--lots", type=int, default=3)
    d.add_argument("--scans", type=int, default=60)
    d.add_argument("--anomaly-rate", type=float, default=0.3)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)

    q = sub.add_parser("sql", help="query the warehouse (read-only)")
    q.add_argument("query")
    q.set_defaults(fn=cmd_sql)

    sc = sub.add_parser("score", help="score scans with a lot's model (line side)")
    sc.add_argument("paths", nargs="*", help="scan files or folders; '-' reads paths from stdin")
    sc.add_argument("--lot", required=True, help="whose model and thresholds to use")
    sc.add_argument("--watch", action="store_true", help="keep watching the folders for new scans")
    sc.add_argument("--metric", default="fsim")
    sc.add_argument("--all-metrics", action="store_true", help="compute all thirteen measures")
    sc.add_argument("--batch", type=int, default=8, help="scans per batch")
    sc.set_defaults(fn=cmd_score)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
