r"""Drawing classes (tokens) from probabilities that may be exactly zero.

A sparse f-softargmax (``"alpha:1.5"``, ``"chi2"``, ...) gives most classes probability
exactly zero, and a sampler must never return one of them. :func:`sample` uses the Gumbel-max
trick on ``log p``: a class with ``p_j = 0`` has the score ``−∞`` and loses to every class with
``p_j > 0`` whatever the noise, while ``argmax_j (log p_j + G_j)`` with i.i.d. standard Gumbel
``G_j`` is distributed as ``p / Σp``. No cumulative sum is formed, so no rounding of a running
total can land a draw on a zero-probability class, and the probabilities need not sum to
exactly one (the f-softargmax sums to one only to its solver's tolerance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _rows

Array = jax.Array


def _classes_last(probs, axis: int, name: str) -> Array:
    probs = jnp.asarray(probs)
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise ValueError(f"{name}: probs must be floating point, got dtype {probs.dtype}")
    if probs.ndim == 0:
        raise ValueError(f"{name}: probs must have at least one axis (the classes)")
    p = jnp.moveaxis(probs, axis % probs.ndim, -1)
    known = _rows.concrete_or_none(p)
    if known is not None and known.size:
        if not np.all(known >= 0):  # also catches NaN
            raise ValueError(f"{name}: probs must be non-negative and not NaN")
        if known.shape[-1] == 0 or not np.all(known.max(axis=-1) > 0):
            raise ValueError(f"{name}: every row of probs needs a class of positive probability")
    return p


def sample(rng: Array, probs: Array, *, axis: int = -1) -> Array:
    r"""One class per row drawn from ``probs / Σ probs``, never one of probability zero.

    Gumbel-max: ``argmax_j s_j`` with ``s_j = log p_j + G_j`` (``G_j`` standard Gumbel noise)
    for ``p_j > 0`` and ``s_j = −∞`` otherwise.

    Args:
      rng: a JAX PRNG key.
      probs: non-negative probabilities (unnormalised is fine); the classes lie along
        ``axis``. Any float dtype; the draw is made in float32 or wider.
      axis: the class axis.

    Returns:
      int32 class indices, the shape of ``probs`` without ``axis``. Under ``jit`` a row
      without a positive probability (all zeros or NaN) gives ``-1``; eagerly such input,
      negative or NaN probabilities raise ``ValueError``.

    Example:
      >>> import jax, jax.numpy as jnp, fdiv
      >>> p = fdiv.f_softargmax(jnp.array([3.0, 2.5, -1.0, -4.0]), "alpha:1.5", q="unit")
      >>> draws = fdiv.sample(jax.random.key(0), jnp.broadcast_to(p, (1000, 4)))
      >>> bool(jnp.all(p[draws] > 0))
      True
    """
    p = _classes_last(probs, axis, "sample")
    p = p.astype(_rows.compute_dtype(p.dtype))
    positive = p > 0
    noise = jax.random.gumbel(rng, p.shape, p.dtype)
    scores = jnp.where(positive, jnp.log(jnp.where(positive, p, 1.0)) + noise, -jnp.inf)
    index = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.any(positive, axis=-1), index, -1)


def greedy(probs: Array, *, axis: int = -1) -> Array:
    r"""The most probable class of each row, ``argmax_j p_j`` (the first one on ties).

    Args:
      probs: probabilities; the classes lie along ``axis``.
      axis: the class axis.

    Returns:
      int32 class indices, the shape of ``probs`` without ``axis``. Under ``jit`` a row
      without a positive probability gives ``-1`` (eagerly: ``ValueError``, as :func:`sample`).

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> fdiv.greedy(jnp.array([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]]))
      Array([1, 2], dtype=int32)
    """
    p = _classes_last(probs, axis, "greedy")
    index = jnp.argmax(p, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.max(p, axis=-1) > 0, index, -1)
