"""The scalar root behind every f-softargmax: one threshold ``τ`` per row.

``p_j = q_j (f*)'(θ_j − τ)`` is a distribution exactly when ``τ`` solves

    g(τ) = S(τ) − 1 = 0,        S(τ) = Σ_j q_j (f*)'(θ_j − τ),

and ``S`` is non-increasing. Each pass of any solver below is one elementwise
map and one reduction over the classes: parallel over rows, no sort.

Bracket (with ``θ`` shifted so that its row max is 0, ``j⁺`` the argmax,
``Q = Σ_j q_j``): ``τ_lo = −f'(1 / q_{j⁺})`` (the argmax alone has mass 1) and
``τ_hi = −f'(1 / Q)`` (no class has more than its share ``q_j / Q``). When
``(f*)'`` is convex (α ≤ 2 and every named divergence), Jensen's inequality gives
the lower bound ``Σ_j q_j θ_j / Q − f'(1 / Q)``, much tighter for rows without
outliers. For sparse generators with q shared by the classes, the root of the
equation restricted to the maxima of 128 segments of the row is a lower bound too,
and the root itself when the support lies within them (``_candidates_bound``): the
few classes that carry a unit-q row.

Blocks: on CPU, :func:`solve` runs one block of rows at a time (see
``_rows.map_row_blocks``), so that nothing of size ``[N, k]`` is materialised
between the passes.

Anchored root: the solvers find ``t = τ + a`` rather than ``τ``, with ``a =
gen.anchor`` the end of the support or the pole of ``(f*)'`` (see
divergences.py), and evaluate the maps at ``r = z − t`` (``gen.conj_grad_rel``
…). Near the anchor the mass depends on ``v − a`` alone, which a float32 ``τ``
cannot resolve (1000 ties with unit q put χ²'s τ within 2e-3 of 2; reverse KL
with uniform q over 256k classes puts the top class 4e-6 from the pole), while
``t`` keeps its own relative precision.

Moved frame: after their first estimate ``c`` of the root, the solvers work with
``θ − (m + c)`` (``m`` the row max) and solve for a small correction, so that a
group of classes far below the max at the edge of the support is resolved too
(see ``_Frame``). The frame is part of the solution: :class:`Root`.

Solvers:

* ``"bisect"``: the paper's fixed number of bisection steps (geometric while the
  bracket spans more than a factor 2 on one side of 0), finished by two
  safeguarded Newton steps (below) from the final bracket: bisection alone leaves
  an error of the bracket width / 2^n in τ, which the slope of ``S`` (up to 1e5
  for unit q over 256k classes) turns into a mass error far above 1e-5.
* ``"newton"``: Newton's method on ``F(τ) = f'(S(τ))`` rather than on ``g``.
  The transform makes the step exact for KL (one step is the log-sum-exp) and
  whenever one class carries the support, and keeps ``F`` convex for the
  α-divergences with α ≤ 2 (``S^{α−1}`` is a power mean of affine functions of
  ``τ``), so Newton started at the left end of the bracket increases
  monotonically to ``τ*`` without overshooting. For α > 2 it starts from the
  right end. Each step is safeguarded by the bracket: a step that leaves it, or
  is not finite, is replaced by bisection. Where ``F`` is convex only the first
  step is Newton's and the rest are secant steps through the last two iterates
  (still monotone from the left, and one sum over the classes per step instead
  of two: about 0.7× the time of the all-Newton loop on XLA:CPU). The loop stops
  as soon as every row's step is below eps^(2/3) (``num_iters`` is then a cap),
  so well-conditioned batches pay for a few passes and adversarial ones for at
  most the cap. For χ² and α = 2 the mass is linear in τ on a fixed support, so
  a secant step through two iterates with the same support lands on the
  closed-form root of that support: no separate closed-form finish is needed.
* ``"auto"``: the closed form for KL (log-sum-exp, no search); on CPU, the kernels of
  fdiv/cpu_kernel.py for the generators with a power-law map (``Generator.power_law``: the
  α-divergences with an integer 1/(α − 1), χ², reverse KL, Hellinger) and for Jensen–Shannon;
  Newton for every other generator, and on GPU and TPU.

The root is never differentiated: the operators and losses differentiate it
implicitly (see operators.py), so the iterates are not stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from fdiv import _rows, cpu_kernel
from fdiv.divergences import KL, Generator, JensenShannon

Array = jax.Array
SOLVERS = ("auto", "bisect", "newton")
T = TypeVar("T")

# Fixed iteration counts, per solver and compute dtype (bits of the mantissa),
# measured on the adversarial rows of tests/test_solvers.py and the root-error
# benchmark. Bisection halves a bracket up to ~2√k wide (α = 1.5, uniform q,
# k = 256k): 30 halvings reach the float32 resolution, 60 the float64 one.
# Newton on the transformed function converges quadratically from the Jensen
# bound when it is monotone, the secant steps that follow its first step with
# order 1.6 (so the cap counts ~1.5× Newton's steps, each about half the cost);
# for α > 2 it is not monotone (support changes make it cycle and the safeguard
# falls back to bisection), so it gets bisection's budget.
_ITERATIONS = {
    ("bisect", 24): 30,
    ("bisect", 53): 60,
    ("newton", 24): 16,
    ("newton", 53): 22,
    ("newton-safeguarded", 24): 40,
    ("newton-safeguarded", 53): 70,
}


# Rows of at least 4× this many classes start the solvers from the root of the equation
# restricted to the maxima of this many segments of the row (see _candidates_bound).
_SEGMENTS = 128

# Newton steps that finish "bisect" (see _bisect).
_BISECT_NEWTON_FINISH = 2


class RowStats(NamedTuple):
    """Per-row quantities every solver starts from (classes on the last axis)."""

    theta: Array  # the logits, -inf for masked classes
    z: Array  # logits minus the row max
    shift: Array  # the row max (0 for a row with every class masked)
    q_sum: Array  # Q = Σ_j q_j (1 for an empty row)
    q_top: Array  # q at the argmax (1 for an empty row)
    empty: Array  # True where every class is masked
    candidates: Array | None  # maxima of segments of the row, minus the row max (or None)


class Root(NamedTuple):
    """One row's solution: ``p_j = q_j · gen.conj_grad_rel(θ_j − shift − t)``."""

    shift: Array  # the frame: the row max, moved next to the root by the solver (_Frame)
    t: Array  # the anchored root t = τ + a relative to the frame


