"""The f-softargmax operator and the f-softmax value.

For a generator ``f``, logits ``θ`` and a reference measure ``q``:

    softmax_f(θ; q)    = max_{p ∈ Δ} ⟨p, θ⟩ − D_f(p, q)      (f_softmax, a value)
    softargmax_f(θ; q) = the maximiser p*                     (f_softargmax)
                       = q ⊙ (f*)'(θ − τ*),   Σ_j p*_j = 1

with ``τ*`` found per row by :mod:`fdiv.root_finding`. With ``"kl"`` they are
``logsumexp(θ + log q) + 1 − Σ q`` and ``softmax(θ + log q)``.

Derivatives never go through the solver. The root carries its implicit
derivative (implicit function theorem on ``Σ_j q_j (f*)'(θ_j − τ) = 1``)::

    τ̇ = (Σ_j w_j θ̇_j + Σ_j s_j q̇_j) / Σ_j w_j,   s = (f*)'(θ − τ),  w = q ⊙ (f*)''(θ − τ)

which gives the operator's Jacobian ``diag(w) − w wᵀ / Σ w`` (softmax's for KL,
sparsemax's for χ², entmax's for α > 1), and ``f_softmax`` has the envelope
derivative ``∇_θ = p*``, ``∇_q = f*(θ − τ*)``. Both rules are written in
differentiable JAX, so higher derivatives (Hessians of the losses) are exact too.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from fdiv import _rows
from fdiv import root_finding as rf
from fdiv.divergences import KL, Generator, get_generator

Array = jax.Array


def _implicit_root_jvp(gen: Generator, primals, tangents):
    theta, q, t = primals
    dtheta, dq, _ = tangents  # the root's own tangent is implied by theta and q
    t = _implicit_root_for(gen)(theta, q, t)  # differentiable: exact higher orders
    r = theta - t[..., None]
    unmasked = theta != -jnp.inf
    w = gen.weighted_conj_hess_rel(q, r)
    numerator = _rows.row_sum(jnp.where(unmasked, w * dtheta, 0.0))
    numerator = numerator + _rows.row_sum(gen.conj_grad_rel(r) * dq)
    total = _rows.row_sum(w)
    return t, numerator / jnp.where(total > 0, total, 1.0)


@functools.cache
def _implicit_root_for(gen: Generator):
    """``(θ, q, t) ↦ t`` for the anchored root ``t = τ + a``, with its implicit derivative."""
    root = jax.custom_jvp(lambda theta, q, t: t)
    root.defjvp(functools.partial(_implicit_root_jvp, gen))
    return root


def _probabilities_rel(theta: Array, q: Array, t: Array, gen: Generator) -> Array:
    """``q ⊙ (f*)'(θ − τ)`` from the anchored root ``t = τ + a``: sums to 1 to the solver's
    tolerance, so it is not renormalised (which would cost one more pass over the classes)."""
    return q * gen.conj_grad_rel(theta - t[..., None])


def _shifted_root(
    theta, q, gen, solver, num_iters, kernel: bool = True
) -> tuple[Array, rf.Root, rf.RowTotals]:
    """``(z, root, totals)``: the logits minus the solver's frame ``root.shift``, the root and
    the row's sums.

    The frame is the row max moved next to the root (see ``root_finding._Frame``): it keeps τ
    exact for huge logits (1e9 + τ would round τ away in float32) and resolves the classes at
    the edge of the support. The shift is a constant for differentiation: every function here
    is invariant to it. ``kernel``: as :func:`fdiv.root_finding.solve`.
    """
    root, totals = rf.solve(theta, q, gen, solver, num_iters, kernel)
    return theta - root.shift[..., None], root, totals


def _softargmax_last(theta, q, gen, solver, num_iters) -> Array:
    z, root, _ = _shifted_root(theta, q, gen, solver, num_iters)
    return _probabilities_rel(z, q, _implicit_root_for(gen)(z, q, root.t), gen)


def _conj_terms(theta: Array, t: Array, gen: Generator) -> Array:
    """``f*(θ − τ)`` from the anchored root ``t``: ``∂ softmax_f / ∂q``.

    At a ``-inf`` logit it is ``−f(0)``; where ``f(0) = +∞`` that infinite constant
    is dropped (as the matching terms of ``D_f(y, q)`` in the losses).
    """
    conj = gen.conj_rel(theta - t[..., None])
    if math.isfinite(gen.f_at_zero):
        return conj
    return jnp.where(theta != -jnp.inf, conj, 0.0)


def _value_rel(
    theta: Array,
    q: Array,
    t: Array,
    gen: Generator,
    totals: rf.RowTotals,
    excess: Array | None = None,
) -> Array:
    """``τ + Σ_j q_j f*(θ_j − τ)`` from the anchored root ``t = τ + a`` (−inf for an empty row).

    For KL, ``Σ_j q_j f*(θ_j − τ) = Σ_j p_j − Σ_j q_j = 1 − Q`` at the root: no pass.

    For sparse generators ``f* = −f(0)`` off the support, and the sum is taken of the excess
    ``f* + f(0)``, then ``−Q f(0)`` added once: with unit q over V classes the plain sum is
    about ``−V f(0)``, and its float32 rounding depends on the order of the reduction (7e-4
    for 1000 ties with χ², different between the fused head's chunks and a whole batch).
    ``excess`` is that sum when a CPU kernel has computed it (not differentiable: see
    :func:`_enveloped`), also for the poles and JS, and for reverse KL, whose ``f(0)`` is
    infinite, ``Σ_j q_j f*(θ_j − τ)`` itself (``f(0)`` taken as 0, as in ``_conj_terms``).
    """
    if isinstance(gen, KL):
        value = t + 1.0 - totals.q_sum
    elif gen.is_sparse or excess is not None:
        f_at_zero = gen.f_at_zero if math.isfinite(gen.f_at_zero) else 0.0
        if excess is None:
            excess = _rows.row_sum(q * (_conj_terms(theta, t, gen) + f_at_zero))
        value = t - gen.anchor + excess - totals.q_sum * f_at_zero
    else:
        value = t - gen.anchor + _rows.row_sum(q * _conj_terms(theta, t, gen))
    return jnp.where(totals.empty, -jnp.inf, value)


def _value_parts(
    theta, q, gen, solver, num_iters, kernel: bool = True
) -> tuple[Array, Array, Array]:
    """``(softmax_f(θ; q) − m, m, t)`` per row: the value in the solver's frame ``m`` and the
    anchored root ``t`` in that frame, differentiable through the root's implicit derivative.

    One block of rows at a time on CPU (``root_finding.map_rows``): the row max, the solver's
    passes and the value's pass all read the block from cache. With the CPU kernel
    (``root_finding.uses_kernel``; ``kernel=False`` keeps the JAX solvers) the value's sum comes
    from the kernel's last pass, and the value gets its derivative from the envelope rule
    (:func:`_enveloped`).
    """

    def rows(theta: Array, q: Array) -> tuple[Array, Array, Array]:  # the JAX solvers
        z, root, totals = _shifted_root(theta, q, gen, solver, num_iters, kernel=False)
        t = _implicit_root_for(gen)(z, q, root.t)
        return _value_rel(z, q, t, gen, totals), root.shift, t

    def kernel_rows(theta: Array, q: Array) -> tuple[Array, Array, Array]:
        root, totals, excess = rf.solve_with_kernel(theta, q, gen)
        z = theta - root.shift[..., None]
        t = _implicit_root_for(gen)(z, q, root.t)
        value = _value_rel(z, q, root.t, gen, totals, excess)
        return _enveloped(value, theta, root.shift, q, t, gen), root.shift, t

    if not (kernel and rf.uses_kernel(gen, solver, num_iters, theta.dtype)):
        return rf.map_rows(rows, theta, q, gen, solver)
    return jax.lax.platform_dependent(theta, q, cpu=kernel_rows, default=rows)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _enveloped(value, theta, shift, q, t, gen: Generator) -> Array:
    """``value``, the f-softmax at ``θ`` in the frame ``shift`` computed by the CPU kernel (not
    differentiable), given the derivative of the envelope rule in ``θ`` and ``q`` at the root
    ``t``, as :func:`_implicit_softmax_parts` has: higher derivatives of the losses need the
    value's own derivative (its rule is differentiated in turn)."""
    return value


@functools.partial(_enveloped.defjvp, symbolic_zeros=True)
def _enveloped_jvp(gen, primals, tangents):
    value, theta, shift, q, t = primals
    _, dtheta, _, dq, _ = tangents
    out = _enveloped(value, theta, shift, q, t, gen)
    return out, _envelope(theta, shift, q, t, dtheta, dq, gen)


def _softmax_parts(theta, q, gen, solver, num_iters) -> tuple[Array, Array]:
    """``(softmax_f(θ; q) − m, m)`` with ``m`` the solver's frame (next to the row max).

    Their sum is the f-softmax. Kept apart so that the losses can subtract ``⟨θ, y⟩`` in the
    frame ``m``: ``1e9 + 0.7`` rounds the 0.7 away in float32. ``m`` is a constant for
    differentiation (zero tangent, like the shift everywhere else); the first part carries the
    whole derivative of ``softmax_f``, so only the sum (or the first part minus logits shifted
    by ``m``) is meaningful to differentiate.
    """
    if rf.streams(gen, solver, theta.shape[-1]):
        return _kl_parts(theta, q)
    return _implicit_softmax_parts(theta, q, gen, solver, num_iters)


def _kl_parts(theta: Array, q: Array) -> tuple[Array, Array]:
    """KL's parts as the log-sum-exp ``log Σ_j q_j exp(θ_j − m) + 1 − Q``, differentiated by
    plain autodiff (exact to all orders, like the implicit rule it replaces).

    Autodiff keeps ``exp(θ − m)`` from the forward pass and scales it in place for the gradient,
    as optax's cross-entropy does; the implicit rule would compute the exponentials twice (5–10 %
    of the loss's time at V = 32k on CPU).
    """
    stats = rf.row_stats(theta, q)
    shift = jax.lax.stop_gradient(stats.shift)  # the frame is a constant, as in the solvers
    if q.shape[-1] == 1:  # q shared by the classes: out of the sum, as cross-entropy's exp pass
        total = q[..., 0] * _rows.row_sum(jnp.exp(theta - shift[..., None]))
    else:
        total = _rows.row_sum(q * jnp.exp(theta - shift[..., None]))
    # log(0) of an empty row would put 0 · inf = NaN into its (zero) gradient.
    value = jnp.log(jnp.where(stats.empty, 1.0, total)) + 1.0 - stats.q_sum
    return jnp.where(stats.empty, -jnp.inf, value), shift


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _implicit_softmax_parts(theta, q, gen, solver, num_iters) -> tuple[Array, Array]:
    """:func:`_softmax_parts` by the root's implicit derivative and the envelope rule."""
    value, shift, _ = _value_parts(theta, q, gen, solver, num_iters)
    return value, shift


@functools.partial(jax.checkpoint, static_argnums=(5,))
def _envelope_tangent(theta, shift, q, t, dtheta, gen: Generator) -> Array:
    """``Σ_j p*_j θ̇_j``, recomputing ``p*`` from the logits where it is needed.

    Rematerialised: reverse mode keeps the logits and two floats per row for the backward pass
    instead of ``p*`` (one array ``[N, k]`` less to write and read back).
    """
    p = _probabilities_rel(theta - shift[..., None], q, t, gen)
    return _rows.row_sum(jnp.where(p > 0, p * dtheta, 0.0))


def _envelope(theta, shift, q, t, dtheta, dq, gen: Generator) -> Array:
    """The envelope rule: ``Σ_j p*_j θ̇_j + Σ_j f*(θ_j − τ) q̇_j`` per row (tangents may be
    symbolic zeros)."""
    tangent = jnp.zeros_like(t)
    if not isinstance(dtheta, SymbolicZero):
        tangent = tangent + _envelope_tangent(theta, shift, q, t, dtheta, gen)
    if not isinstance(dq, SymbolicZero):
        z = theta - shift[..., None]
        tangent = tangent + _rows.row_sum(_conj_terms(z, t, gen) * dq)
    return tangent


@functools.partial(_implicit_softmax_parts.defjvp, symbolic_zeros=True)
def _implicit_softmax_parts_jvp(gen, solver, num_iters, primals, tangents):
    theta, q = primals
    dtheta, dq = tangents
    # The primal outputs must be differentiable consistently with the tangent below (higher
    # derivatives differentiate this rule): t carries the implicit derivative, the shift (out of
    # the solver) is a constant.
    value, shift, t = _value_parts(theta, q, gen, solver, num_iters)
    tangent = _envelope(theta, shift, q, t, dtheta, dq, gen)
    return (value, shift), (tangent, jnp.zeros_like(shift))


def _softmax_last(theta, q, gen, solver, num_iters) -> Array:
    """``softmax_f(θ; q)`` along the last axis, differentiable by the envelope rule."""
    value, shift = _softmax_parts(theta, q, gen, solver, num_iters)
    return shift + value


def _check_solver(solver: str) -> None:
    if solver not in rf.SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(rf.SOLVERS)}")


