"""The fused LM head against the unfused path: time, peak memory, and equal results.

Hidden states ``[N, D]`` (``N(0, 1)``), a projection ``[D, V]`` (``N(0, 4 / D)``, so logits are
about ``2 · N(0, 1)``) and integer labels, float32. Candidates, each
``jax.jit(jax.value_and_grad(summed loss, argnums=(hidden, weight)))``:

* ``unfused``: ``fdiv.fdiv_loss_with_integer_labels(hidden @ weight, labels, ...)``;
* ``fused_sum``: :func:`fdiv.lm_head.fused_linear_fdiv_loss` with ``reduction="sum"``
  (gradients computed in the forward scan);
* ``fused_none``: the sum of its ``reduction="none"`` losses (τ kept per token, logits
  recomputed in the backward scan);

both with the default ``chunk_size=256``, and ``fused_sum`` with 512 too.

Each row also gives the largest difference of the loss and of both gradients to ``unfused``,
relative to the largest magnitude of the unfused value.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fdiv
from experiments.benchmarks import harness
from fdiv.lm_head import fused_linear_fdiv_loss

DIVERGENCES = {
    "full": (("kl", "uniform"), ("alpha:1.5", "uniform")),
    "quick": (("alpha:1.5", "uniform"),),
}
SIZES = {"full": (8192, 512, 32768), "quick": (64, 16, 256)}  # N, D, V
# (path, chunk size): both fused paths at the default chunk, and "sum" at a larger chunk
# (peak memory is about linear in the chunk).
FUSED = {
    "full": (("sum", 256), ("none", 256), ("sum", 512)),
    "quick": (("sum", 16), ("none", 16)),
}
REPEATS = {"full": 5, "quick": 2}
TIME_BUDGET_S = {"full": 300.0, "quick": None}
BASELINE = "unfused"


def _candidates(divergence: str, q: str, labels, fused_paths) -> dict[tuple[str, int], object]:
    """``(path, chunk size) -> value_and_grad`` w.r.t. hidden and weight; the baseline first."""

    def unfused(h, w):
        return jnp.sum(fdiv.fdiv_loss_with_integer_labels(h @ w, labels, divergence, q=q))

    def fused(reduction, chunk_size, h, w):
        loss = fused_linear_fdiv_loss(
            h, w, labels, divergence, q=q, chunk_size=chunk_size, reduction=reduction
        )
        return jnp.sum(loss)

    fns = {(BASELINE, 0): unfused}
    for reduction, chunk_size in fused_paths:
        fns[(f"fused_{reduction}", chunk_size)] = functools.partial(fused, reduction, chunk_size)
    return {key: jax.value_and_grad(fn, argnums=(0, 1)) for key, fn in fns.items()}


def _relative_differences(out, reference) -> dict[str, float]:
    (value, (dh, dw)), (value_ref, (dh_ref, dw_ref)) = out, reference

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

    return {
        "loss_rel_diff": rel(value, value_ref),
        "dhidden_rel_diff": rel(dh, dh_ref),
        "dweight_rel_diff": rel(dw, dw_ref),
    }


def run(mode: str, out_dir: Path) -> Path:
    """Runs the benchmark; returns the CSV written (rewritten after each divergence)."""
    path = out_dir / "lm_head.csv"
    n, d, v = SIZES[mode]
    provenance = harness.provenance()
    key_h, key_w, key_y = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(key_h, (n, d), jnp.float32)
    weight = jax.random.normal(key_w, (d, v), jnp.float32) * (2.0 / np.sqrt(d))
    labels = jax.random.randint(key_y, (n,), 0, v)
    rows: list[dict] = []
    for divergence, q in DIVERGENCES[mode]:
        compiled, peaks = {}, {}
        for key, fn in _candidates(divergence, q, labels, FUSED[mode]).items():
            exe, peaks[key] = harness.compile_with_memory(fn, hidden, weight)
            compiled[key] = functools.partial(exe, hidden, weight)
        harness.progress(f"[lm_head] N={n} D={d} V={v} {divergence} {q}: timing")
        base = (BASELINE, 0)
        differences = {}

        def compare(key, output, differences=differences, base=base):
            if key == base:
                differences["reference"] = output
            differences[key] = _relative_differences(output, differences["reference"])

        times, repeats = harness.time_interleaved(
            compiled, REPEATS[mode], time_budget_s=TIME_BUDGET_S[mode], on_warm_up=compare
        )
        for (name, chunk_size), t in times.items():
            row = {
                "benchmark": "lm_head",
                "mode": mode,
                "n": n,
                "d": d,
                "v": v,
                "dtype": "float32",
                "divergence": divergence,
                "reference_measure": q,
                "solver": "auto",
                "path": name,
                "chunk_size": chunk_size or "",
                "repeats": repeats,
                "median_s": t,
                "ratio_to_unfused": t / times[base],
                "peak_bytes": peaks[(name, chunk_size)],
                "memory_ratio_to_unfused": (
                    peaks[(name, chunk_size)] / peaks[base]
                    if peaks[(name, chunk_size)] and peaks[base]
                    else None
                ),
                **differences[(name, chunk_size)],
                **provenance,
            }
            rows.append(row)
            harness.progress(
                f"  {name:>10} {chunk_size or '':>5}: {t:8.3f} s "
                f"({row['ratio_to_unfused']:.2f}x unfused), peak {harness.mib(row['peak_bytes'])}, "
                f"loss rel. diff {row['loss_rel_diff']:.1e}"
            )
        harness.write_csv(path, rows)
    return path