class RowTotals(NamedTuple):
    """Per-row quantities of the reference measure the operators need besides the root."""

    q_sum: Array  # Q = Σ_j q_j (1 for an empty row)
    empty: Array  # True where every class is masked


def row_stats(theta: Array, q: Array) -> RowStats:
    """Shift by the row max and collect the reference-measure sums of each row.

    Classes outside the measure carry ``q_j = 0`` and a ``-inf`` logit (see
    ``_rows.prepare``), so ``Q`` needs no mask, and no count when ``q`` is one
    value per row.
    """
    segment_max = _segment_maxima(theta) if q.shape[-1] == 1 else None
    m = jnp.max(theta if segment_max is None else segment_max, axis=-1)
    # NaN rows are not empty: their NaN must propagate, not be masked away.
    empty = m == -jnp.inf
    shift = jnp.where(empty, 0.0, m)
    z = theta - shift[..., None]
    candidates = None if segment_max is None else segment_max - shift[..., None]
    if q.shape[-1] == 1:
        q_top = jnp.broadcast_to(q[..., 0], shift.shape)
        q_sum = q_top * z.shape[-1]
    else:
        q_sum = jnp.broadcast_to(_rows.row_sum(q), shift.shape)
        # Any maximiser gives a valid bracket; the one with the largest q the tightest.
        q_top = jnp.max(jnp.where(z == 0.0, q, 0.0), axis=-1)
    q_sum = jnp.where(empty | (q_sum <= 0), 1.0, q_sum)
    q_top = jnp.where(empty | (q_top <= 0), 1.0, q_top)
    return RowStats(theta, z, shift, q_sum, q_top, empty, candidates)