def f_softargmax(
    logits: Array,
    divergence: str | Generator,
    *,
    q: _rows.QLike = None,
    axis: int = -1,
    where: Array | None = None,
    temperature: float | Array = 1.0,
    solver: str = "auto",
    num_iters: int | None = None,
) -> Array:
    r"""The f-softargmax: the distribution ``argmax_{p ∈ Δ} ⟨p, θ⟩ − D_f(p, q)``.

    ``p*_j = q_j (f*)'(θ_j − τ*)`` with one threshold ``τ*`` per row. KL gives
    ``softmax(θ + log q)``; χ² and ``alpha:2`` give sparsemax (of ``θ / 2`` and
    ``θ`` with unit ``q``); ``alpha:1.5`` with unit ``q`` is entmax-1.5.

    Args:
      logits: scores ``θ``, any shape; the classes lie along ``axis``. Half
        precision is solved in float32 and cast back.
      divergence: a name (``"kl"``, ``"reverse_kl"``, ``"chi2"``, ``"hellinger"``,
        ``"js"``, ``"alpha:<value>"``) or a :class:`~fdiv.Generator`.
      q: reference measure: ``None`` or ``"uniform"`` (``1/k`` over the row's
        unmasked classes), ``"unit"`` (1), or a non-negative array broadcastable
        to ``logits`` (classes with ``q_j = 0`` get zero mass; differentiable).
      axis: the class axis.
      where: boolean mask broadcastable to ``logits``; ``False`` classes get zero
        mass (as do ``-inf`` logits). A row with every class masked gives zeros.
      temperature: positive; the operator is applied to ``logits / temperature``.
        Other than 1, ``logits / temperature`` is written once (an array the size of
        the logits) so that every pass of the solver sees it rounded alike: prefer it
        to scaling the logits yourself in the same jit (README, "Status").
      solver: ``"auto"`` (default), ``"newton"`` or ``"bisect"`` (see
        :mod:`fdiv.root_finding`).
      num_iters: solver iterations (default: per solver and dtype).

    Returns:
      Probabilities of the shape and dtype of ``logits``; exactly zero off the
      support for sparse divergences. A NaN or ``+inf`` logit makes its own row NaN.

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> fdiv.f_softargmax(jnp.array([2.0, 1.0, -1.0]), "alpha:1.5", q="unit")
      Array([0.83..., 0.16..., 0. ...], dtype=float32)

    References:
      Roulet, Liu, Vieillard, Sander, Blondel. Loss Functions and Operators
      Generated by f-Divergences. ICML 2025.
    """
    gen = get_generator(divergence)
    _check_solver(solver)
    theta, q_arr, logits = _rows.prepare(logits, q, axis=axis, where=where, temperature=temperature)
    p = _softargmax_last(theta, q_arr, gen, solver, num_iters)
    return _rows.restore_axis(p, axis, logits.ndim).astype(logits.dtype)


