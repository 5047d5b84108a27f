"""Run one benchmark and write its CSV: ``python -m experiments.benchmarks <which> [--quick]``.

    python -m experiments.benchmarks losses     # ~1 h on 2 CPU cores
    python -m experiments.benchmarks lm_head    # ~10 min
    python -m experiments.benchmarks roots      # ~15 min
    python -m experiments.benchmarks train_step # a few min (LM train step, alpha:1.5 vs kl)
    python -m experiments.benchmarks losses --sizes 4096:32768  # one size of the grid
    python -m experiments.benchmarks losses --quick --out /tmp/bench   # a smoke test, seconds

Results go to ``results/benchmarks/<which>.csv`` (``--out`` to change the folder). The table is
updated atomically as the run goes, so an interrupted run keeps what it measured. A run replaces
the table, except ``losses --sizes``, which replaces the rows of those sizes only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.benchmarks import harness, lm_head, losses, roots, train_step

BENCHMARKS = {
    "losses": losses.run,
    "lm_head": lm_head.run,
    "roots": roots.run,
    "train_step": train_step.run,
}


def _sizes(text: str) -> list[tuple[int, int]]:
    """``"512:1024,4096:32768"`` -> ``[(512, 1024), (4096, 32768)]``."""
    try:
        return [tuple(int(x) for x in pair.split(":", 1)) for pair in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:V pairs, got {text!r}") from None


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks", description=__doc__)
    parser.add_argument("which", choices=sorted(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR, help="output folder")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        help="losses only: comma-separated N:V pairs to measure (default: the whole grid)",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.sizes is not None:
        if args.which != "losses":
            parser.error("--sizes applies to the losses benchmark only")
        path = losses.run(mode, args.out, sizes=args.sizes)
    else:
        path = BENCHMARKS[args.which](mode, args.out)
    harness.progress(f"wrote {path}")
    return path
