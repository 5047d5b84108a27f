r"""A memory-efficient language-model head: the output projection fused with the loss.

For hidden states ``h_i ∈ R^D`` (one per token), an output projection ``W ∈ R^{D×V}``
and targets ``y_i ∈ Δ^V``, :func:`fused_linear_fdiv_loss` computes

    ℓ_i = softmax_f(θ_i; q) + D_f(y_i, q) − ⟨θ_i, y_i⟩,        θ_i = h_i W / T,

exactly as :func:`fdiv.fdiv_loss_with_integer_labels` / :func:`fdiv.fdiv_loss` applied to
``hidden @ weight`` do, without ever holding the ``[N, V]`` logits. The tokens are cut into
chunks of ``C`` rows; a ``lax.scan`` over the chunks computes each chunk's logits (a matmul
in the input dtype with float32 accumulation), the row thresholds ``τ*`` and the loss with the
unfused loss's own functions (the anchored root of :mod:`fdiv.root_finding`, the value and
``p*`` relative to the solver's frame next to the row max, so ties at the support's end and
logits of 1e9 are as exact as there). The gradients follow from ``∇_θ ℓ_i = p*_i − y_i`` with
``p*_i = q ⊙ (f*)'(θ_i − τ*_i)``:

    ∇_h ℓ = (P* − Y) Wᵀ / T,        ∇_W ℓ = hᵀ (P* − Y) / T,

accumulated chunk by chunk (``∇_W`` in float32, in place, a block of columns at a time). A
custom VJP keeps only the frame, the anchored root and the row's emptiness from the forward pass
with ``reduction="none"`` and recomputes each chunk's logits and ``p*`` in the backward pass;
with ``reduction="sum"`` or ``"mean"`` the cotangent is a scalar, so the forward pass computes
both gradients directly and the backward pass only scales them. Besides the gradients
themselves, the memory is that of one chunk's logits and their gradient, ``O(C·V)``, instead
of ``O(N·V)``.

For sparse divergences (``"chi2"``, ``"alpha:α"`` with α > 1), ``p*`` is exactly zero off
its support, as in the unfused loss.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fdiv import _rows
from fdiv import root_finding as rf
from fdiv.divergences import Generator, get_generator
from fdiv.losses import (
    _divergence_to_reference,
    _gather_classes,
    _is_empty,
    _one_hot_divergence,
    _pick,
    _reference_mass,
)
from fdiv.operators import _check_solver, _probabilities_rel, _value_parts

Array = jax.Array
REDUCTIONS = ("none", "sum", "mean")
# Label kinds: class indices [N], dense distributions [N, V], top-k (indices, values) [N, K].
_INTEGER, _DENSE, _TOPK = "integer", "dense", "topk"


class _Static(NamedTuple):
    """The hashable configuration of one fused call (custom_vjp's non-differentiable part)."""

    gen: Generator
    solver: str
    num_iters: int | None
    reduction: str
    temperature: float
    uniform_q: bool  # q is the uniform measure over the unmasked classes (no q array)
    kind: str  # _INTEGER, _DENSE or _TOPK
    dtype: jnp.dtype  # of hidden and weight (and so of their gradients)


def _top_k_divergence(
    q_k: Array, values: Array, ok_k: Array, q_sum: Array, gen: Generator
) -> Array:
    """``D_f(y, q)`` for ``y`` zero outside distinct indices ``k`` (the dense sum, made sparse).

    ``Σ_j q_j f(y_j/q_j) = Q f(0) + Σ_k q_k (f(y_k/q_k) − f(0))`` over unmasked classes; with
    ``f(0) = +∞`` the ``y_j = 0`` terms are dropped as in :func:`fdiv.fdiv_loss`. Target mass on
    a masked class is ``+∞``.
    """
    q_safe = jnp.where(ok_k, q_k, 1.0)
    positive = values > 0
    if math.isfinite(gen.f_at_zero):
        terms = q_safe * (gen.f(values / q_safe) - gen.f_at_zero)
        base = q_sum * gen.f_at_zero
    else:
        v_safe = jnp.where(positive, values, 1.0)
        terms = jnp.where(positive, q_safe * gen.f(v_safe / q_safe), 0.0)
        base = 0.0
    terms = jnp.where(ok_k, terms, jnp.where(positive, jnp.inf, 0.0))
    return base + _rows.row_sum(terms)


def _chunk_theta(
    static: _Static, h: Array, weight: Array, chunk: dict, consts: dict
) -> tuple[Array, Array]:
    """The chunk's ``θ = h W / T`` (accumulated in float32 at least) and its ``q``."""
    acc = _rows.compute_dtype(h.dtype)
    logits = jnp.einsum("cd,dv->cv", h, weight, preferred_element_type=acc)
    # A per-token q travels with the chunk; a per-class one is shared by all chunks.
    q = "uniform" if static.uniform_q else chunk.get("q", consts.get("q"))
    theta, q_arr, _ = _rows.prepare(
        logits, q, axis=-1, where=consts["class_ok"], temperature=static.temperature
    )
    return theta, q_arr


def _chunk_targets(static: _Static, theta: Array, chunk: dict) -> Array:
    """The dense target ``y`` of the chunk, zero on masked classes (the gradient's ``−y``)."""
    unmasked = theta != -jnp.inf
    if static.kind == _INTEGER:
        classes = jax.lax.broadcasted_iota(jnp.int32, theta.shape, 1)
        return jnp.where(unmasked & (classes == chunk["labels"][:, None]), 1.0, 0.0).astype(
            theta.dtype
        )
    if static.kind == _DENSE:
        y = chunk["labels"].astype(theta.dtype)
    else:
        rows = jnp.arange(theta.shape[0])[:, None]
        y = (
            jnp.zeros_like(theta)
            .at[rows, chunk["indices"]]
            .add(chunk["values"].astype(theta.dtype), mode="drop")
        )
    return jnp.where(unmasked, y, 0.0)


def _has_grad(static: _Static, empty: Array, chunk: dict, k: int) -> Array:
    """Tokens with a gradient: unmasked, not every class masked, an in-range integer label."""
    ok = chunk["token_ok"] & ~empty
    if static.kind == _INTEGER:
        ok = ok & (chunk["labels"] >= 0) & (chunk["labels"] < k)
    return ok


def _chunk_loss(
    static: _Static, theta: Array, q_arr: Array, chunk: dict
) -> tuple[Array, rf.Root, Array]:
    """Per-token loss, root (frame ``m`` and anchored root) and emptiness of one chunk.

    As in the unfused loss, everything is computed relative to ``m``: ``⟨θ, y⟩ = ⟨θ − m, y⟩ +
    m Σy`` and ``m`` cancels against the f-softmax's when ``Σy = 1``. The value comes from the
    unfused loss's own blocked computation (:func:`fdiv.operators._value_parts`), so nothing
    of the chunk's size is written but its logits and their gradient. Without the CPU kernel:
    the head's time is its matmuls' (the kernel saved nothing there, measured), and the
    kernel's operand keeps a chunk's logits alive beside their gradient, which XLA otherwise
    writes in place (1.5× the head's temporaries at chunks of 256).
    """
    gen, k = static.gen, theta.shape[-1]
    value, shift, t = _value_parts(theta, q_arr, gen, static.solver, static.num_iters, kernel=False)
    empty = _is_empty(value)
    q_sum = _reference_mass(q_arr, k)
    valid = jnp.ones(theta.shape[:1], bool)
    mass = 1.0  # Σ_j y_j
    if static.kind == _INTEGER:
        labels = chunk["labels"]
        valid = (labels >= 0) & (labels < k)
        index = jnp.clip(labels, 0, k - 1)
        inner = _pick(theta, index) - shift
        divergence = _one_hot_divergence(_gather_classes(q_arr, index), q_sum, gen)
    elif static.kind == _DENSE:
        y = chunk["labels"].astype(theta.dtype)
        z = theta - shift[:, None]
        inner = _rows.row_sum(jnp.where(theta != -jnp.inf, z, 0.0) * y)
        divergence = _divergence_to_reference(y, q_arr, gen)
        mass = _rows.row_sum(y)
    else:
        index = jnp.clip(chunk["indices"], 0, k - 1)
        values = chunk["values"].astype(theta.dtype)
        theta_k = jnp.take_along_axis(theta, index, axis=-1)
        q_k = jnp.take_along_axis(jnp.broadcast_to(q_arr, theta.shape), index, axis=-1)
        ok_k = theta_k != -jnp.inf
        inner = _rows.row_sum(jnp.where(ok_k, theta_k - shift[:, None], 0.0) * values)
        divergence = _top_k_divergence(q_k, values, ok_k, q_sum, gen)
        mass = _rows.row_sum(values)
    loss = value + divergence - inner
    if static.kind != _INTEGER:
        loss = loss + shift * (1.0 - mass)
    loss = jnp.where(valid, loss, jnp.nan)
    # A token with every class masked is padding (loss 0, no gradient), as in the unfused loss.
    loss = jnp.where(~empty & chunk["token_ok"], loss, 0.0)
    return loss, rf.Root(shift, t), empty


def _chunk_dlogits(
    static: _Static,
    theta: Array,
    q_arr: Array,
    root: rf.Root,
    empty: Array,
    g: Array,
    chunk: dict,
) -> Array:
    """``g ⊙ (p* − y) / T`` for one chunk, zero for tokens without a gradient."""
    p = _probabilities_rel(theta - root.shift[:, None], q_arr, root.t, static.gen)
    g = jnp.where(_has_grad(static, empty, chunk, theta.shape[-1]), g, 0.0)
    dtheta = (p - _chunk_targets(static, theta, chunk)) * g[:, None]
    return dtheta / static.temperature if static.temperature != 1.0 else dtheta


# Columns of the weight gradient updated at a time: the update ``hᵀ (P* − Y)`` of a whole
# ``[D, V]`` would need a temporary as large as the gradient itself.
_WEIGHT_BLOCK = 4096


def _chunk_grads(h: Array, weight: Array, dlogits: Array, dweight: Array) -> tuple[Array, Array]:
    """``(dlogits Wᵀ, dweight + hᵀ dlogits)``: matmuls in the input dtype, float32 accumulation.

    ``dweight`` is updated in place, ``_WEIGHT_BLOCK`` columns at a time, so that no
    temporary of its size exists. The last block overlaps the one before; its columns
    already updated get a zero update.
    """
    acc = _rows.compute_dtype(h.dtype)
    dlogits = dlogits.astype(h.dtype)
    dh = jnp.einsum("cv,dv->cd", dlogits, weight, preferred_element_type=acc)
    k = weight.shape[1]
    width = min(_WEIGHT_BLOCK, k)
    n_blocks = -(-k // width)

    def update(j, dweight):
        start = jnp.minimum(j * width, k - width)
        block = jax.lax.dynamic_slice_in_dim(dlogits, start, width, axis=1)
        fresh = jax.lax.broadcasted_iota(jnp.int32, (1, width), 1) + start >= j * width
        block = jnp.where(fresh, block, 0)
        dw = jnp.einsum("cd,cv->dv", h, block, preferred_element_type=acc)
        old = jax.lax.dynamic_slice_in_dim(dweight, start, width, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(dweight, old + dw, start, axis=1)

    return dh, jax.lax.fori_loop(0, n_blocks, update, dweight)


def _scan_forward(static: _Static, h: Array, weight: Array, aux: dict, *, with_grads: bool):
    """One pass over the chunks: per-token losses and roots, and optionally the gradients.

    Returns ``(losses, roots, empty)``; with ``with_grads`` (scalar reductions) the gradients
    of the reduced loss instead, unscaled by the upstream cotangent: ``(losses, dh, dweight)``.
    """
    consts, xs = aux["consts"], aux["chunks"]
    acc = _rows.compute_dtype(h.dtype)

    def body(dweight, x):
        h_c, chunk = x
        theta, q_arr = _chunk_theta(static, h_c, weight, chunk, consts)
        loss, root, empty = _chunk_loss(static, theta, q_arr, chunk)
        if not with_grads:
            return dweight, (loss, root, empty)
        dlogits = _chunk_dlogits(static, theta, q_arr, root, empty, consts["scale"], chunk)
        dh, dweight = _chunk_grads(h_c, weight, dlogits, dweight)
        return dweight, (loss, dh)

    init = jnp.zeros(weight.shape, acc) if with_grads else None
    dweight, out = jax.lax.scan(body, init, (h, xs))
    return (*out, dweight) if with_grads else out


def _reduce(static: _Static, losses: Array, consts: dict) -> Array:
    if static.reduction == "none":
        return losses
    return jnp.sum(losses) * consts["scale"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(static: _Static, h: Array, weight: Array, aux: dict) -> Array:
    losses, _, _ = _scan_forward(static, h, weight, aux, with_grads=False)
    return _reduce(static, losses, aux["consts"])


def _fused_fwd(static: _Static, h: Array, weight: Array, aux: dict):
    if static.reduction == "none":
        losses, roots, empty = _scan_forward(static, h, weight, aux, with_grads=False)
        return losses, (h, weight, aux, roots, empty)
    losses, dh, dweight = _scan_forward(static, h, weight, aux, with_grads=True)
    return _reduce(static, losses, aux["consts"]), (dh, dweight)


def _fused_bwd(static: _Static, residuals, g: Array):
    if static.reduction != "none":
        dh, dweight = residuals
        return (g * dh).astype(static.dtype), (g * dweight).astype(static.dtype), None
    h, weight, aux, roots, empty = residuals
    consts, xs = aux["consts"], aux["chunks"]

    def body(dweight, x):
        h_c, chunk, root, empty_c, g_c = x
        theta, q_arr = _chunk_theta(static, h_c, weight, chunk, consts)
        dlogits = _chunk_dlogits(static, theta, q_arr, root, empty_c, g_c, chunk)
        dh, dweight = _chunk_grads(h_c, weight, dlogits, dweight)
        return dweight, dh

    init = jnp.zeros(weight.shape, _rows.compute_dtype(h.dtype))
    dweight, dh = jax.lax.scan(body, init, (h, xs, roots, empty, g))
    return dh.astype(static.dtype), dweight.astype(static.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_indices(indices, k: int, token_ok, what: str) -> None:
    """Eager range check of label indices on unmasked tokens (under jit: NaN or dropped)."""
    known = _rows.concrete_or_none(indices)
    ok = _rows.concrete_or_none(token_ok)
    if known is None or ok is None:
        return
    known = known[ok]
    if known.size and (known.min() < 0 or known.max() >= k):
        raise ValueError(
            f"{what} must lie in [0, {k}), got values in [{known.min()}, {known.max()}]"
        )


def _chunked(x: Array, n_chunks: int, chunk: int, fill=0) -> Array:
    """``x [N, ...]`` padded with ``fill`` to ``n_chunks · chunk`` rows, as chunks."""
    pad = n_chunks * chunk - x.shape[0]
    if pad:
        x = jnp.concatenate([x, jnp.full((pad, *x.shape[1:]), fill, x.dtype)])
    return x.reshape(n_chunks, chunk, *x.shape[1:])


def fused_linear_fdiv_loss(
    hidden: Array,
    weight: Array,
    labels: Array | tuple[Array, Array],
    divergence: str | Generator,
    *,
    q: _rows.QLike = None,
    where: Array | None = None,
    class_where: Array | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
    reduction: str = "none",
    solver: str = "auto",
    num_iters: int | None = None,
) -> Array:
    r"""The f-divergence loss of ``hidden @ weight`` without materialising the logits.

    ``ℓ_i = softmax_f(θ_i; q) + D_f(y_i, q) − ⟨θ_i, y_i⟩`` with ``θ_i = h_i W / T``; the
    same values and gradients (for ``hidden`` and ``weight``) as
    ``fdiv.fdiv_loss_with_integer_labels(hidden @ weight, labels, divergence, ...)`` (or
    :func:`fdiv.fdiv_loss` for soft targets), computed ``chunk_size`` tokens at a time so
    that memory beyond the gradients is ``O(chunk_size · V)`` instead of ``O(N · V)``. Matmuls
    run in the input dtype (e.g. bfloat16) with float32 accumulation, the root search in
    float32 (float64 for float64 inputs); the gradient of ``weight`` is accumulated in float32.

    Args:
      hidden: ``[N, D]`` hidden states (the tokens).
      weight: ``[D, V]`` output projection.
      labels: the targets, one of: integer class indices ``[N]``; target distributions
        ``[N, V]``; or top-k targets for distillation, a pair ``(indices [N, K] int,
        values [N, K])`` meaning ``y_{i, indices[i, k]} = values[i, k]`` and zero elsewhere
        (indices distinct within a row).
      divergence: a name (``"kl"``, ``"reverse_kl"``, ``"chi2"``, ``"hellinger"``, ``"js"``,
        ``"alpha:<value>"``) or a :class:`~fdiv.Generator`.
      q: reference measure: ``None``/``"uniform"``, ``"unit"``, or a non-negative array
        broadcastable to ``[N, V]`` (a class prior ``[V]`` or a per-token ``[N, V]``). It is
        treated as a constant: no gradient flows to ``q`` here (use the unfused loss to
        learn it).
      where: ``[N]`` boolean token mask: a ``False`` token has loss 0 and no gradient
        (padding; its label may be anything, e.g. ``-100``). Note: this masks tokens,
        unlike ``where`` in :func:`fdiv.fdiv_loss`, which masks classes.
      class_where: ``[V]`` boolean class mask: ``False`` classes get no mass (the unfused
        loss's ``where``). A target on a masked class has an infinite loss.
      temperature: a positive Python float ``T``: the loss of ``hidden @ weight / T``.
      chunk_size: tokens per chunk (any positive integer; the last chunk is padded). Peak
        memory grows about linearly with it; at ``V = 32k``, ``D = 512``, ``N = 8192`` the
        default 256 keeps it (gradients included) under 1/8 of the unfused path's at no cost
        in time on CPU (see ``results/benchmarks/lm_head.csv``); larger chunks make larger
        matmuls, which may pay on GPU/TPU.
      reduction: ``"none"`` (per-token losses ``[N]``), ``"sum"``, or ``"mean"`` (the sum
        divided by the number of unmasked tokens, at least 1).
      solver, num_iters: see :func:`fdiv.f_softargmax`; here ``"auto"`` never takes the CPU
        kernels (see ``_chunk_loss``).

    Returns:
      Per-token losses ``[N]`` or their sum/mean; float32 for half-precision inputs.
      Integer labels outside ``[0, V)`` on unmasked tokens raise ``ValueError`` when known
      (eager); under jit they give a NaN loss and no gradient, as in the unfused loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from fdiv.lm_head import fused_linear_fdiv_loss
      >>> hidden = jax.random.normal(jax.random.key(0), (10, 8))
      >>> weight = jax.random.normal(jax.random.key(1), (8, 50))
      >>> labels = jnp.arange(10)
      >>> loss = lambda h, w: fused_linear_fdiv_loss(
      ...     h, w, labels, "alpha:1.5", chunk_size=4, reduction="mean")
      >>> value, (d_hidden, d_weight) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, weight)
      >>> d_hidden.shape, d_weight.shape
      ((10, 8), (8, 50))

    References:
      Roulet, Liu, Vieillard, Sander, Blondel. Loss Functions and Operators Generated by
      f-Divergences. ICML 2025.
    """
    gen = get_generator(divergence)
    _check_solver(solver)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive Python float, got {temperature!r}")
    hidden, weight = jnp.asarray(hidden), jnp.asarray(weight)
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[0]:
        raise ValueError(
            f"expected hidden [N, D] and weight [D, V], got {hidden.shape} and {weight.shape}"
        )
    dtype = jnp.result_type(hidden, weight)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"hidden and weight must be floating point, got {dtype}")
    hidden, weight = hidden.astype(dtype), weight.astype(dtype)
    n, k = hidden.shape[0], weight.shape[1]

    token_ok = jnp.ones(n, bool) if where is None else jnp.asarray(where, bool)
    if token_ok.shape != (n,):
        raise ValueError(f"where must be a [N] token mask of shape {(n,)}, got {token_ok.shape}")
    if isinstance(labels, tuple):
        indices, values = (jnp.asarray(x) for x in labels)
        if indices.shape != values.shape or indices.shape[:1] != (n,) or indices.ndim != 2:
            raise ValueError(
                f"top-k labels must be (indices [N, K], values [N, K]) with N = {n}, "
                f"got {indices.shape} and {values.shape}"
            )
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise ValueError(f"top-k indices must be integers, got dtype {indices.dtype}")
        _check_indices(indices, k, token_ok, "top-k indices")
        kind, targets = _TOPK, {"indices": indices, "values": values}
    else:
        labels = jnp.asarray(labels)
        if labels.shape == (n,) and jnp.issubdtype(labels.dtype, jnp.integer):
            _check_indices(labels, k, token_ok, "labels")
            kind, targets = _INTEGER, {"labels": labels}
        elif labels.shape == (n, k):
            kind, targets = _DENSE, {"labels": labels}
        else:
            raise ValueError(
                f"labels must be integers [N] = {(n,)}, distributions [N, V] = {(n, k)}, or a "
                f"top-k pair (indices, values); got shape {labels.shape}, dtype {labels.dtype}"
            )

    compute = _rows.compute_dtype(dtype)
    q_arr = _rows._reference_measure(q, (n, k), compute)
    consts: dict = {"class_ok": None if class_where is None else jnp.asarray(class_where, bool)}
    if consts["class_ok"] is not None and consts["class_ok"].shape != (k,):
        raise ValueError(f"class_where must be a [V] mask of shape {(k,)}")
    chunk_arrays = {**targets, "token_ok": token_ok}
    if not isinstance(q_arr, str):
        q_arr = jax.lax.stop_gradient(q_arr)
        if q_arr.shape[0] == n and n > 1:  # per-token: chunked with the tokens
            chunk_arrays["q"] = q_arr
        else:
            consts["q"] = q_arr
    if reduction == "mean":
        consts["scale"] = 1.0 / jnp.maximum(jnp.sum(token_ok), 1).astype(compute)
    else:
        consts["scale"] = jnp.ones((), compute)

    chunk = min(chunk_size, max(n, 1))
    n_chunks = -(-n // chunk)
    # Padding rows are masked tokens: loss 0, no gradient, then cut off.
    chunks = {
        key: _chunked(x, n_chunks, chunk, False if key == "token_ok" else 0)
        for key, x in chunk_arrays.items()
    }
    static = _Static(
        gen,
        solver,
        num_iters,
        reduction,
        float(temperature),
        isinstance(q_arr, str),
        kind,
        dtype,
    )
    out = _fused(
        static, _chunked(hidden, n_chunks, chunk), weight, {"consts": consts, "chunks": chunks}
    )
    return out.reshape(-1)[:n] if reduction == "none" else out