def f_softmax(
    logits: Array,
    divergence: str | Generator,
    *,
    q: _rows.QLike = None,
    axis: int = -1,
    where: Array | None = None,
    temperature: float | Array = 1.0,
    solver: str = "auto",
    num_iters: int | None = None,
) -> Array:
    r"""The f-softmax value ``softmax_f(θ; q) = max_{p ∈ Δ} ⟨p, θ⟩ − D_f(p, q)``.

    The log-sum-exp analogue: ``softmax_f(θ; q) = τ* + Σ_j q_j f*(θ_j − τ*)``.
    Convex in ``θ``, ``softmax_f(θ + c) = softmax_f(θ) + c``, and its gradient is
    :func:`f_softargmax` (``∇_q = f*(θ − τ*)``), by a custom derivative rule
    that never differentiates the solver.

    Args: as :func:`f_softargmax`.

    Returns:
      The value for each row: ``logits`` with ``axis`` removed, in the dtype of
      ``logits``; ``-inf`` for a row with every class masked.

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> bool(jnp.allclose(fdiv.f_softmax(x, "kl", q="unit"),
      ...                   jax.nn.logsumexp(x) + 1.0 - 3.0))
      True
    """
    gen = get_generator(divergence)
    _check_solver(solver)
    theta, q_arr, logits = _rows.prepare(logits, q, axis=axis, where=where, temperature=temperature)
    return _softmax_last(theta, q_arr, gen, solver, num_iters).astype(logits.dtype)


def f_sigmoid(
    x: Array,
    divergence: str | Generator,
    *,
    q: _rows.QLike = None,
    temperature: float | Array = 1.0,
    solver: str = "auto",
) -> Array:
    """The two-class f-softargmax ``f_softargmax([x, 0])[0]``: the sigmoid analogue.

    ``"kl"`` with uniform or unit ``q`` gives ``jax.nn.sigmoid``. ``q`` is
    ``"uniform"``, ``"unit"`` or an array ``[..., 2]`` for the (positive, negative)
    classes.

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> fdiv.f_sigmoid(jnp.array([-3.0, 0.0, 3.0]), "chi2", q="unit")
      Array([0. , 0.5, 1. ], dtype=float32)
    """
    logits = jnp.stack([x, jnp.zeros_like(x)], axis=-1)
    p = f_softargmax(logits, divergence, q=q, temperature=temperature, solver=solver)
    return p[..., 0]
