"""Accuracy of the root solvers ("bisect", "newton", "auto") against a float64 bisection.

Issue 3: in float32, for every divergence and both reference measures,
|τ − τ_ref| ≤ 1e-6 (1 + |τ_ref|) and probabilities summing to 1 within 1e-5, on random and
adversarial rows (a spread of 1e4, exact ties, one dominant logit, V from 2 to 262144).

τ is not part of the public API, so it is recovered from the probabilities at the class with the
largest logit: ``τ = θ_j − f'(p_j / q_j)``. Rounding p_j to float32 alone moves that estimate by
about ``eps · u f''(u)`` (u = p_j / q_j), which is added to the tolerance.

τ is measured from the row max of the unmasked classes (``implied_tau`` and the reference's
``tau_rel``; the reference also solves in that frame, see ``references.ref_solve``), so the
tolerance 1e-6 (1 + |τ|) does not grow with the logits' offset.

All three solvers, all row sets and both outputs are computed in one jitted function per
(divergence, q), so that each case costs one compilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import DIVERGENCES, Q_MODES, SOLVERS, implied_tau, ref_q, ref_solve

import fdiv


@pytest.fixture(scope="module", params=DIVERGENCES)
def divergence(request):
    """Module-scoped, so that pytest runs all the tests of one divergence together (on one xdist
    worker, mostly) and each divergence's compiled functions are built once."""
    return request.param


EPS32 = float(np.finfo(np.float32).eps)
WIDE = 1024  # the width of the batch that emulates V ∈ {2, 3, 7, 1024} with `where`
BIG = 262144


