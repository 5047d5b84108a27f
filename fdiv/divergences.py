"""Generators f of f-divergences, and a registry that finds them by name.

An f-divergence to a reference measure ``q`` is ``D_f(p, q) = Σ_j q_j f(p_j / q_j)``
with ``f`` convex on ``[0, ∞)``. Every built-in generator is normalised so that
``f(1) = 0`` and ``f'(1) = 0``.

Everything the operators and losses need from a generator is a handful of
elementwise maps, collected by :class:`Generator`:

========================  =================================================
``f(u)``                  the generator, ``u ≥ 0``
``f_prime(u)``            ``f'(u)``
``f_prime2(u)``           ``f''(u)`` (used by the Newton solver, per row)
``conj(v)``               the conjugate ``f*(v) = sup_{u ≥ 0} u v − f(u)``
``conj_grad(v)``          ``(f*)'(v) = (f')^{-1}(v)``, clamped to 0 for ``v ≤ f'(0)``
``conj_hess(v)``          ``(f*)''(v)``, 0 off the support
``f_prime_at_zero``       ``f'(0)`` (``-inf`` when infinite: no sparsity)
``conj_domain_max``       sup of the domain of ``(f*)'`` (``+inf`` or ``f'(∞)``)
``f_at_zero``             ``f(0)`` (``+inf`` for reverse KL: ``D_f(y, q)`` is then
                          infinite for any ``y`` with a zero)
========================  =================================================

Every map must accept ``v = -inf`` (a masked class) and return the limit there.

The solvers work relative to an *anchor* ``a``: the finite end of the support
(``f'(0)``) or of the domain of ``(f*)'``, where ``(f*)'`` has a kink or a pole.
Near it the mass depends on ``v − a`` alone, which float32 cannot resolve from
``v`` (ties over 1024 classes put ``v`` within 2e-3 of ``a = −2`` for χ² with unit
q; reverse KL with uniform q over 256k classes puts the top class within 4e-6 of
the pole), so the maps also exist as functions of ``r = v − a``
(``f_prime_rel(u) = f'(u) − a``, ``conj_grad_rel``, ``conj_hess_rel``,
``conj_rel``) and the threshold is found as ``t = τ + a``. Built-in generators
write them in closed form; the defaults shift ``r`` back (no gain, no loss).

Names understood by :func:`get_generator`: ``"kl"``, ``"reverse_kl"``, ``"chi2"``,
``"hellinger"``, ``"js"`` and ``"alpha:<value>"`` for any finite ``α ∉ {0}``
(``"alpha:1"`` is KL, taken as the limit).

User-defined generators: subclass :class:`Generator` and implement its maps, or
build one from functions with :class:`CustomGenerator`; pass the object wherever
a divergence name is accepted, or give it a name with :func:`register`::

    import jax.numpy as jnp
    import fdiv

    # Half the Pearson chi-square: the same as "alpha:2".
    half_chi2 = fdiv.CustomGenerator(
        name="half_chi2",
        f=lambda u: 0.5 * (u - 1.0) ** 2,
        f_prime=lambda u: u - 1.0,
        f_prime2=lambda u: jnp.ones_like(u),
        conj=lambda v: jnp.where(v >= -1.0, v + 0.5 * v**2, -0.5),
        conj_grad=lambda v: jnp.maximum(1.0 + v, 0.0),
        f_prime_at_zero=-1.0,
        f_at_zero=0.5,
    )
    fdiv.register("half_chi2", lambda: half_chi2)
    p = fdiv.f_softargmax(jnp.array([1.0, 0.5, -2.0]), "half_chi2", q="unit")
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
_INF = math.inf
_MAX_ANCHOR = 4.0


class Generator(abc.ABC):
    """Convex generator ``f`` of an f-divergence, with its conjugate maps.

    Subclasses implement the maps listed in the module docstring. ``conj_hess``
    defaults to differentiating ``conj_grad``. ``newton_from_left`` says from
    which end of the bracket the safeguarded Newton solver starts: the left end
    when ``S(τ) = Σ_j q_j (f*)'(θ_j − τ)`` composed with ``f'`` is convex in
    ``τ`` (every built-in generator but ``alpha`` with α > 2).
    """

    name: str = "generator"
    f_prime_at_zero: float = -_INF
    conj_domain_max: float = _INF
    f_at_zero: float = _INF
    newton_from_left: bool = True

    @abc.abstractmethod
    def f(self, u: Array) -> Array:
        """The generator ``f(u)`` for ``u ≥ 0``."""

    @abc.abstractmethod
    def f_prime(self, u: Array) -> Array:
        """``f'(u)``."""

    @abc.abstractmethod
    def f_prime2(self, u: Array) -> Array:
        """``f''(u)``."""

    @abc.abstractmethod
    def conj(self, v: Array) -> Array:
        """The convex conjugate ``f*(v)`` of ``f`` restricted to ``u ≥ 0``."""

    @abc.abstractmethod
    def conj_grad(self, v: Array) -> Array:
        """``(f*)'(v)``: the inverse of ``f'``, and 0 for ``v ≤ f'(0)``."""

    def conj_hess(self, v: Array) -> Array:
        """``(f*)''(v)``, zero off the support."""
        tangent = jnp.ones_like(v)
        return jax.jvp(self.conj_grad, (v,), (tangent,))[1]

    @property
    def anchor(self) -> float:
        """``a``: ``f'(0)`` or else the end of the domain of ``(f*)'`` when finite and
        within ``±4`` of 0 (a farther one, α close to 1, would cost more rounding in
        ``θ − t`` than it saves), else 0."""
        for a in (self.f_prime_at_zero, self.conj_domain_max):
            if math.isfinite(a) and abs(a) <= _MAX_ANCHOR:
                return float(a)
        return 0.0

    def f_prime_rel(self, u: Array) -> Array:
        """``f'(u) − a``."""
        return self.f_prime(u) - self.anchor if self.anchor else self.f_prime(u)

    def conj_grad_rel(self, r: Array) -> Array:
        """``(f*)'(a + r)``."""
        return self.conj_grad(r + self.anchor if self.anchor else r)

    def conj_hess_rel(self, r: Array) -> Array:
        """``(f*)''(a + r)``."""
        return self.conj_hess(r + self.anchor if self.anchor else r)

    def weighted_conj_hess_rel(self, q: Array, r: Array) -> Array:
        """``q · (f*)''(a + r)``, the weights of the Newton step and of the root's derivative;
        the poles order the product so that a tiny ``q`` next to the pole does not overflow."""
        return q * self.conj_hess_rel(r)

    def conj_rel(self, r: Array) -> Array:
        """``f*(a + r)``."""
        return self.conj(r + self.anchor if self.anchor else r)

    @property
    def power_law(self) -> tuple[float, int] | None:
        """``(coef, power)`` when ``conj_grad_rel(r) = coef · |r|^power`` with an integer power
        in [−4, 4] on the support or domain (``r > 0`` for ``power > 0``, a sparse generator;
        ``r < 0`` below a pole for ``power < 0``): the generators the CPU kernel solves (see
        fdiv/cpu_kernel.py). None otherwise."""
        return None

    @property
    def is_sparse(self) -> bool:
        """Whether the f-softargmax can give classes exactly zero mass."""
        return math.isfinite(self.f_prime_at_zero)

    def __repr__(self) -> str:
        return f"Generator({self.name!r})"

    # Built-in generators are equal when their names are (so jit caches hit across calls);
    # user-defined ones compare by identity.
    def __eq__(self, other: object) -> bool:
        if type(self) is CustomGenerator or type(other) is CustomGenerator:
            return self is other
        return type(self) is type(other) and self.name == other.name

    def __hash__(self) -> int:
        if type(self) is CustomGenerator:
            return id(self)
        return hash((type(self), self.name))


