"""Forward+backward time and peak memory of the f-divergence losses against cross-entropy.

For logits ``[N, V]`` (float32, ``2 · N(0, 1)``) and integer labels, each candidate is
``jax.jit(jax.value_and_grad(sum of the per-example loss))`` with respect to the logits; the
baseline is ``optax.losses.softmax_cross_entropy_with_integer_labels``. The f-divergence
candidates are :func:`fdiv.fdiv_loss_with_integer_labels` for each divergence of
:data:`DIVERGENCES` and each solver. Candidates whose compiled peak memory exceeds the budget
are not run; their rows say so (``status``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import fdiv
from experiments.benchmarks import harness

# (divergence, reference measure): the list; q only matters for non-KL divergences.
DIVERGENCES = (
    ("kl", "uniform"),
    ("alpha:1.5", "uniform"),
    ("alpha:1.5", "unit"),
    ("alpha:2", "uniform"),
    ("chi2", "uniform"),
    ("js", "uniform"),
    ("reverse_kl", "uniform"),
    ("hellinger", "uniform"),
)
QUICK_DIVERGENCES = (("kl", "uniform"), ("alpha:1.5", "unit"))
SIZES = {"full": ((512, 4096), (1024, 32768, 131072)), "quick": ((8,), (64,))}
REPEATS = {"full": 7, "quick": 2}
# Per (N, V): timed rounds are cut to fit this (at least 3 rounds), judged from the warm-up.
TIME_BUDGET_S = {"full": 240.0, "quick": None}
# Compiled temporaries + outputs above this are not run: the 2-core machine has 24 GiB,
# shared with other work.
MEMORY_BUDGET_BYTES = 8 * 2**30
LOGIT_SCALE = 2.0
BASELINE = "cross_entropy"
# A run of some sizes only (``sizes``) replaces just its rows, identified by these columns.
KEY = ("mode", "n", "v", "divergence", "reference_measure", "solver")


def _objective(loss_fn):
    def objective(logits, labels):
        return jnp.sum(loss_fn(logits, labels))

    return jax.value_and_grad(objective)


def _candidates(divergences) -> dict[tuple[str, str, str], object]:
    """``(divergence, q, solver) -> value_and_grad`` of the summed loss; the baseline first."""
    out = {(BASELINE, "", ""): _objective(optax.losses.softmax_cross_entropy_with_integer_labels)}
    for divergence, q in divergences:
        for solver in fdiv.SOLVERS:
            loss = functools.partial(
                fdiv.fdiv_loss_with_integer_labels, divergence=divergence, q=q, solver=solver
            )
            out[(divergence, q, solver)] = _objective(loss)
    return out


def run(mode: str, out_dir: Path, sizes: list[tuple[int, int]] | None = None) -> Path:
    """Runs the benchmark; returns the CSV written (updated after each size).

    ``sizes``: the ``(N, V)`` pairs to measure (default: the grid of ``SIZES[mode]``).
    """
    path = out_dir / "losses.csv"
    divergences = QUICK_DIVERGENCES if mode == "quick" else DIVERGENCES
    provenance = harness.provenance()
    rows: list[dict] = []
    ns, vs = SIZES[mode]
    for n, v in sizes or [(n, v) for n in ns for v in vs]:
        key_logits, key_labels = jax.random.split(jax.random.key(n * v))
        logits = LOGIT_SCALE * jax.random.normal(key_logits, (n, v), jnp.float32)
        labels = jax.random.randint(key_labels, (n,), 0, v)
        compiled, peaks, skipped = {}, {}, {}
        for key, fn in _candidates(divergences).items():
            exe, peak = harness.compile_with_memory(fn, logits, labels)
            peaks[key] = peak
            if peak is not None and peak > MEMORY_BUDGET_BYTES:
                skipped[key] = (
                    f"skipped: peak {harness.mib(peak)} > budget {harness.mib(MEMORY_BUDGET_BYTES)}"
                )
            else:
                compiled[key] = functools.partial(exe, logits, labels)
        harness.progress(
            f"[losses] N={n} V={v}: timing {len(compiled)} candidates, skipping {len(skipped)}"
        )
        times, repeats = harness.time_interleaved(
            compiled, REPEATS[mode], time_budget_s=TIME_BUDGET_S[mode]
        )
        base_time = times.get((BASELINE, "", ""))
        base_peak = peaks[(BASELINE, "", "")]
        for key, peak in peaks.items():
            divergence, q, solver = key
            t = times.get(key)
            row = {
                "benchmark": "losses",
                "mode": mode,
                "n": n,
                "v": v,
                "dtype": "float32",
                "divergence": divergence,
                "reference_measure": q,
                "solver": solver,
                "repeats": repeats if t is not None else 0,
                "median_s": t,
                "ratio_to_ce": t / base_time if t is not None and base_time else None,
                "peak_bytes": peak,
                "memory_ratio_to_ce": peak / base_peak if peak and base_peak else None,
                "status": skipped.get(key, "ok"),
                **provenance,
            }
            rows.append(row)
            if t is not None:
                harness.progress(
                    f"  {divergence:>12} {q:>7} {solver:>6}: {1e3 * t:9.2f} ms "
                    f"({row['ratio_to_ce']:.2f}x CE), peak {harness.mib(peak)}"
                )
        harness.write_csv(path, rows, KEY if sizes else None)
    return path