def _rows(v: int, rng) -> np.ndarray:
    """Random and adversarial rows of length v."""
    rows = [
        rng.normal(size=v),
        rng.normal(size=v) * 3.0,
        rng.normal(size=v) * 1e-3,  # near ties
        np.zeros(v),  # exact ties everywhere
        np.where(np.arange(v) < 2, 1.0, rng.normal(size=v) - 3.0),  # two tied maxima
        np.where(np.arange(v) == v // 2, 1e4, rng.normal(size=v)),  # one dominant logit
        np.where(np.arange(v) == 0, 30.0, rng.normal(size=v)),  # a less extreme dominant one
        rng.uniform(-5e3, 5e3, size=v),  # spread of 1e4
        np.concatenate([[5e3, -5e3], rng.uniform(-5e3, 5e3, size=v - 2)])[:v],
    ]
    return np.stack(rows).astype(np.float32)


def _cases():
    rng = np.random.default_rng(0)
    wide, mask = [], []
    for v in [2, 3, 7, WIDE]:
        rows = _rows(v, rng)
        pad = np.full((rows.shape[0], WIDE - v), 1e4, np.float32)  # masked: must not matter
        wide.append(np.concatenate([rows, pad], 1))
        mask.append(np.arange(WIDE)[None, :].repeat(rows.shape[0], 0) < v)
    # two classes: a few more hand-picked rows
    two = np.array([[3, -3], [1e4, 0], [0.45, 0], [1e-3, 0], [-1e-3, 0]], np.float32)
    wide.append(np.concatenate([two, np.full((len(two), WIDE - 2), 1e4, np.float32)], 1))
    mask.append(np.arange(WIDE)[None, :].repeat(len(two), 0) < 2)
    # V = 262144: random logits, two tied maxima among spread-out ones, and one logit 1 above
    # 262143 ties (the ties sit at the edge of the support, far from the row max: see
    # root_finding._Frame)
    big = np.stack(
        [
            rng.normal(size=BIG) * 2.0,
            np.where(np.arange(BIG) < 2, 1.0, rng.uniform(-5e3, 0.0, size=BIG)),
            np.where(np.arange(BIG) == 0, 1.0, 0.0),
        ]
    ).astype(np.float32)
    return np.concatenate(wide), np.concatenate(mask), big


WIDE_X, WIDE_MASK, BIG_X = _cases()


def _all_solvers(divergence, q):
    def run(wide, mask, big):
        out = {}
        for solver in SOLVERS:
            kw = dict(q=q, solver=solver)
            out[solver] = {
                "wide": fdiv.f_softargmax(wide, divergence, where=mask, **kw),
                "big": fdiv.f_softargmax(big, divergence, **kw),
            }
        return out

    return jax.jit(run)(WIDE_X, WIDE_MASK, BIG_X)


def _check(name, x, p, q, divergence, ref, where=None):
    """The list of failures (empty when every row is accurate)."""
    p = np.asarray(p, np.float64)
    problems = []
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        return [f"{name}: non-finite or negative probabilities"]
    sums = np.abs(p.sum(-1) - 1.0)
    if np.any(sums > 1e-5):
        problems.append(
            f"{name}: |Σp − 1| up to {sums.max():.2e} (rows {np.flatnonzero(sums > 1e-5)})"
        )
    err = np.abs(p - ref.p).max(-1)
    if np.any(err > 1e-5):
        problems.append(
            f"{name}: |p − p_ref| up to {err.max():.2e} (rows {np.flatnonzero(err > 1e-5)})"
        )
    qa = ref_q(q, x, where)
    tau, conditioning = implied_tau(x, p, qa, divergence)
    tol = 1e-6 * (1.0 + np.abs(ref.tau_rel)) + 4 * EPS32 * conditioning
    tau_err = np.abs(tau - ref.tau_rel)
    bad = ~(tau_err <= tol)
    if np.any(bad):
        rows = np.flatnonzero(bad)
        problems.append(
            f"{name}: |τ − τ_ref| = {tau_err[rows]} > tol {tol[rows]} (rows {rows}, "
            f"τ_ref {ref.tau_rel[rows]})"
        )
    return problems


@pytest.mark.parametrize("q", Q_MODES)
def test_solver_accuracy(divergence, q):
    results = _all_solvers(divergence, q)
    ref_wide = ref_solve(WIDE_X, divergence, q, WIDE_MASK)
    ref_big = ref_solve(BIG_X, divergence, q)
    problems = []
    for solver in SOLVERS:
        out = results[solver]
        problems += _check(
            f"{solver}/V≤1024", WIDE_X, out["wide"], q, divergence, ref_wide, WIDE_MASK
        )
        problems += _check(f"{solver}/V={BIG}", BIG_X, out["big"], q, divergence, ref_big)
        if np.any(np.asarray(out["wide"])[~WIDE_MASK] != 0):
            problems.append(f"{solver}: masked classes got mass")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("divergence", ["chi2", "alpha:1.5", "alpha:3", "js"], indirect=True)
def test_solvers_agree_with_each_other(divergence):
    theta = (np.random.default_rng(1).normal(size=(16, 50)) * 2).astype(np.float32)
    out = jax.jit(
        lambda t: [fdiv.f_softargmax(t, divergence, q="unit", solver=s) for s in SOLVERS]
    )(theta)
    for p in out[1:]:
        np.testing.assert_allclose(np.asarray(p), np.asarray(out[0]), atol=2e-6)


def test_solver_argument_is_static_under_jit():
    theta = jnp.zeros((2, 4))
    for solver in SOLVERS:
        p = jax.jit(lambda t, s=solver: fdiv.f_softargmax(t, "alpha:1.5", solver=s))(theta)
        np.testing.assert_allclose(np.asarray(p), 0.25, atol=1e-6)


@pytest.mark.parametrize("name", [*DIVERGENCES, "alpha:1.1", "alpha:0.8"])
def test_anchored_maps_match_the_plain_ones(name, x64):
    """The solvers' maps of ``r = v − a`` (``conj_grad_rel`` …) are the generator's maps at
    ``v = a + r``, including at ``v = −inf``; the anchor is the finite end of the support or of
    the domain when there is one within ±4, else 0 (α close to 1)."""
    gen = fdiv.get_generator(name)
    ends = [e for e in (gen.f_prime_at_zero, gen.conj_domain_max) if np.isfinite(e)]
    assert gen.anchor == (ends[0] if ends and abs(ends[0]) <= 4 else 0.0)
    top = min(gen.conj_domain_max, 6.0) - 1e-3
    v = jnp.concatenate([jnp.linspace(-6.0, top, 301), jnp.array([-jnp.inf])])
    r = v - gen.anchor
    u = jnp.linspace(0.01, 20.0, 50)
    for rel, plain in [
        (gen.conj_grad_rel(r), gen.conj_grad(v)),
        (gen.conj_hess_rel(r), gen.conj_hess(v)),
        (gen.conj_rel(r), gen.conj(v)),
        (gen.f_prime_rel(u), gen.f_prime(u) - gen.anchor),
    ]:
        np.testing.assert_allclose(np.asarray(rel), np.asarray(plain), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("divergence", ["chi2", "alpha:2", "alpha:1.5"], indirect=True)
def test_ties_with_unit_q_are_exact(divergence):
    """1000 exact (and near) ties with unit q put ``τ`` within 2e-3 of the support's end
    ``f'(0)``: a float32 τ near 2 is 1.2e-7 coarse, which moves Σp by 500 × 1.2e-7 for χ². The
    anchored root ``t = τ − f'(0)`` is resolved to its own relative precision."""
    theta = np.zeros((3, 1000), np.float32)
    theta[1] = np.random.default_rng(2).normal(size=1000) * 1e-3
    theta[2, :999] = np.float32(1e-3) * np.arange(999, dtype=np.float32) / 999
    out = jax.jit(
        lambda t: [fdiv.f_softargmax(t, divergence, q="unit", solver=s) for s in SOLVERS]
    )(theta)
    ref = ref_solve(theta, divergence, "unit")
    for solver, p in zip(SOLVERS, out, strict=True):
        p = np.asarray(p, np.float64)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5, rtol=0, err_msg=solver)
        np.testing.assert_allclose(p, ref.p, atol=1e-7, err_msg=solver)