class KL(Generator):
    """Kullback–Leibler: ``f(u) = u log u − u + 1``; the operator is softmax."""

    name = "kl"
    f_at_zero = 1.0

    def f(self, u):
        return jax.scipy.special.xlogy(u, u) - u + 1.0

    def f_prime(self, u):
        return jnp.log(u)

    def f_prime2(self, u):
        return 1.0 / u

    def conj(self, v):
        return jnp.expm1(v)

    def conj_grad(self, v):
        return jnp.exp(v)

    def conj_hess(self, v):
        return jnp.exp(v)


class ReverseKL(Generator):
    """Reverse KL: ``f(u) = u − 1 − log u``; heavy tails, ``f(0) = +∞``."""

    name = "reverse_kl"
    conj_domain_max = 1.0

    def f(self, u):
        return u - 1.0 - jnp.log(u)

    def f_prime(self, u):
        return 1.0 - 1.0 / u

    def f_prime2(self, u):
        return 1.0 / (u * u)

    def conj(self, v):
        return -jnp.log1p(-v)

    def conj_grad(self, v):
        return 1.0 / (1.0 - v)

    def conj_hess(self, v):
        r = 1.0 / (1.0 - v)
        return r * r

    # a = 1, r = v − 1 < 0 on the domain
    def f_prime_rel(self, u):
        return -1.0 / u

    def conj_grad_rel(self, r):
        return -1.0 / r

    def conj_hess_rel(self, r):
        s = 1.0 / r  # not 1 / r²: its derivative at r = −inf would be NaN
        return s * s

    def weighted_conj_hess_rel(self, q, r):
        # q = 1e-20 puts the root ~1e-20 from the pole: 1/r² overflows float32, q/r² does not.
        s = 1.0 / r
        return (q * s) * s

    def conj_rel(self, r):
        return -jnp.log(-r)

    @property
    def power_law(self):
        return 1.0, -1


