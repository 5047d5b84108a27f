"""Evaluation statistics of predicted distributions, as sums that add up over batches.

A jit'd eval step returns :func:`prediction_sums` of a batch; the host adds them over the test set
(:func:`add`) and turns them into means with :func:`finalize`. Keeping sums (not means) makes
padded batches and uneven last batches exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def prediction_sums(
    probs_BxK: Array, labels_B: Array, loss_B: Array, mask_B: Array, num_bins: int
) -> dict[str, Array]:
    """Sums over the unmasked examples of a batch.

    ``count``, ``correct`` (argmax of ``probs`` is the label), ``loss``, ``support`` (number of
    classes with non-zero probability), and per confidence bin (equal-width bins of the top
    probability on [0, 1]): ``bin_count``, ``bin_confidence``, ``bin_correct`` — the expected
    calibration error of Guo et al. (2017) follows from them.
    """
    weight_B = mask_B.astype(jnp.float32)
    confidence_B = probs_BxK.max(axis=-1).astype(jnp.float32)
    correct_B = (probs_BxK.argmax(axis=-1) == labels_B).astype(jnp.float32) * weight_B
    bins_B = jnp.clip((confidence_B * num_bins).astype(jnp.int32), 0, num_bins - 1)
    in_bin_BxN = jax.nn.one_hot(bins_B, num_bins) * weight_B[:, None]
    return {
        "count": weight_B.sum(),
        "correct": correct_B.sum(),
        "loss": jnp.where(mask_B, loss_B, 0.0).sum(),
        "support": ((probs_BxK > 0).sum(axis=-1) * weight_B).sum(),
        "bin_count": in_bin_BxN.sum(axis=0),
        "bin_confidence": (in_bin_BxN * confidence_B[:, None]).sum(axis=0),
        "bin_correct": (in_bin_BxN * correct_B[:, None]).sum(axis=0),
    }


def add(total: dict[str, np.ndarray] | None, sums: dict[str, Array]) -> dict[str, np.ndarray]:
    """Adds a batch's sums to the running total on the host, in float64."""
    sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
    return sums if total is None else {k: total[k] + sums[k] for k in total}


def finalize(total: dict[str, np.ndarray]) -> dict[str, float]:
    """``accuracy``, ``loss``, ``ece`` and ``support_size`` (means over the examples)."""
    n = total["count"]
    ece = np.abs(total["bin_correct"] - total["bin_confidence"]).sum() / n
    return {
        "accuracy": float(total["correct"] / n),
        "loss": float(total["loss"] / n),
        "ece": float(ece),
        "support_size": float(total["support"] / n),
    }
