"""Generators of f-divergences: normalisation, conjugate maps, registry and errors.

The library's maps are checked against the float64 references of ``references.py`` and against
identities that do not depend on any formula (Fenchel–Young equality, the conjugate as a supremum,
inverse and derivative relations checked by finite differences).
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from references import DIVERGENCES, ref_generator

import fdiv

# u grids on which every map is compared (strictly positive: f'(0) may be infinite).
U_GRID = np.concatenate([np.geomspace(1e-3, 1.0, 25), np.linspace(1.0, 20.0, 25)[1:]])
U_FD = np.concatenate([np.geomspace(0.05, 1.0, 12), np.linspace(1.0, 10.0, 12)[1:]])


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _lib(gen, method, x, dtype=jnp.float64):
    return _np(getattr(gen, method)(jnp.asarray(x, dtype=dtype)))


def _v_grid(name):
    """Points in the domain of (f*)': f'(u) on the u grid, plus points below f'(0) if finite."""
    ref = ref_generator(name)
    v = ref.fp(U_GRID)
    if ref.is_sparse:
        v = np.concatenate([v, ref.fp_at_zero - np.array([1e-3, 0.5, 3.0, 100.0])])
    return v


# ------------------------------------------------------------------------------------------------
# The references themselves (cheap sanity checks, so a failure below is not a reference bug).


@pytest.mark.parametrize("name", DIVERGENCES)
def test_reference_generators_are_self_consistent(name):
    ref = ref_generator(name)
    fp = ref.fp(U_GRID)
    np.testing.assert_allclose(ref.f(U_GRID) + ref.conj(fp), U_GRID * fp, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref.conj_grad(fp), U_GRID, rtol=1e-10)
    assert ref.f(np.array(1.0)) == pytest.approx(0.0, abs=1e-15)
    assert ref.fp(np.array(1.0)) == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------------------------------------
# Maps against the references, and identities, in float64.


@pytest.mark.parametrize("name", DIVERGENCES)
def test_normalised_at_one(name, x64):
    gen = fdiv.get_generator(name)
    one = jnp.ones((), jnp.float64)
    assert float(gen.f(one)) == pytest.approx(0.0, abs=1e-12)
    assert float(gen.f_prime(one)) == pytest.approx(0.0, abs=1e-12)
    # (f*)'(0) = 1: the f-softargmax of equal logits with q summing to one is q itself.
    assert float(gen.conj_grad(jnp.zeros((), jnp.float64))) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_maps_match_reference_float64(name, x64):
    gen, ref = fdiv.get_generator(name), ref_generator(name)
    for method, refm in [("f", ref.f), ("f_prime", ref.fp), ("f_prime2", ref.fpp)]:
        np.testing.assert_allclose(
            _lib(gen, method, U_GRID), refm(U_GRID), rtol=1e-9, atol=1e-12, err_msg=method
        )
    v = _v_grid(name)
    for method, refm in [
        ("conj", ref.conj),
        ("conj_grad", ref.conj_grad),
        ("conj_hess", ref.conj_hess),
    ]:
        np.testing.assert_allclose(
            _lib(gen, method, v), refm(v), rtol=1e-9, atol=1e-12, err_msg=method
        )


@pytest.mark.parametrize("name", DIVERGENCES)
def test_attributes(name):
    gen, ref = fdiv.get_generator(name), ref_generator(name)
    assert float(gen.f_prime_at_zero) == pytest.approx(ref.fp_at_zero)
    assert float(gen.conj_domain_max) == pytest.approx(ref.domain_max)
    assert float(gen.f_at_zero) == pytest.approx(ref.f_at_zero)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_attributes_are_limits_of_the_maps(name, x64):
    gen = fdiv.get_generator(name)
    # f(0) is the limit of f at 0+.
    if math.isfinite(gen.f_at_zero):
        assert float(gen.f(jnp.float64(1e-200))) == pytest.approx(gen.f_at_zero, abs=1e-5)
        assert float(gen.f(jnp.float64(0.0))) == pytest.approx(gen.f_at_zero, abs=1e-12)
    else:
        assert float(gen.f(jnp.float64(1e-200))) > 10.0
    # f'(0) is the limit of f' at 0+.
    fp_small = float(gen.f_prime(jnp.float64(1e-200)))
    if math.isfinite(gen.f_prime_at_zero):
        assert fp_small == pytest.approx(gen.f_prime_at_zero, abs=1e-5)
    else:
        assert fp_small < -10.0
    # f'(∞) is the end of the domain of (f*)'.
    fp_big = float(gen.f_prime(jnp.float64(1e200)))
    if math.isfinite(gen.conj_domain_max):
        assert fp_big == pytest.approx(gen.conj_domain_max, abs=1e-5)
        assert fp_big <= gen.conj_domain_max
    else:
        assert fp_big > 10.0