class Chi2(Generator):
    """Pearson χ²: ``f(u) = (u − 1)²``; sparsemax of ``θ / 2`` with unit q."""

    name = "chi2"
    f_prime_at_zero = -2.0
    f_at_zero = 1.0

    def f(self, u):
        return (u - 1.0) ** 2

    def f_prime(self, u):
        return 2.0 * (u - 1.0)

    def f_prime2(self, u):
        return jnp.full_like(u, 2.0)

    def conj(self, v):
        return jnp.where(v >= -2.0, v + 0.25 * v * v, -1.0)

    def conj_grad(self, v):
        return jnp.maximum(1.0 + 0.5 * v, 0.0)

    def conj_hess(self, v):
        return jnp.where(v > -2.0, 0.5, 0.0).astype(v.dtype)

    # a = f'(0) = −2, r = v + 2
    def f_prime_rel(self, u):
        return 2.0 * u

    def conj_grad_rel(self, r):
        return jnp.maximum(0.5 * r, 0.0)

    def conj_hess_rel(self, r):
        return jnp.where(r > 0.0, 0.5, 0.0).astype(r.dtype)

    def conj_rel(self, r):
        return 0.25 * jnp.square(jnp.maximum(r, 0.0)) - 1.0

    @property
    def power_law(self):
        return 0.5, 1


class Hellinger(Generator):
    """Squared Hellinger: ``f(u) = (√u − 1)²`` (half of ``alpha:0.5``)."""

    name = "hellinger"
    conj_domain_max = 1.0
    f_at_zero = 1.0

    def f(self, u):
        return (jnp.sqrt(u) - 1.0) ** 2

    def f_prime(self, u):
        return 1.0 - jax.lax.rsqrt(u)

    def f_prime2(self, u):
        return 0.5 * u ** (-1.5)

    def conj(self, v):
        return 1.0 / (1.0 - v) - 1.0  # = v / (1 − v), and −1 at v = −inf

    def conj_grad(self, v):
        r = 1.0 / (1.0 - v)
        return r * r

    def conj_hess(self, v):
        r = 1.0 / (1.0 - v)
        return 2.0 * r * r * r

    # a = 1, r = v − 1 < 0 on the domain
    def f_prime_rel(self, u):
        return -jax.lax.rsqrt(u)

    # Written through s = −1/r: derivatives of 1/r² or 1/r³ are NaN at r = −inf (masked).
    def conj_grad_rel(self, r):
        s = -1.0 / r
        return s * s

    def conj_hess_rel(self, r):
        s = -1.0 / r
        return 2.0 * s * s * s

    def weighted_conj_hess_rel(self, q, r):
        s = -1.0 / r  # q s² ~ 1 at the classes next to the pole: no overflow in that order
        return 2.0 * ((q * s) * s) * s

    def conj_rel(self, r):
        return -1.0 / r - 1.0

    @property
    def power_law(self):
        return 1.0, -2