def _segment_maxima(theta: Array) -> Array | None:
    """The maxima of ``_SEGMENTS`` contiguous segments of each row (and of the remainder), or
    None for rows too short to be worth it. Their max is the row max: the same pass."""
    k = theta.shape[-1]
    if k < 4 * _SEGMENTS:
        return None
    length = k // _SEGMENTS
    body = theta[..., : _SEGMENTS * length].reshape(*theta.shape[:-1], _SEGMENTS, length)
    maxima = jnp.max(body, axis=-1)
    if k % _SEGMENTS:
        rest = jnp.max(theta[..., _SEGMENTS * length :], axis=-1, keepdims=True)
        maxima = jnp.concatenate([maxima, rest], axis=-1)
    return maxima


def _candidates_bound(stats: RowStats, q: Array, gen: Generator) -> Array:
    """A lower bound of the anchored root (row max frame) from the segment maxima alone.

    ``S`` restricted to a subset of the classes is at most ``S``, so the root of the subset's
    equation is at most the full root; it is the full root when the support lies within the
    subset. With unit q the support of a sparse generator is a few of the largest logits,
    which are usually maxima of distinct segments: the solver then starts at the root and
    stops after one pass where it took 6 from the Jensen bound (α = 1.5, 32768 classes).
    The subset is a problem of ~128 classes, solved by the same Newton iteration; the bound
    is lowered by a few ulps to cover its rounding.
    """
    sub = row_stats(stats.candidates, q)
    root = solve_anchored(sub, q, gen, "newton")
    t = root.shift + root.t
    scale = jnp.abs(t) if gen.anchor else 1.0 + jnp.abs(t)
    return t - 8.0 * jnp.finfo(t.dtype).eps * scale


def bracket(stats: RowStats, q: Array, gen: Generator) -> tuple[Array, Array]:
    """``(t_lo, t_hi)`` with ``g ≥ 0`` at ``t_lo`` and ``≤ 0`` at ``t_hi``, for the anchored
    root ``t = τ + a`` in the shifted frame."""
    lo = -gen.f_prime_rel(1.0 / stats.q_top)
    hi = -gen.f_prime_rel(1.0 / stats.q_sum)
    if gen.newton_from_left:
        # (f*)' convex on the whole line: by Jensen, S(mean − f'(1/Q)) ≥ 1 at the
        # q-weighted mean logit. (For α > 2, [·]_+^{1/(α−1)} is concave only on the
        # support: no such bound.)
        weighted = jnp.where(q > 0, q * stats.z, 0.0)  # −inf if a class in q has a −inf logit
        jensen = _rows.row_sum(weighted) / stats.q_sum + hi
        lo = jnp.maximum(lo, jnp.minimum(jensen, hi))
        if stats.candidates is not None and gen.is_sparse:
            bound = _candidates_bound(stats, q, gen)
            lo = jnp.where(jnp.isfinite(bound), jnp.maximum(lo, jnp.minimum(bound, hi)), lo)
    else:
        # Newton starts from hi (α > 2, no pole): widen by a few ulps of the row max, which XLA
        # may not reproduce in θ − max θ when θ comes from an op fused into that subtraction (a
        # fused multiply-add with θ = x / T put every tie 1 ulp above 0, and the root outside).
        slack = 4.0 * jnp.finfo(stats.z.dtype).eps * jnp.abs(stats.shift)
        lo, hi = lo - slack, hi + slack
    return lo, hi


def default_iterations(solver: str, dtype, gen: Generator) -> int:
    """The fixed iteration count of ``solver`` ("bisect" or "newton") for ``gen``."""
    bits = 53 if jnp.finfo(dtype).nmant > 23 else 24
    if solver == "newton" and not gen.newton_from_left:
        solver = "newton-safeguarded"
    return _ITERATIONS[(solver, bits)]


