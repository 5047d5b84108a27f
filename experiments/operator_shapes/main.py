"""The f-softargmax of every divergence on two classes (the sigmoid analogues) and on three.

    python -m experiments.operator_shapes [--out results]    # seconds on a CPU

Writes two tables, each atomically and each row with the hardware, jax version, git commit and
timestamp of the run (the benchmarks' provenance columns):

* ``operator_shapes.csv``: ``(p1, p2) = f_softargmax((t, 0))`` for ``t`` in ``[-5, 5]`` (101
  points; ``p1`` is the sigmoid analogue ``f_sigmoid(t)``); columns ``divergence,
  reference_measure, t, p1, p2``;
* ``operator_simplex.csv``: ``(p1, p2, p3) = f_softargmax((t1, t2, 0))`` on a 17 × 17 grid of
  ``(t1, t2)`` in ``[-4, 4]²``; columns ``divergence, reference_measure, t1, t2, p1, p2, p3``;

for every divergence of ``DIVERGENCES`` and both reference measures (``q`` uniform, ``1/k``, and
unit, 1: they differ for every divergence but KL). Probabilities are written to 7 significant
digits, and exact zeros (the sparse operators) as ``0``. notebooks/operators.ipynb draws them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import fdiv
from experiments.benchmarks import harness

DIVERGENCES = (
    "kl",
    "reverse_kl",
    "chi2",
    "hellinger",
    "js",
    "alpha:0.5",
    "alpha:1.25",
    "alpha:1.5",
    "alpha:2",
    "alpha:3",
)
Q_MODES = ("uniform", "unit")
T_LINE = np.linspace(-5.0, 5.0, 101)
T_GRID = np.linspace(-4.0, 4.0, 17)
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


def _cell(x: float) -> str:
    return f"{x:.7g}"


def shapes(divergence: str, q: str) -> list[dict[str, str]]:
    """Rows of ``operator_shapes.csv`` for one divergence and reference measure."""
    logits = np.stack([T_LINE, np.zeros_like(T_LINE)], axis=-1).astype(np.float32)
    p = np.asarray(fdiv.f_softargmax(jnp.asarray(logits), divergence, q=q))
    return [
        {
            "divergence": divergence,
            "reference_measure": q,
            "t": _cell(t),
            **{f"p{j + 1}": _cell(pj) for j, pj in enumerate(row)},
        }
        for t, row in zip(T_LINE, p, strict=True)
    ]


def simplex(divergence: str, q: str) -> list[dict[str, str]]:
    """Rows of ``operator_simplex.csv`` for one divergence and reference measure."""
    t1, t2 = (x.ravel() for x in np.meshgrid(T_GRID, T_GRID, indexing="ij"))
    logits = np.stack([t1, t2, np.zeros_like(t1)], axis=-1).astype(np.float32)
    p = np.asarray(fdiv.f_softargmax(jnp.asarray(logits), divergence, q=q))
    return [
        {
            "divergence": divergence,
            "reference_measure": q,
            "t1": _cell(a),
            "t2": _cell(b),
            **{f"p{j + 1}": _cell(pj) for j, pj in enumerate(row)},
        }
        for a, b, row in zip(t1, t2, p, strict=True)
    ]


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.operator_shapes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    provenance = harness.provenance()
    tables: dict[str, list[dict[str, str]]] = {"operator_shapes": [], "operator_simplex": []}
    for divergence in DIVERGENCES:
        harness.progress(f"[operator_shapes] {divergence}")
        for q in Q_MODES:
            tables["operator_shapes"] += shapes(divergence, q)
            tables["operator_simplex"] += simplex(divergence, q)
    paths = []
    for name, rows in tables.items():
        path = args.out / f"{name}.csv"
        harness.write_csv(path, [{**row, **provenance} for row in rows])
        harness.progress(f"[operator_shapes] wrote {len(rows)} rows to {path}")
        paths.append(path)
    return paths[0], paths[1]