class JensenShannon(Generator):
    """Jensen–Shannon: ``f(u) = u log u − (u + 1) log((u + 1) / 2)``."""

    name = "js"
    conj_domain_max = math.log(2.0)
    f_at_zero = math.log(2.0)

    def f(self, u):
        return jax.scipy.special.xlogy(u, u) - (u + 1.0) * jnp.log((u + 1.0) / 2.0)

    def f_prime(self, u):
        return jnp.log(2.0 * u / (u + 1.0))

    def f_prime2(self, u):
        return 1.0 / (u * (u + 1.0))

    def conj(self, v):
        return -jnp.log(2.0 - jnp.exp(v))

    def conj_grad(self, v):
        e = jnp.exp(v)
        return e / (2.0 - e)

    def conj_hess(self, v):
        e = jnp.exp(v)
        d = 2.0 - e
        return 2.0 * e / (d * d)

    # a = log 2, r = v − log 2 < 0 on the domain: e^v = 2 e^r, 2 − e^v = −2 expm1(r), and
    # (f*)' = e^r / (1 − e^r) = 1 / expm1(−r), (f*)'' = (f*)' (1 + (f*)'): one exp per class.
    def f_prime_rel(self, u):
        return -jnp.log1p(1.0 / u)

    def conj_grad_rel(self, r):
        return _js_conj_grad_rel(r)

    def conj_hess_rel(self, r):
        s = _js_conj_grad_rel(r)
        return s * (1.0 + s)

    def weighted_conj_hess_rel(self, q, r):
        # As the other poles: q = 1e-20 at the max puts its class 1e-20 below the pole, and
        # s² = 1e40 overflows float32 where (q s)(1 + s) does not.
        s = _js_conj_grad_rel(r)
        return (q * s) * (1.0 + s)

    def conj_rel(self, r):
        return -math.log(2.0) - jnp.log(-jnp.expm1(r))


@jax.custom_jvp
def _js_conj_grad_rel(r: Array) -> Array:
    """``1 / expm1(−r)``, with the derivative ``s (1 + s)``: autodiff would give
    ``exp(−r) / expm1(−r)² = inf / inf`` at a masked class (r = −inf)."""
    return 1.0 / jnp.expm1(-r)


@_js_conj_grad_rel.defjvp
def _js_conj_grad_rel_jvp(primals, tangents):
    s = _js_conj_grad_rel(primals[0])
    return s, s * (1.0 + s) * tangents[0]


# Exponents 1/(α−1) that are small integers get an exact integer power
# (α = 2, 1.5, 4/3, 1.25): no exp or log, which makes entmax-like losses cheap.
_MAX_INTEGER_EXPONENT = 4