class _Frame(NamedTuple):
    """The logits relative to a point next to the root: the frame the iterates live in.

    Near the end of the support the mass depends on ``θ_j − m − t`` for the classes at the edge
    of the support, and float32 resolves ``t`` only to an ulp of its own size. With one logit 1
    and 262143 zeros (α = 1.5, unit q) the zeros are 3.4e-3 inside the support while ``τ ≈
    −1.0034`` from the row max: an ulp of ``τ`` is 3.5e-5 of that distance, and even the best
    float32 root misses a mass of 1 by 3e-5. Moving the frame to a first estimate ``c`` of the
    root turns the iterates into small corrections with their own relative precision, and
    ``θ_j − (m + c)`` is exact for the classes next to the root (Sterbenz).
    """

    z: Array  # θ − shift
    shift: Array
    origin: Array  # the frame's origin relative to the row max (scales the stopping test)


def _row_max_frame(stats: RowStats) -> _Frame:
    return _Frame(stats.z, stats.shift, jnp.zeros_like(stats.shift))


def _moved_frame(stats: RowStats, centre: Array) -> _Frame:
    """The frame whose origin is ``centre`` (relative to the row max), rounded: the row max
    plus ``centre`` is a float, and the iterates and the bracket must be moved by the origin
    it represents (up to 5e-4 from ``centre`` for a row max of 1e4)."""
    shift = stats.shift + centre
    return _Frame(stats.theta - shift[..., None], shift, shift - stats.shift)


def _mass(z: Array, q: Array, t: Array, gen: Generator) -> Array:
    return _rows.row_sum(q * gen.conj_grad_rel(z - t[..., None]))


def _newton_step(frame, q, gen, t, lo, hi):
    """One safeguarded Newton step on ``F = f'(S)`` from the anchored root ``t``.

    Returns ``(t, lo, hi, converged)``: the new iterate (bisection of the tightened bracket
    when the step is not finite or leaves the bracket without having converged), the bracket
    tightened by the mass at the old iterate, and whether the step was below a few ulps.
    """
    return _safeguarded(frame, gen, t, *_newton_update(frame.z, q, gen, t), lo, hi)


def _newton_update(z, q, gen, t):
    """``(S(t), Newton's step on F = f'(S) from t)``."""
    r = z - t[..., None]
    s = _rows.row_sum(q * gen.conj_grad_rel(r))
    d = _rows.row_sum(gen.weighted_conj_hess_rel(q, r))
    # dF/dτ = −f''(S) Σ_j q_j (f*)''(θ_j − τ) = −f''(S) d.
    return s, gen.f_prime(s) / (gen.f_prime2(s) * d)


def _safeguarded(frame, gen, t, s, step, lo, hi):
    """``t + step`` if it is finite and strictly inside the bracket tightened by the mass ``s``
    at ``t``, or has converged; bisection of that bracket otherwise. Returns ``(t, lo, hi,
    converged)``.

    Converged: a step below eps^(2/3) of the root's scale, from a mass within eps^(2/3) of 1.
    Newton's next error is then ~eps^(4/3), the secant's (order 1.6) ~eps^(1.08): the loop can
    stop without paying for one more pass to see a step of an ulp. The mass test matters where
    the slope of ``S`` is large: with 262143 classes 3.4e-3 inside the support (see ``_Frame``)
    a step of 8e-6 (below the step test) still leaves the mass 3e-3 from 1.
    """
    tol = jnp.finfo(frame.z.dtype).eps ** (2 / 3)
    lo = jnp.where(s >= 1.0, t, lo)
    hi = jnp.where(s <= 1.0, t, hi)
    new = t + step
    # With an anchor, t is bounded away from 0 in the row max's frame (the top class is inside
    # the support / the domain) and its relative precision is what matters: t = 4e-6 for
    # reverse KL with uniform q over 256k classes is the top class's distance to the pole.
    t_row = frame.origin + t
    scale = jnp.abs(t_row) if gen.anchor else 1.0 + jnp.abs(t_row)
    converged = (jnp.abs(new - t) <= tol * scale) & (jnp.abs(s - 1.0) <= tol)
    # A step must land strictly inside the bracket unless it has converged: at a
    # support change it could otherwise cycle between the bracket's ends.
    accept = jnp.isfinite(new) & ((new > lo) & (new < hi) | converged)
    return jnp.where(accept, new, 0.5 * (lo + hi)), lo, hi, accept & converged


