"""Run one benchmark and write its CSV: ``python -m experiments.benchmarks <which> [--quick]``.

    python -m experiments.benchmarks losses     # ~1 h on 2 CPU cores
    python -m experiments.benchmarks lm_head    # ~10 min
    python -m experiments.benchmarks roots      # ~15 min
    python -m experiments.benchmarks losses --quick --out /tmp/bench   # a smoke test, seconds

Results go to ``results/benchmarks/<which>.csv`` (``--out`` to change the folder); the table is
rewritten atomically as the run goes, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.benchmarks import harness, lm_head, losses, roots

BENCHMARKS = {"losses": losses.run, "lm_head": lm_head.run, "roots": roots.run}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks", description=__doc__)
    parser.add_argument("which", choices=sorted(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    path = BENCHMARKS[args.which]("quick" if args.quick else "full", args.out)
    harness.progress(f"wrote {path}")
    return path