class Alpha(Generator):
    """α-divergence: ``f(u) = (u^α − 1 − α(u − 1)) / (α(α − 1))``, ``α ∉ {0, 1}``.

    Sparse for α > 1 (``f'(0) = −1/(α − 1)``); α-entmax with unit q; ``alpha:2``
    is sparsemax with unit q, ``alpha:0.5`` twice the squared Hellinger. Powers
    are taken as ``exp(log1p(·) / (α − 1))`` so that α close to 1 stays accurate.
    """

    def __init__(self, alpha: float):
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha in (0.0, 1.0):
            raise ValueError(
                f"Alpha needs a finite α not in {{0, 1}}, got {alpha}; use 'kl' for α = 1 "
                "and 'reverse_kl' for α = 0."
            )
        self.alpha = alpha
        self.name = f"alpha:{alpha:g}"
        self._exponent = 1.0 / (alpha - 1.0)
        rounded = round(self._exponent)
        self._integer_exponent = (
            rounded
            if abs(self._exponent - rounded) < 1e-12 and 1 <= rounded <= _MAX_INTEGER_EXPONENT
            else None
        )
        self.f_prime_at_zero = -self._exponent if alpha > 1 else -_INF
        self.conj_domain_max = _INF if alpha > 1 else -self._exponent
        self.f_at_zero = 1.0 / alpha if alpha > 0 else _INF
        self.newton_from_left = alpha <= 2.0

    def _power(self, t: Array, exponent: float, integer: int | None) -> Array:
        """``[1 + t]_+ ** exponent`` for ``t = (α − 1) v``, zero where ``1 + t ≤ 0``."""
        if integer is not None:
            return jax.lax.integer_pow(jnp.maximum(1.0 + t, 0.0), integer)
        keep = (t > -1.0) | jnp.isnan(t)  # a NaN logit must stay NaN, not become 0
        log_base = jnp.log1p(jnp.where(keep, t, 0.0))
        return jnp.where(keep, jnp.exp(exponent * log_base), 0.0)

    def _power_rel(self, r: Array, exponent: float, integer: int | None) -> Array:
        """``[(α − 1) r]_+ ** exponent``: the base ``1 + (α − 1) v`` at ``v = a + r``."""
        base = (self.alpha - 1.0) * r
        if integer is not None:
            return jax.lax.integer_pow(jnp.maximum(base, 0.0), integer)
        keep = (base > 0.0) | jnp.isnan(base)
        log_base = jnp.log(jnp.where(keep, base, 1.0))
        return jnp.where(keep, jnp.exp(exponent * log_base), 0.0)

    def f(self, u):
        # (u^α − 1 − α(u − 1)) / (α(α − 1)) = (u (u^{α−1} − 1)/(α − 1) − (u − 1)) / α:
        # no cancellation by α − 1, so α close to 1 stays accurate (the KL limit).
        # u (u^{α−1} − 1) = u^α − u, taken as u^α − u where u^{α−1} is far from 1: with α < 1
        # and a tiny u, u^{α−1} overflows while u^α does not (α = −1, u = 2e-30).
        a = self.alpha
        positive = u > 0
        log_u = jnp.log(jnp.where(positive, u, 1.0))
        x = (a - 1.0) * log_u
        near = jnp.abs(x) < 1.0
        excess = jnp.where(near, u * jnp.expm1(jnp.where(near, x, 0.0)), jnp.exp(a * log_u) - u)
        value = (excess / (a - 1.0) - (u - 1.0)) / a
        return jnp.where(positive, value, self.f_at_zero)

    def f_prime(self, u):
        a = self.alpha
        return jnp.expm1((a - 1.0) * jnp.log(u)) / (a - 1.0)

    def f_prime2(self, u):
        return u ** (self.alpha - 2.0)

    def conj(self, v):
        a, e = self.alpha, self._exponent
        t = (a - 1.0) * v
        integer = self._integer_exponent + 1 if self._integer_exponent is not None else None
        return (self._power(t, e + 1.0, integer) - 1.0) / a

    def conj_grad(self, v):
        t = (self.alpha - 1.0) * v
        return self._power(t, self._exponent, self._integer_exponent)

    def conj_hess(self, v):
        t = (self.alpha - 1.0) * v
        integer = self._integer_exponent - 1 if self._integer_exponent is not None else None
        if integer == 0:
            return jnp.where(t > -1.0, 1.0, 0.0).astype(v.dtype)
        return self._power(t, self._exponent - 1.0, integer)

    # a = −1/(α − 1) (f'(0) for α > 1, the pole for α < 1) when |a| ≤ 4; then
    # 1 + (α − 1) v = (α − 1) r.
    def f_prime_rel(self, u):
        if not self.anchor:
            return super().f_prime_rel(u)
        return u ** (self.alpha - 1.0) / (self.alpha - 1.0)

    def conj_grad_rel(self, r):
        if not self.anchor:
            return super().conj_grad_rel(r)
        return self._power_rel(r, self._exponent, self._integer_exponent)

    def conj_hess_rel(self, r):
        if not self.anchor:
            return super().conj_hess_rel(r)
        integer = self._integer_exponent - 1 if self._integer_exponent is not None else None
        if integer == 0:
            return jnp.where((self.alpha - 1.0) * r > 0.0, 1.0, 0.0).astype(r.dtype)
        return self._power_rel(r, self._exponent - 1.0, integer)

    @property
    def power_law(self):
        # conj_grad_rel(r) = [(α − 1) r]_+^k = |α − 1|^k |r|^k with k = 1 / (α − 1) an integer
        # (α = 2, 3/2, 4/3, 5/4 on the support r > 0; α = 1/2, 2/3, 3/4 below the pole, r < 0).
        k = round(self._exponent)
        if not self.anchor or abs(self._exponent - k) > 1e-12 or not 1 <= abs(k) <= 4:
            return None
        return abs(self.alpha - 1.0) ** k, k

    def conj_rel(self, r):
        if not self.anchor:
            return super().conj_rel(r)
        integer = self._integer_exponent + 1 if self._integer_exponent is not None else None
        return (self._power_rel(r, self._exponent + 1.0, integer) - 1.0) / self.alpha