def _midpoint(lo: Array, hi: Array) -> Array:
    """The arithmetic mean, or the geometric one while the bracket spans more than a factor 2
    on one side of 0: next to a pole the anchored root can be 1e-11 in a bracket 0.5 wide
    (α = −1, uniform q over 256k classes), and for α > 2 the bracket is ~k^(α−1) wide, which
    halving would take 30 steps just to cross. Each geometric step halves the log of the ratio.
    """
    small, large = jnp.minimum(jnp.abs(lo), jnp.abs(hi)), jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    geometric = (jnp.sign(lo) == jnp.sign(hi)) & (large > 2.0 * small)
    return jnp.where(geometric, jnp.sign(hi) * jnp.sqrt(small) * jnp.sqrt(large), 0.5 * (lo + hi))


def _bisect(stats, q, gen, lo, hi, num_iters) -> Root:
    """``num_iters`` bisection steps, then a fixed number of safeguarded Newton steps in the
    frame of the end of the final bracket they start from.

    Bisection alone leaves an error of width / 2^num_iters in τ, and the mass error is that
    times ``S'(τ) = Σ_j q_j (f*)''(θ_j − τ)``, which reaches 1e5 for unit q over 256k classes:
    the Newton finish from the final bracket (started at the end from which it is monotone)
    squares that error.
    """

    def step(_, bounds):
        lo, hi = bounds
        mid = _midpoint(lo, hi)
        above = _mass(stats.z, q, mid, gen) >= 1.0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_iters, step, (lo, hi))
    start = lo if gen.newton_from_left else hi
    frame = _moved_frame(stats, start)

    def finish(_, state):
        return _newton_step(frame, q, gen, *state)[:3]

    init = (start - frame.origin, lo - frame.origin, hi - frame.origin)
    return Root(frame.shift, jax.lax.fori_loop(0, _BISECT_NEWTON_FINISH, finish, init)[0])


def _newton(stats, q, gen, lo, hi, max_iters) -> Root:
    """Safeguarded Newton on ``F = f'(S)``; stops once every row's step is negligible.

    Where ``F`` is convex (``gen.newton_from_left``), only the first step is Newton's: the
    others are secant steps through the last two iterates, in the frame of the first Newton
    iterate. From two points left of the root the secant of a convex decreasing ``F`` crosses 0
    left of the root too, so the iterates still increase monotonically, and a secant step needs
    one sum over the classes where a Newton step needs two (``S`` and ``S'``): on XLA:CPU a
    two-output reduction costs about two one-output passes over a block of rows in cache (three
    over a whole ``[N, V]``, whose shared elementwise map goes through memory), for 1.44× the
    steps.
    """
    if not gen.newton_from_left:
        return _newton_from_right(stats, q, gen, lo, hi, max_iters)
    start = lo
    s, newton = _newton_update(stats.z, q, gen, start)
    t, lo, hi, done = _safeguarded(_row_max_frame(stats), gen, start, s, newton, lo, hi)
    f_start = gen.f_prime(s)
    frame = _moved_frame(stats, t)

    def keep_going(state):
        i, *_, done = state
        return (i < max_iters) & ~jnp.all(done)

    def step(state):
        i, t_prev, f_prev, t, lo, hi, done = state
        s = _mass(frame.z, q, t, gen)
        f_t = gen.f_prime(s)
        new, lo, hi, converged = _safeguarded(
            frame, gen, t, s, -f_t * (t - t_prev) / (f_t - f_prev), lo, hi
        )
        # Equal values of F carry no slope (t = t_prev, or F flat to rounding): the row is
        # done, and a converged row stays put (its next secant would be 0 / 0).
        flat = f_t == f_prev
        new = jnp.where(done | flat, t, new)
        # NaN rows and empty rows never converge; they must not hold the others back.
        done = done | flat | converged | jnp.isnan(new) | stats.empty
        return i + 1, t, f_t, new, lo, hi, done

    done = done | jnp.isnan(t) | stats.empty
    moved = [x - frame.origin for x in (start, t, lo, hi)]
    state = (jnp.array(1), moved[0], f_start, moved[1], moved[2], moved[3], done)
    return Root(frame.shift, jax.lax.while_loop(keep_going, step, state)[3])


