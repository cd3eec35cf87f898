"""``make bench``: every benchmark in one go, one after the other (never in parallel, so
that they do not disturb each other), writing their tables under ``bench-out/`` and ``docs/``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = [
    ["benchmarks/synth_gallery.py", "--bench-only"],
    ["benchmarks/metrics.py", "--out", "docs/metrics_bench.md"],
    ["benchmarks/ingest.py"],
    ["benchmarks/peel.py"],
    ["benchmarks/training.py", "--out", "docs/training_bench.md"],
    ["benchmarks/model_choices.py", "--out", "docs/model_choices.md"],
    ["benchmarks/scoring.py", "--out", "docs/scoring_bench.md"],
    ["benchmarks/throughput.py", "--out", "docs/throughput.md"],
    ["benchmarks/study.py", "--out", "docs/study.md"],
    ["benchmarks/bruise_ceiling.py", "--out", "docs/bruise_ceiling.md"],
]


def main() -> int:
    failed = []
    only = set(sys.argv[1:])
    for args in BENCHES:
        name = Path(args[0]).stem
        if only and name not in only:
            continue
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, *args], cwd=ROOT).returncode
        print(f"===== {name}: exit {rc} in {time.perf_counter() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