class CustomGenerator(Generator):
    """A generator assembled from user functions (see the module docstring).

    ``conj_hess`` may be left out: it is then the derivative of ``conj_grad``.
    The functions must be elementwise, jit-able, and accept ``v = -inf``.
    """

    def __init__(
        self,
        name: str,
        f: Callable[[Array], Array],
        f_prime: Callable[[Array], Array],
        f_prime2: Callable[[Array], Array],
        conj: Callable[[Array], Array],
        conj_grad: Callable[[Array], Array],
        conj_hess: Callable[[Array], Array] | None = None,
        *,
        f_prime_at_zero: float = -_INF,
        conj_domain_max: float = _INF,
        f_at_zero: float = _INF,
        newton_from_left: bool = True,
    ):
        self.name = name
        self._maps = {"f": f, "f_prime": f_prime, "f_prime2": f_prime2, "conj": conj}
        self._conj_grad, self._conj_hess = conj_grad, conj_hess
        self.f_prime_at_zero = f_prime_at_zero
        self.conj_domain_max = conj_domain_max
        self.f_at_zero = f_at_zero
        self.newton_from_left = newton_from_left

    def f(self, u):
        return self._maps["f"](u)

    def f_prime(self, u):
        return self._maps["f_prime"](u)

    def f_prime2(self, u):
        return self._maps["f_prime2"](u)

    def conj(self, v):
        return self._maps["conj"](v)

    def conj_grad(self, v):
        return self._conj_grad(v)

    def conj_hess(self, v):
        if self._conj_hess is None:
            return super().conj_hess(v)
        return self._conj_hess(v)


_REGISTRY: dict[str, Callable[[], Generator]] = {
    "kl": KL,
    "reverse_kl": ReverseKL,
    "chi2": Chi2,
    "hellinger": Hellinger,
    "js": JensenShannon,
}


def register(name: str, factory: Callable[[], Generator]) -> None:
    """Make ``factory()`` available under ``name`` wherever a divergence is named."""
    if name in _REGISTRY or name.startswith("alpha:"):
        raise ValueError(f"divergence name {name!r} is already taken")
    _REGISTRY[name] = factory


def valid_names() -> list[str]:
    """Registered divergence names, plus the ``alpha:<value>`` pattern."""
    return [*_REGISTRY, "alpha:<value> (finite value, not 0)"]


def get_generator(divergence: str | Generator) -> Generator:
    """Return the generator named ``divergence`` (or ``divergence`` itself).

    Raises:
      ValueError: for an unknown name or a malformed / invalid ``alpha:`` value;
        the message lists the valid names.
    """
    if isinstance(divergence, Generator):
        return divergence
    if not isinstance(divergence, str):
        raise ValueError(
            f"divergence must be a name or a Generator, got {type(divergence).__name__}; "
            f"valid names: {', '.join(valid_names())}"
        )
    if divergence.startswith("alpha:"):
        text = divergence[len("alpha:") :]
        try:
            alpha = float(text)
        except ValueError:
            raise ValueError(
                f"malformed divergence {divergence!r}: expected 'alpha:<number>', e.g. 'alpha:1.5'"
            ) from None
        if not math.isfinite(alpha) or alpha == 0.0:
            raise ValueError(
                f"invalid divergence {divergence!r}: α must be finite and non-zero "
                "(α = 0 is the reverse-KL limit: use 'reverse_kl')"
            )
        return KL() if alpha == 1.0 else Alpha(alpha)
    if divergence not in _REGISTRY:
        raise ValueError(
            f"unknown divergence {divergence!r}; valid names: {', '.join(valid_names())}"
        )
    return _REGISTRY[divergence]()
