"""Accuracy of the root solvers against iterations, on random and adversarial rows.

For each divergence, reference measure, vocabulary size ``V``, solver and iteration count,
the float32 root ``τ`` of every row (in the frame shifted by the row max, where the solvers
work) is compared with a 200-step float64 bisection of the same float32 logits:
``error = |τ − τ_ref| / (1 + |τ_ref|)``. The reference shares only the generator's maps with
the library: it bisects the plain bracket of paper-notes.md, ``[−f'(1/q_{j⁺}), −f'(1/Σ_j q_j)]``,
not the solvers' tightened one. ``mass_error = |Σ_j q_j (f*)'(θ_j − τ) − 1|`` is the
float32 mass the operators return (they do not renormalise it). The solvers find the anchored
root ``t = τ + a`` in a frame next to the row max (see :mod:`fdiv.root_finding`); ``τ`` relative
to the row max, ``(frame − row max) + t − a``, is formed in float64. Each row
of the CSV gives the worst error per kind of logit row (columns ``error_<kind>``) and over all
of them.

Kinds of rows (``ROWS_PER_KIND`` each): ``random`` ``2 · N(0, 1)``; ``wide`` uniform over a
spread of 1e4; ``ties`` every logit equal, or the top three tied above ``N(0, 1) − 3``;
``dominant`` one logit 30 above ``N(0, 1)``; ``flat`` ``1e-3 · N(0, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fdiv
from experiments.benchmarks import harness
from fdiv import _rows
from fdiv import root_finding as rf
from fdiv.divergences import get_generator

DIVERGENCES = ("kl", "reverse_kl", "chi2", "hellinger", "js", "alpha:1.5", "alpha:2", "alpha:3")
Q_MODES = ("uniform", "unit")
KINDS = ("random", "wide", "ties", "dominant", "flat")
ITERATIONS = {
    "bisect": (0, 1, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60),
    "newton": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20),
    "auto": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20),
}
SIZES = {"full": (1024, 32768, 262144), "quick": (16,)}
ROWS_PER_KIND = {"full": 8, "quick": 2}
QUICK_DIVERGENCES = ("alpha:1.5",)
REFERENCE_STEPS = 200


def _rows_of_kind(kind: str, count: int, v: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return 2.0 * rng.normal(size=(count, v))
    if kind == "wide":
        return rng.uniform(-5e3, 5e3, size=(count, v))
    if kind == "ties":
        rows = rng.normal(size=(count, v)) - 3.0
        rows[:, : min(3, v)] = 0.0
        rows[: count // 2] = 0.0  # every logit tied
        return rows
    if kind == "dominant":
        rows = rng.normal(size=(count, v))
        rows[:, 0] = 30.0
        return rows
    return 1e-3 * rng.normal(size=(count, v))


def _prepared(theta, q: str):
    theta, q_arr, _ = _rows.prepare(theta, q, axis=-1, where=None, temperature=1.0)
    return rf.row_stats(theta, q_arr), q_arr


def _solve_fn(gen, q: str, solver: str, *, default: bool):
    """Jitted ``(theta[, iters]) -> ((frame, row max, t), mass error)``: the anchored root ``t =
    τ + a`` in the solver's frame (``θ − frame``).

    The iteration count is traced (one compilation for all counts), or the solver's default.
    """

    def solve(theta, iters):
        stats, q_arr = _prepared(theta, q)
        root = rf.solve_anchored(stats, q_arr, gen, solver, iters)
        z = stats.theta - root.shift[..., None]
        mass = jnp.sum(q_arr * gen.conj_grad_rel(z - root.t[..., None]), axis=-1)
        return (root.shift, stats.shift, root.t), jnp.abs(mass - 1.0)

    if default:
        return jax.jit(lambda theta: solve(theta, None))
    return jax.jit(solve)


def _reference(gen, q: str, theta32: np.ndarray) -> np.ndarray:
    """``τ`` in the shifted frame by float64 bisection on the plain bracket (see above)."""
    with jax.enable_x64(True):
        theta, q_arr, _ = _rows.prepare(
            jnp.asarray(theta32, jnp.float64), q, axis=-1, where=None, temperature=1.0
        )
        q_full = jnp.broadcast_to(q_arr, theta.shape)
        top = jnp.argmax(theta, axis=-1, keepdims=True)
        z = theta - jnp.take_along_axis(theta, top, axis=-1)
        q_top = jnp.take_along_axis(q_full, top, axis=-1)[:, 0]
        lo, hi = -gen.f_prime(1.0 / q_top), -gen.f_prime(1.0 / jnp.sum(q_full, axis=-1))

        def step(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = jnp.sum(q_full * gen.conj_grad(z - mid[:, None]), axis=-1) >= 1.0
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, REFERENCE_STEPS, step, (lo, hi))
        return np.asarray(0.5 * (lo + hi), np.float64)


def run(mode: str, out_dir: Path) -> Path:
    """Runs the benchmark; returns the CSV written (rewritten after each divergence)."""
    path = out_dir / "roots.csv"
    divergences = QUICK_DIVERGENCES if mode == "quick" else DIVERGENCES
    provenance = harness.provenance()
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    for divergence in divergences:
        gen = get_generator(divergence)
        for q in Q_MODES:
            for v in SIZES[mode]:
                count = ROWS_PER_KIND[mode]
                theta = np.concatenate([_rows_of_kind(k, count, v, rng) for k in KINDS])
                theta = theta.astype(np.float32)
                kind_of_row = np.repeat(np.arange(len(KINDS)), count)
                tau_ref = _reference(gen, q, theta)
                for solver in fdiv.SOLVERS:
                    solve = _solve_fn(gen, q, solver, default=False)
                    default = _solve_fn(gen, q, solver, default=True)
                    for iters in (*ITERATIONS[solver], None):
                        root, mass = default(theta) if iters is None else solve(theta, iters)
                        frame, row_max, t = (np.asarray(x, np.float64) for x in root)
                        tau = (frame - row_max) + t - gen.anchor
                        mass = np.asarray(mass, np.float64)
                        error = np.abs(tau - tau_ref) / (1.0 + np.abs(tau_ref))
                        row = {
                            "benchmark": "roots",
                            "mode": mode,
                            "divergence": divergence,
                            "reference_measure": q,
                            "v": v,
                            "solver": solver,
                            "num_iters": "default" if iters is None else iters,
                            "dtype": "float32",
                            "max_error": float(np.max(error)),
                            "median_error": float(np.median(error)),
                            **{
                                f"error_{kind}": float(np.max(error[kind_of_row == i]))
                                for i, kind in enumerate(KINDS)
                            },
                            "max_mass_error": float(np.max(mass)),
                            "rows": len(theta),
                            **provenance,
                        }
                        rows.append(row)
                    harness.progress(
                        f"[roots] {divergence:>10} {q:>7} V={v:>6} {solver:>6}: at the default "
                        f"iterations error {row['max_error']:.1e}, mass {row['max_mass_error']:.1e}"
                    )
        harness.write_csv(path, rows)
    return path