@pytest.mark.parametrize("name", DIVERGENCES)
def test_conj_grad_inverts_f_prime(name, x64):
    gen = fdiv.get_generator(name)
    v = _lib(gen, "f_prime", U_GRID)
    np.testing.assert_allclose(_lib(gen, "conj_grad", v), U_GRID, rtol=1e-9)
    # and the other way round on the domain (v > f'(0)).
    u = _lib(gen, "conj_grad", v)
    np.testing.assert_allclose(_lib(gen, "f_prime", u), v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_derivatives_by_finite_differences(name, x64):
    gen = fdiv.get_generator(name)
    v = ref_generator(name).fp(U_FD)
    h = 1e-6
    for lower, upper, x in [
        ("f", "f_prime", U_FD),
        ("f_prime", "f_prime2", U_FD),
        ("conj", "conj_grad", v),
        ("conj_grad", "conj_hess", v),
    ]:
        fd = (_lib(gen, lower, x + h) - _lib(gen, lower, x - h)) / (2 * h)
        np.testing.assert_allclose(
            _lib(gen, upper, x), fd, rtol=1e-5, atol=1e-7, err_msg=f"{upper} vs d/dx {lower}"
        )


@pytest.mark.parametrize("name", DIVERGENCES)
def test_fenchel_young_equality(name, x64):
    """f(u) + f*(f'(u)) = u f'(u): conj is the Legendre conjugate of f."""
    gen = fdiv.get_generator(name)
    fp = _lib(gen, "f_prime", U_GRID)
    lhs = _lib(gen, "f", U_GRID) + _lib(gen, "conj", fp)
    np.testing.assert_allclose(lhs, U_GRID * fp, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_conj_is_sup_over_a_grid(name, x64):
    """f*(v) = sup_{u ≥ 0} u v − f(u), checked against a fine grid of u."""
    gen = fdiv.get_generator(name)
    u = np.linspace(0.0, 30.0, 30001)
    fu = _lib(gen, "f", u)
    ref = ref_generator(name)
    v = ref.fp(np.array([0.1, 0.5, 1.0, 2.0, 5.0]))
    if ref.is_sparse:
        v = np.concatenate([v, ref.fp_at_zero - np.array([0.5, 4.0])])
    conj = _lib(gen, "conj", v)
    with np.errstate(invalid="ignore"):
        sup = np.nanmax(u[None, :] * v[:, None] - fu[None, :], axis=1)
    assert np.all(conj >= sup - 1e-9)
    np.testing.assert_allclose(conj, sup, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in DIVERGENCES if ref_generator(n).is_sparse])
def test_sparse_clamp_below_f_prime_at_zero(name, x64):
    gen = fdiv.get_generator(name)
    v = gen.f_prime_at_zero - np.array([0.0, 1e-6, 0.5, 10.0, 1e6])
    np.testing.assert_array_equal(_lib(gen, "conj_grad", v), 0.0)
    np.testing.assert_array_equal(_lib(gen, "conj_hess", v[1:]), 0.0)
    np.testing.assert_allclose(_lib(gen, "conj", v), -gen.f_at_zero, rtol=1e-12)
    # just above f'(0): small positive mass, no NaN from a power of a negative base.
    above = _lib(gen, "conj_grad", gen.f_prime_at_zero + np.array([1e-3, 1e-1]))
    assert np.all(above > 0) and np.all(np.isfinite(above))


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_maps_accept_minus_inf(name, dtype, x64):
    """A masked class has logit −inf: (f*)' and (f*)'' must give 0 there, f* its limit −f(0)."""
    gen = fdiv.get_generator(name)
    v = jnp.array([-jnp.inf], dtype)
    assert _lib(gen, "conj_grad", v, dtype)[0] == 0.0
    assert _lib(gen, "conj_hess", v, dtype)[0] == 0.0
    conj = _lib(gen, "conj", v, dtype)[0]
    assert conj == pytest.approx(-gen.f_at_zero, rel=1e-6), conj


@pytest.mark.parametrize("name", DIVERGENCES)
def test_maps_float32_accuracy(name):
    """In float32 the maps stay accurate (relative to the float64 reference at the same input)."""
    gen, ref = fdiv.get_generator(name), ref_generator(name)
    u32 = U_GRID.astype(np.float32)
    u = u32.astype(np.float64)
    scale = 1.0 + np.abs(ref.f(u)) + u * (1.0 + np.abs(np.log(u)))
    err = np.abs(_lib(gen, "f", u32, jnp.float32) - ref.f(u))
    assert np.all(err <= 1e-6 * scale), np.max(err / scale)
    np.testing.assert_allclose(
        _lib(gen, "f_prime", u32, jnp.float32), ref.fp(u), rtol=1e-5, atol=1e-6
    )
    v32 = ref.fp(u).astype(np.float32)
    v = v32.astype(np.float64)
    for method, refm in [("conj", ref.conj), ("conj_grad", ref.conj_grad)]:
        np.testing.assert_allclose(
            _lib(gen, method, v32, jnp.float32), refm(v), rtol=2e-5, atol=1e-6, err_msg=method
        )


# ------------------------------------------------------------------------------------------------
# Members of the α family.


@pytest.mark.parametrize("alpha", ["1.0001", "0.9999"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_alpha_near_one_is_close_to_kl(alpha, dtype, x64):
    gen = fdiv.get_generator(f"alpha:{alpha}")
    kl = ref_generator("kl")
    u = np.geomspace(0.01, 10.0, 30)
    v = np.linspace(-5.0, 2.0, 30)
    for method, refm, x in [
        ("f", kl.f, u),
        ("f_prime", kl.fp, u),
        ("conj", kl.conj, v),
        ("conj_grad", kl.conj_grad, v),
        ("conj_hess", kl.conj_hess, v),
    ]:
        got = _lib(gen, method, x, dtype)
        assert np.all(np.isfinite(got)), method
        np.testing.assert_allclose(got, refm(x), rtol=3e-3, atol=1e-3, err_msg=method)


@pytest.mark.parametrize("alpha", ["1.0001", "0.9999", "1.00000001"])
def test_alpha_near_one_float32_f_matches_its_own_reference(alpha):
    """f_α in float32 near α = 1 must not lose its digits to (u^α − 1 − α(u − 1)) / (α(α − 1))."""
    gen, ref = fdiv.get_generator(f"alpha:{alpha}"), ref_generator(f"alpha:{alpha}")
    u = np.geomspace(0.01, 10.0, 30).astype(np.float32)
    got = _lib(gen, "f", u, jnp.float32)
    want = ref.f(u.astype(np.float64))
    scale = 1.0 + np.abs(want) + u * (1.0 + np.abs(np.log(u)))
    assert np.all(np.abs(got - want) <= 1e-5 * scale), np.max(np.abs(got - want) / scale)


def test_alpha_one_is_kl(x64):
    gen = fdiv.get_generator("alpha:1")
    v = jnp.linspace(-5.0, 2.0, 9, dtype=jnp.float64)
    np.testing.assert_allclose(_np(gen.conj_grad(v)), np.exp(_np(v)), rtol=1e-12)
    np.testing.assert_allclose(_np(gen.conj(v)), np.expm1(_np(v)), rtol=1e-12)


def test_alpha_half_is_twice_hellinger(x64):
    a, h = fdiv.get_generator("alpha:0.5"), fdiv.get_generator("hellinger")
    for method in ["f", "f_prime", "f_prime2"]:
        np.testing.assert_allclose(
            _lib(a, method, U_GRID), 2 * _lib(h, method, U_GRID), rtol=1e-10, atol=1e-13
        )
    # (2h)*(v) = 2 h*(v/2), so its derivatives are h*'(v/2) and h*''(v/2)/2.
    v = np.linspace(-20.0, 1.9, 40)
    np.testing.assert_allclose(_lib(a, "conj", v), 2 * _lib(h, "conj", v / 2), rtol=1e-10)
    np.testing.assert_allclose(_lib(a, "conj_grad", v), _lib(h, "conj_grad", v / 2), rtol=1e-10)
    np.testing.assert_allclose(
        _lib(a, "conj_hess", v), 0.5 * _lib(h, "conj_hess", v / 2), rtol=1e-10
    )
    assert a.conj_domain_max == pytest.approx(2 * h.conj_domain_max)
    assert a.f_at_zero == pytest.approx(2 * h.f_at_zero)


def test_alpha_two_is_half_chi2(x64):
    a, c = fdiv.get_generator("alpha:2"), fdiv.get_generator("chi2")
    np.testing.assert_allclose(_lib(a, "f", U_GRID), 0.5 * _lib(c, "f", U_GRID), rtol=1e-12)
    assert a.f_prime_at_zero == pytest.approx(0.5 * c.f_prime_at_zero)


# ------------------------------------------------------------------------------------------------
# Registry and errors.


def test_get_generator_passes_objects_through():
    gen = fdiv.get_generator("alpha:1.5")
    assert fdiv.get_generator(gen) is gen


@pytest.mark.parametrize("spelling", ["alpha:1.5", "alpha:1.50", "alpha:+1.5", "alpha:15e-1"])
def test_alpha_spellings(spelling, x64):
    gen = fdiv.get_generator(spelling)
    v = jnp.linspace(-3.0, 3.0, 7, dtype=jnp.float64)
    np.testing.assert_allclose(_np(gen.conj_grad(v)), ref_generator("alpha:1.5").conj_grad(_np(v)))


VALID_NAMES = ["kl", "reverse_kl", "chi2", "hellinger", "js", "alpha:"]


@pytest.mark.parametrize("bad", ["bogus", "KLD", "", "alpha", "chi", "kl "])
def test_unknown_name_lists_valid_ones(bad):
    with pytest.raises(ValueError) as err:
        fdiv.get_generator(bad)
    for name in VALID_NAMES:
        assert name in str(err.value), (name, str(err.value))


@pytest.mark.parametrize(
    "bad", ["alpha:0", "alpha:0.0", "alpha:-0", "alpha:abc", "alpha:", "alpha:nan", "alpha:inf"]
)
def test_invalid_alpha_raises_value_error(bad):
    with pytest.raises(ValueError) as err:
        fdiv.get_generator(bad)
    message = str(err.value)
    assert repr(bad) in message or bad in message, message
    assert "alpha:" in message


@pytest.mark.parametrize("bad", ["bogus", "alpha:0", "alpha:abc", "alpha:nan"])
def test_operators_and_losses_reject_bad_names(bad):
    logits = jnp.zeros((2, 3))
    with pytest.raises(ValueError):
        fdiv.f_softargmax(logits, bad)
    with pytest.raises(ValueError):
        fdiv.f_softmax(logits, bad)
    with pytest.raises(ValueError):
        fdiv.fdiv_loss(logits, jnp.full((2, 3), 1 / 3), bad)
    with pytest.raises(ValueError):
        fdiv.fdiv_loss_with_integer_labels(logits, jnp.zeros(2, jnp.int32), bad)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.5])
def test_alpha_f_at_tiny_u_is_finite_in_float32(alpha):
    """f(u) = (u^α − 1 − α(u − 1)) / (α(α − 1)) is finite in float32 whenever u^α is, although
    u^{α−1} overflows (found by hypothesis: α = −1, a target of 3.6e-31 made the loss inf)."""
    u = np.array([2e-30, 3.6e-31 * 6, 1e-20], np.float32)
    got = np.asarray(fdiv.get_generator(f"alpha:{alpha}").f(jnp.asarray(u)), np.float64)
    u64 = u.astype(np.float64)
    want = (u64**alpha - 1 - alpha * (u64 - 1)) / (alpha * (alpha - 1))
    np.testing.assert_allclose(got, want, rtol=1e-5)
