"""Input handling shared by the operators and the losses.

Everything is brought to one layout: classes on the last axis, the compute dtype
(float32 for half precision, float64 when the input is float64), classes outside
the reference measure as ``-inf`` logits with ``q_j = 0``, and ``q`` as an array
broadcastable to the logits, kept small (``[..., 1]`` or ``[1, ..., k]``) when it
is shared across rows or classes so that the solver never materialises it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
QLike = str | Array | np.ndarray | None
T = TypeVar("T")
Q_NAMES = ("uniform", "unit")


# Longest row that row_sum reduces in one piece (see there).
MAX_ROW = 32768


def row_sum(x: Array) -> Array:
    """``jnp.sum(x, axis=-1)``, reduced in pieces of at most 32768 classes when the rows are
    longer.

    XLA:CPU runs a fused elementwise map + reduction over longer rows several times slower per
    element (measured on 512 × 131072 logits: 290 ms for one pass of the α = 1.5 mass, 21 ms
    for the same pass over 2048 rows of 32768). Summing ``[..., V]`` as ``[N·k, V / k]`` and
    then ``[N, k]`` halves the time of the f-losses at V = 128k; ``k`` is the smallest divisor
    of ``V`` that brings the pieces to 32768 or less (none: one piece). On accelerators the
    reshape is free.
    """
    v = x.shape[-1]
    pieces = next((k for k in range(2, v // 1024 + 1) if v % k == 0 and v // k <= MAX_ROW), 1)
    if v <= MAX_ROW or pieces == 1:
        return jnp.sum(x, axis=-1)
    partial = jnp.sum(x.reshape(-1, v // pieces), axis=-1)
    return jnp.sum(partial.reshape(*x.shape[:-1], pieces), axis=-1)


# Elements per block of rows that map_row_blocks hands to its function on CPU (2 MiB of float32).
_BLOCK_ELEMENTS = 2**19


def map_row_blocks(fn: Callable[[Array, Array], T], theta: Array, q: Array) -> T:
    """``fn(theta, q)`` for per-row results, run over blocks of rows on CPU.

    ``fn`` maps logits ``[n, k]`` and a reference measure broadcastable to them to a pytree of
    ``[n]`` arrays, each row's result independent of the other rows. ``theta`` may have any
    leading axes (the results get them back); ``q`` must be shared across rows (leading axes
    of 1) or have the leading axes of ``theta``.

    The root search makes 4–10 passes over each row. On XLA:CPU a pass costs about as much
    from cache as streamed from memory, but passes over the whole ``[N, k]`` materialise arrays
    ``[N, k]`` between them (a Newton step's two sums share their elementwise map through
    memory; YNNPACK's reductions take broadcast constants as full arrays), and a fresh array of
    64 MiB costs more than the pass that fills it (page faults). Over blocks of about 2 MiB
    those temporaries are small and reused: the ``alpha:1.5`` loss at ``512 × 32768`` runs
    about 2× faster. On GPU and TPU a loop over blocks would serialise the rows, so there
    ``fn`` sees the whole array (the choice is made when the computation is lowered, per
    platform). Rows of the last block may overlap the one before; they are computed twice,
    identically.
    """
    lead, k = theta.shape[:-1], theta.shape[-1]
    n = math.prod(lead)
    shared = all(d == 1 for d in q.shape[:-1])
    if not shared and q.shape[:-1] != lead:  # partly broadcast q: one block, shape kept
        return fn(theta, q)
    theta2 = theta.reshape(n, k)
    q2 = q.reshape(1 if shared else n, q.shape[-1])
    rows = max(1, _BLOCK_ELEMENTS // max(k, 1))

    def blocked(theta2, q2):
        out_shapes = jax.eval_shape(fn, theta2[:rows], q2[:rows])
        init = jax.tree.map(lambda s: jnp.zeros((n, *s.shape[1:]), s.dtype), out_shapes)

        def block(i, out):
            start = jnp.minimum(i * rows, n - rows)
            theta_b = jax.lax.dynamic_slice_in_dim(theta2, start, rows)
            q_b = q2 if shared else jax.lax.dynamic_slice_in_dim(q2, start, rows)
            return jax.tree.map(
                lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, start, 0),
                out,
                fn(theta_b, q_b),
            )

        return jax.lax.fori_loop(0, -(-n // rows), block, init)

    if rows >= n:
        out = fn(theta2, q2)
    else:
        out = jax.lax.platform_dependent(theta2, q2, cpu=blocked, default=fn)
    return jax.tree.map(lambda o: o.reshape(*lead, *o.shape[1:]), out)


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
            return np.ones((1,) * len(shape), dtype)
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


def _all_positive(q: Array) -> bool:
    values = concrete_or_none(q)
    return values is not None and bool(np.all(values > 0))


@jax.custom_jvp
def _uncontracted(theta: Array) -> Array:
    """``θ``, through a select that keeps XLA:CPU from contracting the op that made it.

    XLA fuses the division by the temperature into each of the solver's passes, and LLVM
    contracts it with the pass's ``θ − m`` into a fused multiply-add in some passes but not in
    the row max's: the passes then see the top logit an ulp apart, which moves Σp by 3e-5 to
    4e-3 next to a pole of (f*)' (``test_temperature_inside_the_jit_near_a_pole``). A select
    between the two is not contracted. Its cost: XLA then writes ``θ / T`` once, one array the
    size of the logits that the passes read (without it each pass recomputes ``θ / T`` from the
    logits), which is why it guards only fdiv's own division and not logits that arrive as they
    are. Its derivative is the identity (the select's own would keep a mask for the backward
    pass).
    """
    return jnp.where(theta != -jnp.inf, theta, -jnp.inf)


@_uncontracted.defjvp
def _uncontracted_jvp(primals, tangents):
    return _uncontracted(primals[0]), tangents[0]


def prepare(logits, q: QLike, *, axis: int, where, temperature) -> tuple[Array, Array, Array]:
    """Returns ``(theta, q, logits)``: classes last, compute dtype, masks as ``-inf``.

    The reference measure is independent of the logits: ``where`` and ``q_j = 0``
    take classes out of it (their logit becomes ``-inf`` and their ``q_j`` 0),
    while a ``-inf`` logit alone only gives its class zero mass. The uniform
    measure is ``1/k`` over the classes kept by ``where``. ``logits`` is returned
    validated (and unmoved) for the caller's output dtype. Under jit a negative or
    non-finite ``q`` cannot raise: it turns the whole output into NaN instead.
    """
    logits = check_logits(logits)
    ndim, axis = logits.ndim, axis % logits.ndim
    theta = logits.astype(compute_dtype(logits.dtype))
    if not (isinstance(temperature, (int, float)) and temperature == 1):
        t = concrete_or_none(temperature)
        if t is not None and not np.all(t > 0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        theta = _uncontracted(theta / temperature)
    q_arr = _reference_measure(q, logits.shape, theta.dtype)
    if where is not None:
        mask = jnp.asarray(where, bool)
        if mask.ndim > ndim:
            raise ValueError(f"where of shape {mask.shape} has more axes than the logits")
        mask = mask.reshape((1,) * (ndim - mask.ndim) + mask.shape)
        try:
            jnp.broadcast_shapes(mask.shape, logits.shape)
        except ValueError:
            raise ValueError(
                f"where of shape {mask.shape} does not broadcast to logits {logits.shape}"
            ) from None
        theta = jnp.where(mask, theta, -jnp.inf)
        if isinstance(q_arr, str):
            full = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, (1,) * ndim))
            count = jnp.sum(full, axis=axis, keepdims=True) if full.shape[axis] > 1 else 1
            q_arr = 1.0 / jnp.maximum(count, 1).astype(theta.dtype)
        q_arr = jnp.where(mask, q_arr, 0.0).astype(theta.dtype)
    elif isinstance(q_arr, str):
        q_arr = np.full((1,) * ndim, 1.0 / logits.shape[axis], theta.dtype)
    if not _all_positive(q_arr):
        theta = jnp.where(q_arr > 0, theta, -jnp.inf)
        if concrete_or_none(q_arr) is None:
            bad = jnp.any(q_arr < 0) | ~jnp.all(jnp.isfinite(q_arr))
            theta = jnp.where(bad, jnp.nan, theta)
    return jnp.moveaxis(theta, axis, -1), jnp.moveaxis(jnp.asarray(q_arr), axis, -1), logits


def restore_axis(x: Array, axis: int, ndim: int) -> Array:
    return jnp.moveaxis(x, -1, axis % ndim)
