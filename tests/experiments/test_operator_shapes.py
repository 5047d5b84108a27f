"""The operator-shape tables: the values against closed forms, and the files with provenance."""

import jax
import numpy as np

from experiments.benchmarks import harness
from experiments.common import results
from experiments.operator_shapes import main as operator_shapes


def _column(rows, name):
    return np.array([float(r[name]) for r in rows])


def test_two_class_shapes_match_the_closed_forms():
    t = operator_shapes.T_LINE
    kl = operator_shapes.shapes("kl", "uniform")
    np.testing.assert_allclose(_column(kl, "p1"), jax.nn.sigmoid(t), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_column(kl, "p2"), jax.nn.sigmoid(-t), rtol=1e-5, atol=1e-7)
    # χ² with unit q is sparsemax of θ/2: p = clip(1/2 + t/4, 0, 1), exactly 0 and 1 at the ends.
    chi2 = _column(operator_shapes.shapes("chi2", "unit"), "p1")
    np.testing.assert_allclose(chi2, np.clip(0.5 + t / 4, 0, 1), atol=1e-6)
    assert chi2[0] == 0.0 and chi2[-1] == 1.0


def test_simplex_rows_are_distributions_and_sparse_only_for_sparse_divergences():
    for divergence, sparse in (("alpha:1.5", True), ("js", False)):
        rows = operator_shapes.simplex(divergence, "unit")
        assert len(rows) == operator_shapes.T_GRID.size**2
        p = np.stack([_column(rows, f"p{j}") for j in (1, 2, 3)], axis=-1)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        assert ((p == 0).any(-1).mean() > 0.5) == sparse
        # Symmetry: swapping t1 and t2 swaps p1 and p2.
        t = {(r["t1"], r["t2"]): i for i, r in enumerate(rows)}
        swapped = [t[(r["t2"], r["t1"])] for r in rows]
        np.testing.assert_allclose(p[swapped][:, [1, 0, 2]], p, atol=1e-6)


def test_main_writes_both_tables_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(operator_shapes, "DIVERGENCES", ("kl", "alpha:2"))
    line, grid = operator_shapes.main(["--out", str(tmp_path)])
    rows = results.read_rows(line)
    assert len(rows) == 2 * 2 * operator_shapes.T_LINE.size
    assert {(r["divergence"], r["reference_measure"]) for r in rows} == {
        (d, q) for d in ("kl", "alpha:2") for q in ("uniform", "unit")
    }
    assert all(r[k] for r in rows for k in harness.PROVENANCE)
    assert len(results.read_rows(grid)) == 2 * 2 * operator_shapes.T_GRID.size**2
