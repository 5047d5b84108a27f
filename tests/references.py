"""Reference implementations for the fdiv tests, written independently of ``fdiv``.

Everything here is float64 NumPy, derived from ``shared/paper-notes.md``:

* :class:`RefGenerator`: the generators f, f', f'', f*, (f*)', (f*)'' of every divergence;
* :func:`ref_solve`: the threshold ``τ*`` of ``Σ_j q_j (f*)'(θ_j − τ) = 1`` by plain bisection on
  the exact bracket (at most 200 steps, stopping once float64 cannot split the bracket any more),
  and from it the f-softargmax, the f-softmax value and the Fenchel–Young loss;
* :func:`sparsemax` (sort based, Martins & Astudillo 2016), :func:`entmax15` (sort based, exact,
  Peters et al. 2019) and :func:`entmax_bisect` (the α-entmax of Peters et al. by bisection in its
  own parametrisation), used to check the closed forms of the paper.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import numpy as np

DIVERGENCES = [
    "kl",
    "reverse_kl",
    "chi2",
    "hellinger",
    "js",
    "alpha:1.5",
    "alpha:2",
    "alpha:1.25",
    "alpha:1.7",
    "alpha:3",
    "alpha:0.5",
    "alpha:-1",
]
# A smaller set that still covers every code path (closed form, dense, sparse, heavy tails,
# α > 2, α < 0), for the more expensive tests.
CORE_DIVERGENCES = ["kl", "reverse_kl", "chi2", "hellinger", "js", "alpha:1.5", "alpha:3"]
# Every code path but the extra α values (whose generators are tested in test_divergences.py and
# whose operators are tested in test_operators.py and test_solvers.py), for the loss tests.
MAIN_DIVERGENCES = [d for d in DIVERGENCES if d not in ("alpha:1.25", "alpha:1.7", "alpha:-1")]
Q_MODES = ["uniform", "unit"]
SOLVERS = ["bisect", "newton", "auto"]


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class RefGenerator:
    """The maps of one generator, elementwise on float64 arrays."""

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    fp: Callable[[np.ndarray], np.ndarray]
    fpp: Callable[[np.ndarray], np.ndarray]
    conj: Callable[[np.ndarray], np.ndarray]
    conj_grad: Callable[[np.ndarray], np.ndarray]
    conj_hess: Callable[[np.ndarray], np.ndarray]
    fp_at_zero: float  # f'(0), -inf when infinite
    domain_max: float  # sup of the domain of (f*)' (= f'(∞))
    f_at_zero: float  # f(0)
    is_sparse: bool


def _errstate(fn):
    def wrapped(x):
        with np.errstate(all="ignore"):
            return fn(_f64(x))

    return wrapped


def _kl() -> RefGenerator:
    def f(u):
        return np.where(u > 0, u * np.log(np.where(u > 0, u, 1.0)), 0.0) - u + 1.0

    return RefGenerator(
        "kl",
        _errstate(f),
        _errstate(np.log),
        _errstate(lambda u: 1.0 / u),
        _errstate(np.expm1),
        _errstate(np.exp),
        _errstate(np.exp),
        -math.inf,
        math.inf,
        1.0,
        False,
    )


def _reverse_kl() -> RefGenerator:
    return RefGenerator(
        "reverse_kl",
        _errstate(lambda u: u - 1.0 - np.log(u)),
        _errstate(lambda u: 1.0 - 1.0 / u),
        _errstate(lambda u: 1.0 / u**2),
        _errstate(lambda v: np.where(v < 1, -np.log1p(-np.minimum(v, 1.0)), np.inf)),
        _errstate(lambda v: np.where(v < 1, 1.0 / (1.0 - v), np.inf)),
        _errstate(lambda v: np.where(v < 1, 1.0 / (1.0 - v) ** 2, np.inf)),
        -math.inf,
        1.0,
        math.inf,
        False,
    )


def _chi2() -> RefGenerator:
    return RefGenerator(
        "chi2",
        _errstate(lambda u: (u - 1.0) ** 2),
        _errstate(lambda u: 2.0 * (u - 1.0)),
        _errstate(lambda u: np.full_like(u, 2.0)),
        _errstate(lambda v: np.where(v >= -2.0, v + v * v / 4.0, -1.0)),
        _errstate(lambda v: np.maximum(1.0 + v / 2.0, 0.0)),
        _errstate(lambda v: np.where(v > -2.0, 0.5, 0.0)),
        -2.0,
        math.inf,
        1.0,
        True,
    )


def _hellinger() -> RefGenerator:
    return RefGenerator(
        "hellinger",
        _errstate(lambda u: (np.sqrt(u) - 1.0) ** 2),
        _errstate(lambda u: 1.0 - 1.0 / np.sqrt(u)),
        _errstate(lambda u: 0.5 * u**-1.5),
        _errstate(lambda v: np.where(v < 1, v / (1.0 - v), np.inf)),
        _errstate(lambda v: np.where(v < 1, 1.0 / (1.0 - v) ** 2, np.inf)),
        _errstate(lambda v: np.where(v < 1, 2.0 / (1.0 - v) ** 3, np.inf)),
        -math.inf,
        1.0,
        1.0,
        False,
    )


def _js() -> RefGenerator:
    log2 = math.log(2.0)

    def f(u):
        ulogu = np.where(u > 0, u * np.log(np.where(u > 0, u, 1.0)), 0.0)
        return ulogu - (u + 1.0) * np.log((u + 1.0) / 2.0)

    return RefGenerator(
        "js",
        _errstate(f),
        _errstate(lambda u: np.log(2.0 * u / (u + 1.0))),
        _errstate(lambda u: 1.0 / (u * (u + 1.0))),
        _errstate(lambda v: np.where(v < log2, -np.log(2.0 - np.exp(np.minimum(v, log2))), np.inf)),
        _errstate(lambda v: np.where(v < log2, np.exp(v) / (2.0 - np.exp(v)), np.inf)),
        _errstate(lambda v: np.where(v < log2, 2.0 * np.exp(v) / (2.0 - np.exp(v)) ** 2, np.inf)),
        -math.inf,
        log2,
        log2,
        False,
    )


def _alpha(a: float) -> RefGenerator:
    e = 1.0 / (a - 1.0)

    def base(v):
        return 1.0 + (a - 1.0) * v

    def power(v, exponent):
        b = base(v)
        if a > 1:
            return np.where(b > 0, np.maximum(b, 0.0) ** exponent, 0.0)
        # α < 1: the domain is v < 1/(1 − α), where the base is positive.
        return np.where(b > 0, np.maximum(b, 0.0) ** exponent, np.inf)

    def f(u):
        upa = np.where(u > 0, np.maximum(u, 0.0) ** a, 0.0 if a > 0 else np.inf)
        return (upa - 1.0 - a * (u - 1.0)) / (a * (a - 1.0))

    def conj(v):
        if a > 1:
            return (power(v, a * e) - 1.0) / a
        return np.where(base(v) > 0, (power(v, a * e) - 1.0) / a, np.inf)

    return RefGenerator(
        f"alpha:{a:g}",
        _errstate(f),
        _errstate(lambda u: (u ** (a - 1.0) - 1.0) / (a - 1.0)),
        _errstate(lambda u: u ** (a - 2.0)),
        _errstate(conj),
        _errstate(lambda v: power(v, e)),
        _errstate(lambda v: power(v, e - 1.0)),
        -e if a > 1 else -math.inf,
        math.inf if a > 1 else -e,
        1.0 / a if a > 0 else math.inf,
        a > 1,
    )


def ref_generator(name: str) -> RefGenerator:
    """The reference generator of a divergence name (``"alpha:1"`` is KL)."""
    table = {
        "kl": _kl,
        "reverse_kl": _reverse_kl,
        "chi2": _chi2,
        "hellinger": _hellinger,
        "js": _js,
    }
    if name in table:
        return table[name]()
    assert name.startswith("alpha:"), name
    a = float(name.split(":", 1)[1])
    return _kl() if a == 1.0 else _alpha(a)


# ---------------------------------------------------------------------------------------------
# Reference measures and the scalar root.


def ref_q(q, logits: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """The reference measure as an array shaped like ``logits`` (last axis = classes).

    Masked classes (``where`` False) get q = 0; "uniform" is 1/k over the unmasked classes.
    """
    logits = _f64(logits)
    valid = np.ones(logits.shape, bool) if where is None else np.broadcast_to(where, logits.shape)
    if q is None or (isinstance(q, str) and q == "uniform"):
        k = valid.sum(-1, keepdims=True)
        with np.errstate(all="ignore"):
            out = np.where(valid, 1.0 / np.maximum(k, 1), 0.0)
    elif isinstance(q, str) and q == "unit":
        out = np.where(valid, 1.0, 0.0)
    else:
        out = np.where(valid, np.broadcast_to(_f64(q), logits.shape), 0.0)
    return out


@dataclasses.dataclass
class RefSolution:
    shift: np.ndarray  # [...]: the row max m of the unmasked classes (0 for an empty row)
    tau_rel: np.ndarray  # [...]: τ* − m, the threshold in the frame of the row max
    p: np.ndarray  # [..., k]
    value_rel: np.ndarray  # [...]: softmax_f(θ; q) − m

    @property
    def tau(self) -> np.ndarray:
        """``τ*`` of the logits as given."""
        return self.shift + self.tau_rel

    @property
    def value(self) -> np.ndarray:
        """``softmax_f(θ; q)`` of the logits as given."""
        return self.shift + self.value_rel


def ref_solve(logits, name: str, q, where=None, max_steps: int = 200) -> RefSolution:
    """Solve the f-softargmax along the last axis in float64 by bisection (≤ 200 steps).

    The bisection runs on the logits minus the row max of the unmasked classes (``q_j > 0``),
    exact for float32 logits: unshifted, a τ near 1e9 has an ulp of 1.2e-7, and one near 9 an
    ulp of 2e-15, which is 1e-4 of the top class's distance to the pole for α = −1 with uniform q
    over 256k classes.
    """
    gen = ref_generator(name)
    theta = _f64(logits)
    qa = ref_q(q, theta, where)
    live = qa > 0
    theta_live = np.where(live, theta, -np.inf)
    jplus = np.argmax(theta_live, axis=-1)[..., None]
    shift = np.take_along_axis(theta_live, jplus, -1)[..., 0]
    with np.errstate(all="ignore"):
        shift = np.where(np.isneginf(shift), 0.0, shift)
        z = theta_live - shift[..., None]
    q_plus = np.take_along_axis(qa, jplus, -1)[..., 0]
    q_sum = qa.sum(-1)
    with np.errstate(all="ignore"):
        lo = -gen.fp(1.0 / q_plus)
        hi = -gen.fp(1.0 / q_sum)

    def mass(tau):
        with np.errstate(all="ignore"):
            v = z - tau[..., None]
            return np.where(live, qa * gen.conj_grad(v), 0.0).sum(-1)

    for _ in range(max_steps):
        mid = 0.5 * (lo + hi)
        if np.all((mid == lo) | (mid == hi) | ~np.isfinite(mid)):
            break
        pos = mass(mid) > 1.0
        lo = np.where(pos, mid, lo)
        hi = np.where(pos, hi, mid)
    tau = 0.5 * (lo + hi)
    with np.errstate(all="ignore"):
        v = z - tau[..., None]
        p = np.where(live, qa * gen.conj_grad(v), 0.0)
        value = tau + np.where(live, qa * gen.conj(v), 0.0).sum(-1)
    return RefSolution(shift=shift, tau_rel=tau, p=p, value_rel=value)


def ref_divergence(y, q_arr, name: str, drop_infinite: bool = False) -> np.ndarray:
    """``D_f(y, q) = Σ_j q_j f(y_j / q_j)`` along the last axis (0 · f(0/0) = 0).

    With ``drop_infinite`` the terms with ``y_j = 0`` whose value ``q_j f(0)`` is infinite are
    dropped (the convention of the library for reverse KL with one-hot labels).
    """
    gen = ref_generator(name)
    y = _f64(y)
    q_arr = _f64(q_arr)
    with np.errstate(all="ignore"):
        terms = np.where(q_arr > 0, q_arr * gen.f(y / np.where(q_arr > 0, q_arr, 1.0)), 0.0)
    if drop_infinite:
        terms = np.where((y == 0) & np.isinf(terms), 0.0, terms)
    return terms.sum(-1)


def ref_loss(logits, labels, name: str, q, where=None, drop_infinite: bool = True) -> np.ndarray:
    """Fenchel–Young loss ``softmax_f(θ; q) + D_f(y, q) − <θ, y>`` along the last axis.

    Computed relative to the row max ``m``: ``<θ, y> = <θ − m, y> + m Σy``, and ``m`` cancels
    against the f-softmax's (a loss of 0.7 next to logits of 1e9 keeps its digits).
    """
    theta = _f64(logits)
    y = _f64(labels)
    sol = ref_solve(theta, name, q, where)
    qa = ref_q(q, theta, where)
    with np.errstate(all="ignore"):
        dot = np.where(y > 0, (theta - sol.shift[..., None]) * y, 0.0).sum(-1)
    loss = sol.value_rel + ref_divergence(y, qa, name, drop_infinite) - dot
    return loss + sol.shift * (1.0 - y.sum(-1))


# ---------------------------------------------------------------------------------------------
# Known operators.


def sparsemax(z) -> np.ndarray:
    """Sort-based sparsemax along the last axis (Martins & Astudillo, 2016)."""
    z = _f64(z)
    zs = -np.sort(-z, axis=-1)
    k = np.arange(1, z.shape[-1] + 1, dtype=np.float64)
    cssv = np.cumsum(zs, axis=-1) - 1.0
    support = zs - cssv / k > 0
    kz = support.sum(-1, keepdims=True)
    tau = np.take_along_axis(cssv, kz - 1, -1) / kz
    return np.maximum(z - tau, 0.0)


def entmax15(z) -> np.ndarray:
    """Exact sort-based 1.5-entmax along the last axis (Peters, Niculae & Martins, 2019).

    ``entmax15(z) = [z/2 − τ]_+²`` with τ from the closed form on the sorted support.
    """
    z = _f64(z) / 2.0
    z = z - z.max(-1, keepdims=True)
    zs = -np.sort(-z, axis=-1)
    rho = np.arange(1, z.shape[-1] + 1, dtype=np.float64)
    mean = np.cumsum(zs, -1) / rho
    mean_sq = np.cumsum(zs**2, -1) / rho
    ss = rho * (mean_sq - mean**2)
    delta = (1.0 - ss) / rho
    tau = mean - np.sqrt(np.maximum(delta, 0.0))
    support = (tau <= zs).sum(-1, keepdims=True)
    tau_star = np.take_along_axis(tau, support - 1, -1)
    return np.maximum(z - tau_star, 0.0) ** 2


def entmax_bisect(z, alpha: float, steps: int = 200) -> np.ndarray:
    """α-entmax ``[(α − 1) z − τ]_+^{1/(α−1)}`` (Peters et al. 2019) by bisection on τ, α > 1."""
    assert alpha > 1
    x = (alpha - 1.0) * _f64(z)
    xmax = x.max(-1, keepdims=True)
    k = x.shape[-1]
    lo = xmax - 1.0
    hi = xmax - (1.0 / k) ** (alpha - 1.0)

    def probs(tau):
        return np.maximum(x - tau, 0.0) ** (1.0 / (alpha - 1.0))

    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if np.all((mid == lo) | (mid == hi)):
            break
        pos = probs(mid).sum(-1, keepdims=True) > 1.0
        lo = np.where(pos, mid, lo)
        hi = np.where(pos, hi, mid)
    return probs(0.5 * (lo + hi))


def softmax(z) -> np.ndarray:
    z = _f64(z)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def implied_tau(logits, p, q_arr, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``τ = θ_j − f'(p_j / q_j)`` at the class j with the largest θ among q_j > 0, in float64,
    relative to that largest θ (so comparable to :attr:`RefSolution.tau_rel`): ``−f'(u)``.

    Also returns ``u f''(u)`` at ``u = p_j / q_j``: the factor that turns a relative rounding
    error of ``p_j`` into an absolute error of the recovered τ.
    """
    gen = ref_generator(name)
    theta = _f64(logits)
    p = _f64(p)
    q_arr = _f64(q_arr)
    theta_live = np.where(q_arr > 0, theta, -np.inf)
    j = np.argmax(theta_live, -1)[..., None]
    u = np.take_along_axis(p, j, -1)[..., 0] / np.take_along_axis(q_arr, j, -1)[..., 0]
    return -gen.fp(u), np.abs(u * gen.fpp(u))


# ---------------------------------------------------------------------------------------------
# Test utility: call the library through cached jitted wrappers.
#
# Every eager call of a root-finding operator re-traces and re-compiles its solver loop (about
# 0.1–0.3 s each on this machine), so the tests call the library through jax.jit wrappers cached
# by (function, static keyword arguments); jit then caches by shape. Tests that need eager
# semantics (errors raised on concrete values) call the library directly.


@functools.cache
def _jitted(fn, static_items):
    return jax.jit(functools.partial(fn, **dict(static_items)))


def jit_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under a cached ``jax.jit``; str/number/None kwargs are static."""
    static = {
        k: v for k, v in kwargs.items() if v is None or isinstance(v, (str, int, float, bool))
    }
    dynamic = {k: v for k, v in kwargs.items() if k not in static}
    return _jitted(fn, tuple(sorted(static.items())))(*args, **dynamic)