def _newton_from_right(stats, q, gen, lo, hi, max_iters) -> Root:
    """Safeguarded Newton from the right end of the bracket (α > 2), to the cap: without
    monotonicity a tiny step is no proof of convergence ((f*)'' is infinite where a class
    enters the support). It stays in the row max's frame: its fallback is the geometric
    bisection of a bracket on one side of 0."""
    frame = _row_max_frame(stats)

    def keep_going(state):
        i, _, _, _, done = state
        return (i < max_iters) & ~jnp.all(done)

    def step(state):
        i, t, lo, hi, _ = state
        t, lo, hi, _ = _newton_step(frame, q, gen, t, lo, hi)
        # NaN rows and empty rows never converge; they must not hold the others back.
        return i + 1, t, lo, hi, jnp.isnan(t) | stats.empty

    state = (jnp.array(0), hi, lo, hi, jnp.zeros(hi.shape, bool))
    return Root(stats.shift, jax.lax.while_loop(keep_going, step, state)[1])


def solve_anchored(
    stats: RowStats,
    q: Array,
    gen: Generator,
    solver: str = "auto",
    num_iters: int | None = None,
) -> Root:
    """The anchored root ``t = τ + a`` of each row (``a = gen.anchor``) and the frame it is
    expressed in: ``p_j = q_j · gen.conj_grad_rel(θ_j − root.shift − root.t)``.

    Args:
      stats: from :func:`row_stats`.
      q: the reference measure, broadcastable to ``stats.z``.
      gen: the generator.
      solver: ``"auto"``, ``"bisect"`` or ``"newton"`` (see the module docstring).
      num_iters: iterations of the chosen solver; ``None`` for the per-dtype
        default. Ignored by the KL closed form.

    Returns:
      A :class:`Root` with the shapes of ``stats.shift``, not differentiable (stop_gradient).
      The frame is the row max for the KL closed form and α > 2, and a point next to the
      root for the other solvers (see ``_Frame``).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    stats = jax.tree.map(jax.lax.stop_gradient, stats)
    q = jax.lax.stop_gradient(q)
    if is_closed_form(gen, solver):  # anchor 0: t = τ
        tau = jnp.log(_rows.row_sum(q * jnp.exp(stats.z)))
        return Root(stats.shift, jnp.where(stats.empty, 0.0, tau))
    if solver == "auto":
        solver = "newton"
    if num_iters is None:
        num_iters = default_iterations(solver, stats.z.dtype, gen)
    lo, hi = bracket(stats, q, gen)
    run = _bisect if solver == "bisect" else _newton
    return run(stats, q, gen, lo, hi, num_iters)


def is_closed_form(gen: Generator, solver: str) -> bool:
    """Whether the root is a closed form (KL's log-sum-exp, one pass) rather than a search."""
    return solver == "auto" and isinstance(gen, KL)


def map_rows(
    fn: Callable[[Array, Array], T], theta: Array, q: Array, gen: Generator, solver: str
) -> T:
    """``fn(theta, q)`` for per-row results, over blocks of rows that stay in cache on CPU while
    the solver makes its passes (``_rows.map_row_blocks``); whole for KL's closed form on rows
    of at most 32768 classes, whose two passes then stream faster than the blocks loop (longer
    rows take XLA:CPU's slow path, see ``_rows.row_sum``: in blocks the KL loss at V = 128k
    runs 1.6× faster)."""
    if streams(gen, solver, theta.shape[-1]):
        return fn(theta, q)
    return _rows.map_row_blocks(fn, theta, q)


def streams(gen: Generator, solver: str, k: int) -> bool:
    """Whether rows of ``k`` classes are solved over whole arrays (see :func:`map_rows`)."""
    return is_closed_form(gen, solver) and k <= _rows.MAX_ROW


def _kernel(gen: Generator) -> Callable[[Array, Array], tuple[Array, ...]] | None:
    """The CPU kernel that solves ``gen``'s rows (fdiv/cpu_kernel.py): Jensen–Shannon's, the
    power-law kernel for the generators with ``Generator.power_law``, or None."""
    if isinstance(gen, JensenShannon):
        return cpu_kernel.js_root
    if gen.power_law is not None:
        coef, power = gen.power_law
        return lambda theta, q: cpu_kernel.power_root(theta, q, coef, power)
    return None


def uses_kernel(gen: Generator, solver: str, num_iters: int | None, dtype) -> bool:
    """Whether "auto" solves these rows with a CPU kernel (fdiv/cpu_kernel.py): a power-law
    generator or Jensen–Shannon, float32, no explicit iteration count, CPU the default backend,
    and the kernels built. Elsewhere (and as the branch for other platforms) "auto" is Newton
    in JAX."""
    return (
        solver == "auto"
        and num_iters is None
        and _kernel(gen) is not None
        and jnp.dtype(dtype) == jnp.float32
        and jax.default_backend() == "cpu"
        and cpu_kernel.available()
    )


def solve_with_kernel(theta: Array, q: Array, gen: Generator) -> tuple[Root, RowTotals, Array]:
    """The root and row totals of a power-law generator or Jensen–Shannon from a CPU kernel (CPU
    only: see :func:`uses_kernel`), and each row's ``Σ_j q_j (f*(θ_j − τ) + f(0))``, the sum in
    the f-softmax's value (``Σ_j q_j f*(θ_j − τ)`` for reverse KL, whose ``f(0)`` is infinite).
    Not differentiable (stop_gradient)."""
    theta, q = jax.lax.stop_gradient(theta), jax.lax.stop_gradient(q)
    q = q.reshape((1,) * (theta.ndim - q.ndim) + q.shape)
    shift, t, q_sum, empty, excess = _kernel(gen)(theta, q)
    return Root(shift, t), RowTotals(q_sum, empty), excess


def solve(
    theta: Array,
    q: Array,
    gen: Generator,
    solver: str = "auto",
    num_iters: int | None = None,
    kernel: bool = True,
) -> tuple[Root, RowTotals]:
    """:func:`row_stats` then :func:`solve_anchored` for logits ``θ`` (classes last), over
    blocks of rows (see :func:`map_rows`), or the CPU kernel (:func:`uses_kernel`) unless
    ``kernel`` is False.

    ``q`` is shared across rows or has the leading axes of ``θ``.
    """

    def rows(theta: Array, q: Array) -> tuple[Root, RowTotals]:
        stats = row_stats(theta, q)
        root = solve_anchored(stats, q, gen, solver, num_iters)
        return root, RowTotals(stats.q_sum, stats.empty)

    theta, q = jax.lax.stop_gradient(theta), jax.lax.stop_gradient(q)
    if kernel and uses_kernel(gen, solver, num_iters, theta.dtype):
        on_cpu = lambda theta, q: solve_with_kernel(theta, q, gen)[:2]
        return jax.lax.platform_dependent(theta, q, cpu=on_cpu, default=rows)
    return map_rows(rows, theta, q, gen, solver)
