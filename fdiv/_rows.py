"""Input handling shared by the operators and the losses.

Everything is brought to one layout: classes on the last axis, the compute dtype
(float32 for half precision, float64 when the input is float64), masked classes
as ``-inf`` logits, and the reference measure ``q`` as an array broadcastable to
the logits, kept small (``[..., 1]``) when it is constant across classes so that
the solver never materialises it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
QLike = str | Array | np.ndarray | None
Q_NAMES = ("uniform", "unit")


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype the root search runs in: float32 at least, float64 when given."""
    return jnp.promote_types(dtype, jnp.float32)


def concrete_or_none(x) -> np.ndarray | None:
    """``x`` as a NumPy array when its value is known now (not under jit), else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_logits(logits) -> Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one axis (the classes)")
    return logits


def _reference_measure(q: QLike, shape: tuple[int, ...], dtype) -> Array | str:
    """``q`` as an array with ``len(shape)`` axes broadcastable to ``shape``, or "uniform".

    The array is not broadcast: a per-class prior stays ``[1, ..., k]``."""
    if q is None or (isinstance(q, str) and q == "uniform"):
        return "uniform"
    if isinstance(q, str):
        if q == "unit":
            return jnp.ones((1,) * len(shape), dtype)
        raise ValueError(f"unknown reference measure {q!r}; valid: {Q_NAMES} or an array")
    q = jnp.asarray(q, dtype)
    if q.ndim > len(shape):
        raise ValueError(f"q of shape {q.shape} has more axes than logits of shape {shape}")
    q = q.reshape((1,) * (len(shape) - q.ndim) + q.shape)
    try:
        jnp.broadcast_shapes(q.shape, shape)
    except ValueError:
        raise ValueError(
            f"q of shape {q.shape} does not broadcast to logits of shape {shape}"
        ) from None
    values = concrete_or_none(q)
    if values is not None and not (np.all(np.isfinite(values)) and np.all(values >= 0)):
        raise ValueError("q must be finite and non-negative (a measure on the classes)")
    return q


def prepare(logits, q: QLike, *, axis: int, where, temperature) -> tuple[Array, Array, Array]:
    """Returns ``(theta, q, logits)``: classes last, compute dtype, masks as ``-inf``.

    ``logits`` is returned validated (and unmoved) for the caller's output dtype.
    Under jit a negative or non-finite ``q`` cannot raise: it turns the whole
    output into NaN instead.
    """
    logits = check_logits(logits)
    axis = axis % logits.ndim
    theta = logits.astype(compute_dtype(logits.dtype))
    if not (isinstance(temperature, (int, float)) and temperature == 1):
        t = concrete_or_none(temperature)
        if t is not None and not np.all(t > 0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        theta = theta / temperature
    if where is not None:
        where = jnp.broadcast_to(jnp.asarray(where, bool), logits.shape)
        theta = jnp.where(where, theta, -jnp.inf)
    q_arr = _reference_measure(q, logits.shape, theta.dtype)
    if isinstance(q_arr, str):  # uniform over the row's unmasked classes
        theta = jnp.moveaxis(theta, axis, -1)
        count = jnp.sum(theta != -jnp.inf, axis=-1, keepdims=True)
        return theta, 1.0 / jnp.maximum(count, 1).astype(theta.dtype), logits
    theta = jnp.where(q_arr > 0, theta, -jnp.inf)
    if concrete_or_none(q_arr) is None:
        bad = jnp.any(q_arr < 0) | ~jnp.all(jnp.isfinite(q_arr))
        theta = jnp.where(bad, jnp.nan, theta)
    return jnp.moveaxis(theta, axis, -1), jnp.moveaxis(q_arr, axis, -1), logits


def restore_axis(x: Array, axis: int, ndim: int) -> Array:
    return jnp.moveaxis(x, -1, axis % ndim)
