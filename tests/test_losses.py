"""Fenchel–Young losses: parity with optax for KL, references, gradients, shapes and bad input.

``ℓ_f(θ, y; q) = softmax_f(θ; q) + D_f(y, q) − <θ, y>``; its gradient in θ is ``p* − y``.
Where ``D_f(y, q)`` has infinite terms (``y_j = 0`` with ``f(0) = +∞``: reverse KL, α ≤ 0), those
terms are dropped: the value is shifted by a constant in θ, the gradient stays exact.

As in ``test_operators.py``, one jitted function per divergence (``_standard``, ``_bad``) computes
what the tests compare, so that each divergence is compiled once per process.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads
from references import (
    CORE_DIVERGENCES,
    DIVERGENCES,
    MAIN_DIVERGENCES,
    Q_MODES,
    jit_call,
    ref_generator,
    ref_loss,
    ref_q,
    ref_solve,
)

import fdiv

PROPERTY = settings(max_examples=10, deadline=None)
B, K = 8, 6
# Probabilities are compared with 1e-5: issue 3 asks for sums within 1e-5 and a τ within
# 1e-6 (1 + |τ|); the solvers' own τ accuracy is checked precisely in test_solvers.py.
P_TOL = 1e-5
TEMPERATURE = 3.0


@pytest.fixture(scope="module", params=MAIN_DIVERGENCES)
def divergence(request):
    """Module-scoped, so that pytest runs all the tests of one divergence together (on one xdist
    worker, mostly) and each divergence's compiled functions are built once."""
    return request.param


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _batch(seed=0, scale=2.0, shape=(B, K)):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _soft_labels(seed, shape=(B, K), zeros=False):
    y = np.random.default_rng(seed).dirichlet(np.ones(shape[-1]), size=shape[:-1])
    if zeros:
        y[..., ::3] = 0.0
        y = y / y.sum(-1, keepdims=True)
    return y.astype(np.float32)


def _entropy(y):
    y = _np(y)
    return -np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0).sum(-1)


THETA = _batch(20)
Y_FULL = _soft_labels(21)
Y_ZEROS = _soft_labels(22, zeros=True)
LABELS = np.random.default_rng(23).integers(0, K, size=B)
ONE_HOT = np.eye(K, dtype=np.float32)[LABELS]
Q_ARRAY = np.random.default_rng(24).uniform(0.1, 1.0, size=(B, K)).astype(np.float32)
WEIGHTS = np.random.default_rng(25).uniform(size=B).astype(np.float32)
X_BINARY = _batch(26, scale=3.0).ravel()
Y_BINARY = np.random.default_rng(27).uniform(size=X_BINARY.shape).astype(np.float32)
Y_BINARY[:3] = [0.0, 1.0, 1.0]


def _standard_run(
    divergence, theta, y_full, y_zeros, labels, one_hot, q_array, weights, x_binary, y_binary
):
    """Losses and gradients on the standard inputs (traced inside ``_results``)."""
    loss, loss_int = fdiv.fdiv_loss, fdiv.fdiv_loss_with_integer_labels
    out = {}
    for name, q in [("uniform", "uniform"), ("unit", "unit"), ("array", q_array)]:
        out[f"soft_full/{name}"] = loss(theta, y_full, divergence, q=q)
        out[f"soft_zeros/{name}"] = loss(theta, y_zeros, divergence, q=q)
    for q in Q_MODES:
        out[f"int/{q}"] = loss_int(theta, labels, divergence, q=q)
        out[f"one_hot/{q}"] = loss(theta, one_hot, divergence, q=q)
        out[f"binary/{q}"] = fdiv.fdiv_binary_loss(x_binary, y_binary, divergence, q=q)
    out["binary_two/uniform"] = loss(
        jnp.stack([x_binary, jnp.zeros_like(x_binary)], -1),
        jnp.stack([y_binary, 1 - y_binary], -1),
        divergence,
    )
    p_t = fdiv.f_softargmax(theta, divergence, temperature=TEMPERATURE)
    out["temperature/at_optimum"] = loss(theta, p_t, divergence, temperature=TEMPERATURE)
    out["temperature/y"] = loss(theta, y_full, divergence, temperature=TEMPERATURE)
    out["int/None"] = loss_int(theta, labels, divergence)
    out["grad_soft/uniform"] = jax.grad(lambda t: loss(t, y_zeros, divergence).sum())(theta)
    out["grad_int/unit"] = jax.grad(
        lambda t: (loss_int(t, labels, divergence, q="unit") * weights).sum()
    )(theta)
    out["grad_soft/array"], out["grad_q/array"] = jax.grad(
        lambda t, qq: loss(t, y_full, divergence, q=qq).sum(), argnums=(0, 1)
    )(theta, q_array)
    out["grad_binary/uniform"] = jax.grad(
        lambda x: fdiv.fdiv_binary_loss(x, y_binary, divergence).sum()
    )(x_binary)
    return out


# ------------------------------------------------------------------------------------------------
# KL: parity with optax.


def test_kl_integer_labels_is_softmax_cross_entropy():
    expected = _np(optax.losses.softmax_cross_entropy_with_integer_labels(THETA, LABELS))
    for q in [None, "uniform", "unit", np.full(K, 3.7, np.float32)]:
        loss = fdiv.fdiv_loss_with_integer_labels(THETA, LABELS, "kl", q=q)  # eager
        assert loss.shape == (B,) and loss.dtype == jnp.float32
        np.testing.assert_allclose(_np(loss), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_standard("kl")["int/unit"], expected, rtol=1e-5, atol=1e-5)


def test_kl_one_hot_labels_is_softmax_cross_entropy():
    expected = _np(optax.losses.softmax_cross_entropy(THETA, ONE_HOT))
    for q in Q_MODES:
        np.testing.assert_allclose(_standard("kl")[f"one_hot/{q}"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        _np(fdiv.fdiv_loss(THETA, ONE_HOT, "kl")), expected, rtol=1e-5, atol=1e-5
    )


def test_kl_with_where_is_optax_with_where():
    mask = np.random.default_rng(5).uniform(size=(B, K)) > 0.3
    mask[np.arange(B), LABELS] = True
    loss = fdiv.fdiv_loss_with_integer_labels(THETA, LABELS, "kl", where=mask)
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(THETA, LABELS, where=mask)
    np.testing.assert_allclose(_np(loss), _np(expected), rtol=1e-5, atol=1e-5)
    loss = fdiv.fdiv_loss(THETA, ONE_HOT, "kl", where=mask)
    expected = optax.losses.softmax_cross_entropy(THETA, ONE_HOT, where=mask)
    np.testing.assert_allclose(_np(loss), _np(expected), rtol=1e-5, atol=1e-5)


def test_kl_soft_labels_is_cross_entropy_minus_entropy():
    """The FY loss keeps D_f(y, q): it is KL(y || softmax(θ + log q)), whatever the scale of q."""
    out = _standard("kl")
    for y, name in [(Y_FULL, "soft_full"), (Y_ZEROS, "soft_zeros")]:
        expected = _np(optax.losses.softmax_cross_entropy(THETA, y)) - _entropy(y)
        for q in Q_MODES:
            np.testing.assert_allclose(out[f"{name}/{q}"], expected, rtol=1e-5, atol=2e-5)
        shifted = THETA + np.log(Q_ARRAY)
        expected = _np(optax.losses.softmax_cross_entropy(shifted, y)) - _entropy(y)
        np.testing.assert_allclose(out[f"{name}/array"], expected, rtol=1e-5, atol=2e-5)
    scaled = fdiv.fdiv_loss(THETA, Y_FULL, "kl", q=np.full(K, 0.01, np.float32))
    np.testing.assert_allclose(_np(scaled), out["soft_full/unit"], rtol=1e-5, atol=2e-5)


def test_kl_label_smoothing_composes():
    y = optax.smooth_labels(jnp.asarray(ONE_HOT), 0.1)
    expected = _np(optax.losses.softmax_cross_entropy(THETA, y)) - _entropy(y)
    np.testing.assert_allclose(_np(fdiv.fdiv_loss(THETA, y, "kl")), expected, atol=2e-5)


# ------------------------------------------------------------------------------------------------
# Every divergence against the reference.


@pytest.mark.parametrize("q", [*Q_MODES, "array"])
def test_loss_matches_reference(divergence, q):
    out = _standard(divergence)
    q_ref = Q_ARRAY if q == "array" else q
    for y, name in [(Y_FULL, "soft_full"), (Y_ZEROS, "soft_zeros")]:
        loss = out[f"{name}/{q}"]
        assert loss.shape == (B,) and loss.dtype == np.float32
        np.testing.assert_allclose(
            loss, ref_loss(THETA, y, divergence, q_ref), rtol=1e-5, atol=2e-5, err_msg=name
        )


@pytest.mark.parametrize("q", Q_MODES)
def test_integer_labels_equal_one_hot(divergence, q):
    out = _standard(divergence)
    loss = out[f"int/{q}"]
    assert loss.shape == (B,) and loss.dtype == np.float32 and np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, out[f"one_hot/{q}"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss(THETA, ONE_HOT, divergence, q), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(out["int/None"], out["int/uniform"], rtol=1e-6)  # the default


@pytest.mark.parametrize("divergence", ["reverse_kl"], indirect=True)
def test_infinite_divergence_terms_are_dropped(divergence):
    """f(0) = +∞: D_f(e_y, q) is infinite; its y_j = 0 terms are dropped, the gradient is exact."""
    out = _standard(divergence)
    gen = ref_generator(divergence)
    for q in Q_MODES:
        qa = ref_q(q, THETA)
        sol = ref_solve(THETA, divergence, q)
        kept = np.where(ONE_HOT > 0, qa * gen.f(np.maximum(ONE_HOT / qa, 1e-30)), 0.0).sum(-1)
        expected = sol.value + kept - (THETA * ONE_HOT).sum(-1)
        np.testing.assert_allclose(out[f"int/{q}"], expected, rtol=1e-5, atol=2e-5)
    sol = ref_solve(THETA, divergence, "unit")
    np.testing.assert_allclose(
        out["grad_int/unit"], WEIGHTS[:, None] * (sol.p - ONE_HOT), atol=P_TOL
    )


# ------------------------------------------------------------------------------------------------
# Gradients.


def test_gradient_is_p_minus_y(divergence):
    out = _standard(divergence)
    p = ref_solve(THETA, divergence, "uniform").p
    np.testing.assert_allclose(out["grad_soft/uniform"], p - Y_ZEROS, atol=P_TOL)
    p = ref_solve(THETA, divergence, "unit").p
    np.testing.assert_allclose(out["grad_int/unit"], WEIGHTS[:, None] * (p - ONE_HOT), atol=P_TOL)
    p = ref_solve(THETA, divergence, Q_ARRAY).p
    np.testing.assert_allclose(out["grad_soft/array"], p - Y_FULL, atol=P_TOL)


def test_gradient_wrt_q(divergence):
    """∂ℓ/∂q_j = f*(θ_j − τ*) + f(y_j/q_j) − (y_j/q_j) f'(y_j/q_j)."""
    gen = ref_generator(divergence)
    tau = ref_solve(THETA, divergence, Q_ARRAY).tau
    u = _np(Y_FULL) / _np(Q_ARRAY)
    expected = gen.conj(_np(THETA) - tau[:, None]) + gen.f(u) - u * gen.fp(u)
    np.testing.assert_allclose(
        _standard(divergence)["grad_q/array"], expected, rtol=1e-5, atol=2e-5
    )


@pytest.mark.parametrize("divergence", CORE_DIVERGENCES, indirect=True)
def test_check_grads_float64(divergence, x64):
    rng = np.random.default_rng(3)
    theta = jnp.asarray(rng.normal(size=(3, 5)) * 1.5, jnp.float64)
    y = jnp.asarray(rng.dirichlet(np.ones(5), size=3), jnp.float64)
    q = jnp.asarray(rng.uniform(0.2, 1.5, size=(3, 5)), jnp.float64)
    labels = jnp.asarray([0, 3, 4])

    def loss(t, qq):
        return fdiv.fdiv_loss(t, y, divergence, q=qq) + fdiv.fdiv_loss_with_integer_labels(
            t, labels, divergence, q=qq
        )

    assert fdiv.fdiv_loss(theta, y, divergence, q=q).dtype == jnp.float64
    check_grads(jax.jit(loss), (theta, q), order=1, modes=("rev",))


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis).


@st.composite
def rows_and_labels(draw):
    theta = draw(
        hnp.arrays(
            np.float32, (B, K), elements=st.floats(-10.0, 10.0, width=32, allow_subnormal=False)
        )
    )
    weights = draw(hnp.arrays(np.float64, (B, K), elements=st.floats(0.0, 1.0)))
    weights[:, 0] += 1e-3  # keep every row a distribution
    if draw(st.booleans()):
        weights = (weights == weights.max(-1, keepdims=True)).astype(np.float64)  # one-hot
    y = (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
    # Subnormal targets are outside the contract (fdiv_loss's docstring: XLA:CPU flushes them to
    # 0, which changes D_f(y, q) where f(0) = ∞); hypothesis found 2.4e-39 with reverse KL.
    y[y < np.finfo(np.float32).tiny] = 0.0
    return theta, y


def _loss_and_p(theta, y, divergence, q):
    p = fdiv.f_softargmax(theta, divergence, q=q)
    return fdiv.fdiv_loss(theta, y, divergence, q=q), fdiv.fdiv_loss(theta, p, divergence, q=q)


@PROPERTY
@given(data=rows_and_labels(), divergence=st.sampled_from(DIVERGENCES), q=st.sampled_from(Q_MODES))
def test_property_nonnegative_and_zero_at_optimum(data, divergence, q):
    """ℓ(θ, y) ≥ 0, ℓ(θ, p*) = 0, and ℓ equals the reference."""
    theta, y = data
    loss, at_optimum = (_np(a) for a in jit_call(_loss_and_p, theta, y, divergence=divergence, q=q))
    tol = 1e-4 * (1.0 + np.abs(theta).max(-1) + K)
    # ℓ ≥ 0 needs D_f(y, q) < ∞; where f(0) = +∞ and y has zeros, the dropped terms shift it.
    finite = np.isfinite(ref_generator(divergence).f_at_zero) | np.all(y > 0, axis=-1)
    assert np.all(loss[finite] >= -tol[finite]), loss
    assert np.all(np.abs(at_optimum) <= tol), at_optimum
    np.testing.assert_allclose(loss, ref_loss(theta, y, divergence, q), rtol=1e-4, atol=tol.max())


def test_temperature(divergence):
    """Whatever the scaling convention, the loss with a temperature is ≥ 0 and 0 at p*(θ/T)."""
    out = _standard(divergence)
    tol = 1e-4 * (1.0 + np.abs(THETA).max(-1) + K) * TEMPERATURE
    assert np.all(np.abs(out["temperature/at_optimum"]) <= tol), out["temperature/at_optimum"]
    assert np.all(out["temperature/y"] > 0)


# ------------------------------------------------------------------------------------------------
# Transformations, shapes, axes and dtypes.


@pytest.mark.parametrize("divergence", ["kl", "chi2", "alpha:1.5"], indirect=True)
def test_jit_vmap_grad_compose(divergence):
    loss_int = functools.partial(fdiv.fdiv_loss_with_integer_labels, divergence=divergence)
    loss_soft = functools.partial(fdiv.fdiv_loss, divergence=divergence)
    expected = _standard(divergence)["int/uniform"]
    np.testing.assert_allclose(
        _np(jax.vmap(loss_int)(THETA, LABELS)), expected, rtol=1e-5, atol=1e-6
    )
    g = _np(jax.jit(jax.vmap(jax.grad(loss_soft)))(THETA, Y_ZEROS))
    np.testing.assert_allclose(g, _standard(divergence)["grad_soft/uniform"], atol=1e-6)
    # the gradient through a linear layer (the usual use)
    w = _batch(30, shape=(3, K))
    x = _batch(31, shape=(B, 3))
    gw = jax.jit(jax.grad(lambda ww: loss_int(x @ ww, LABELS).sum()))(w)
    p = ref_solve(x.astype(np.float64) @ w, divergence, "uniform").p
    np.testing.assert_allclose(_np(gw), _np(x).T @ (p - ONE_HOT), atol=1e-5)
    # second order: the Hessian of the loss is the Jacobian of the operator
    hessian = jax.jit(jax.hessian(lambda t: loss_soft(t, Y_FULL[0])))(THETA[0])
    jac = jax.jit(jax.jacrev(lambda t: fdiv.f_softargmax(t, divergence)))(THETA[0])
    np.testing.assert_allclose(_np(hessian), _np(jac), atol=1e-6)


@pytest.mark.parametrize(
    ("divergence", "axis"), [("alpha:1.5", 0), ("js", 1)], indirect=["divergence"]
)
def test_axis_equals_moving_the_axis(divergence, axis):
    x = _batch(10, shape=(5, 4, 3))
    k = x.shape[axis]
    moved = np.moveaxis(x, axis, -1)
    y_moved = _soft_labels(11, moved.shape)
    labels = np.random.default_rng(12).integers(0, k, size=moved.shape[:-1])

    def run(x, y, moved, y_moved, labels):
        return (
            fdiv.fdiv_loss(x, y, divergence, axis=axis),
            fdiv.fdiv_loss(moved, y_moved, divergence),
            fdiv.fdiv_loss_with_integer_labels(x, labels, divergence, axis=axis),
            fdiv.fdiv_loss_with_integer_labels(moved, labels, divergence),
        )

    a, b, c, d = jax.jit(run)(x, np.moveaxis(y_moved, -1, axis), moved, y_moved, labels)
    np.testing.assert_allclose(_np(a), _np(b), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(c), _np(d), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        _np(fdiv.fdiv_loss_with_integer_labels(x, labels, "kl", axis=axis)),
        _np(optax.losses.softmax_cross_entropy_with_integer_labels(x, labels, axis=axis)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_several_leading_dims():
    x = _batch(13, shape=(2, 4, K))
    labels = np.random.default_rng(13).integers(0, K, size=(2, 4))
    loss = jit_call(fdiv.fdiv_loss_with_integer_labels, x, labels, divergence="alpha:1.5")
    assert loss.shape == (2, 4)
    flat = jit_call(
        fdiv.fdiv_loss_with_integer_labels,
        x.reshape(-1, K),
        labels.reshape(-1),
        divergence="alpha:1.5",
    )
    np.testing.assert_allclose(_np(loss).reshape(-1), _np(flat), rtol=1e-6, atol=1e-6)
    single = jit_call(
        fdiv.fdiv_loss_with_integer_labels, x[0, 0], labels[0, 0], divergence="alpha:1.5"
    )
    assert single.shape == ()
    np.testing.assert_allclose(_np(single), _np(loss)[0, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "alpha:1.5"], indirect=True)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision(divergence, dtype):
    x = jnp.asarray(_batch(14, scale=4.0), dtype)

    def run(x, labels, y):
        x32 = x.astype(jnp.float32)
        out = {}
        for q in Q_MODES:
            out[f"int/{q}"] = fdiv.fdiv_loss_with_integer_labels(x, labels, divergence, q=q)
            out[f"int32/{q}"] = fdiv.fdiv_loss_with_integer_labels(x32, labels, divergence, q=q)
        out["soft"] = fdiv.fdiv_loss(x, y.astype(dtype), divergence)
        out["grad"] = jax.grad(
            lambda t: fdiv.fdiv_loss_with_integer_labels(t, labels, divergence).sum()
        )(x)
        out["p32"] = fdiv.f_softargmax(x32, divergence)
        return out

    out = jax.jit(run)(x, LABELS, Y_FULL)
    for q in Q_MODES:
        assert out[f"int/{q}"].dtype == jnp.float32
        np.testing.assert_allclose(
            _np(out[f"int/{q}"]), _np(out[f"int32/{q}"]), rtol=1e-4, atol=1e-4
        )
    assert out["soft"].dtype == jnp.float32 and np.all(np.isfinite(_np(out["soft"])))
    assert out["grad"].dtype == dtype and np.all(np.isfinite(_np(out["grad"])))
    np.testing.assert_allclose(_np(out["grad"]), _np(out["p32"]) - ONE_HOT, atol=1e-2)


# ------------------------------------------------------------------------------------------------
# Bad input: one batch, one case per row (see test_operators.py).

BAD_X = _batch(40)
BAD_X[1, 4:] = -np.inf  # e.g. a padded vocabulary; no label mass there
BAD_X[2, 2] = np.nan
BAD_X[3] = [1e9, -1e9, 0.0, 1e9, -1e9, 5.0]
BAD_X[4] = [0.0, 1e9, 3.0, -2.0, -1e9, 1.0]
BAD_MASK = np.ones(BAD_X.shape, bool)
BAD_MASK[5] = False  # fully masked
BAD_MASK[6, [1, 4]] = False
BAD_LABELS = np.array([0, 1, 0, 0, 2, 0, 3, 5])
BAD_ONE_HOT = np.eye(K, dtype=np.float32)[BAD_LABELS]
BAD_SOFT = _soft_labels(41)
BAD_SOFT[1, 4:] = 0.0
BAD_SOFT[6, [1, 4]] = 0.0
BAD_SOFT /= BAD_SOFT.sum(-1, keepdims=True)
BAD_Q = np.array([0.3, 0.2, 0.0, 0.1, 0.0, 0.4], np.float32)  # zeros; no label mass there
Q_ZERO_LABELS = np.array([0, 1, 3, 5, 0, 1, 3, 5])
CLEAN = [0, 1, 3, 4, 6, 7]


def _rows_and_grad(fn, x):
    """Per-example losses and the gradient of their sum, from one forward pass."""
    loss, vjp = jax.vjp(fn, x)
    return loss, vjp(jnp.ones_like(loss))[0]


def _bad_run(divergence, x, mask, labels, one_hot, soft, q_zeros, q_labels, theta):
    """The bad-input batch (traced inside ``_results``)."""
    loss, loss_int = fdiv.fdiv_loss, fdiv.fdiv_loss_with_integer_labels
    out = {}
    for q in Q_MODES:
        out[f"int/{q}"], out[f"grad_int/{q}"] = _rows_and_grad(
            lambda t, q=q: loss_int(t, labels, divergence, q=q, where=mask), x
        )
    out["soft"], out["grad_soft"] = _rows_and_grad(
        lambda t: loss(t, soft, divergence, where=mask), x
    )
    c = jnp.array(CLEAN)
    out["int_clean"] = loss_int(x[c], labels[c], divergence, where=mask[c])
    out["q_zeros"], out["grad_q_zeros"] = _rows_and_grad(
        lambda t: loss_int(t, q_labels, divergence, q=q_zeros), theta
    )
    return out


@functools.cache
def _results(divergence):
    """Everything the per-divergence tests look at, from one compiled function per divergence."""

    def run(standard_args, bad_args):
        return {
            "standard": _standard_run(divergence, *standard_args),
            "bad": _bad_run(divergence, *bad_args),
        }

    out = jax.jit(run)(
        (THETA, Y_FULL, Y_ZEROS, LABELS, ONE_HOT, Q_ARRAY, WEIGHTS, X_BINARY, Y_BINARY),
        (BAD_X, BAD_MASK, BAD_LABELS, BAD_ONE_HOT, BAD_SOFT, BAD_Q, Q_ZERO_LABELS, THETA),
    )
    return {
        "standard": {k: np.asarray(v) for k, v in out["standard"].items()},
        "bad": {k: np.asarray(v, np.float64) for k, v in out["bad"].items()},
    }


def _standard(divergence):
    return _results(divergence)["standard"]


def _bad(divergence):
    return _results(divergence)["bad"]


def test_where_masks_classes(divergence):
    out = _bad(divergence)
    row, keep = 6, BAD_MASK[6]
    for q in Q_MODES:
        expected = ref_loss(BAD_X[row], BAD_ONE_HOT[row], divergence, q, where=keep)
        np.testing.assert_allclose(out[f"int/{q}"][row], expected, rtol=1e-5, atol=2e-5)
        np.testing.assert_array_equal(out[f"grad_int/{q}"][row][~keep], 0.0)
    expected = ref_loss(BAD_X[row], BAD_SOFT[row], divergence, "uniform", where=keep)
    np.testing.assert_allclose(out["soft"][row], expected, rtol=1e-5, atol=2e-5)
    p = ref_solve(BAD_X[row], divergence, "uniform", where=keep).p
    np.testing.assert_allclose(out["grad_soft"][row], p - BAD_SOFT[row], atol=P_TOL)


def test_fully_masked_row(divergence):
    """A fully masked row: loss 0 and zero gradient, and nothing leaks into the other rows."""
    out = _bad(divergence)
    for key in ["int/uniform", "int/unit", "soft"]:
        assert out[key][5] == 0.0, (key, out[key][5])
    for key in ["grad_int/uniform", "grad_int/unit", "grad_soft"]:
        np.testing.assert_array_equal(out[key][5], 0.0, err_msg=key)
        assert np.all(np.isfinite(out[key][[0, 3, 4, 6, 7]])), key


def test_nan_stays_in_its_row(divergence):
    out = _bad(divergence)
    for key in ["int/uniform", "int/unit", "soft"]:
        assert np.isnan(out[key][2]), (key, out[key][2])
    np.testing.assert_allclose(out["int/uniform"][CLEAN], out["int_clean"], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(out["grad_soft"][[0, 3, 4, 6, 7]]))


def test_huge_logits(divergence):
    """Logits of ±1e9: finite, accurate losses (the loss is computed relative to the row max, so
    a loss of 0.7 is not rounded away next to 1e9) and gradients p − y.

    The float64 reference is computed relative to the row max too (unshifted, a τ near 1e9 has an
    ulp of 1.2e-7). Where f(0) = +∞ (reverse KL) the dropped infinite terms leave a loss that is
    negative for these rows (−13.8 and −84.7 for row 3), as documented.
    """
    out = _bad(divergence)
    x = BAD_X[[3, 4]]
    for q in Q_MODES:
        loss = out[f"int/{q}"][[3, 4]]
        assert np.all(np.isfinite(loss)), loss
        if np.isfinite(ref_generator(divergence).f_at_zero):
            assert np.all(loss >= 0), loss
        expected = ref_loss(x, BAD_ONE_HOT[[3, 4]], divergence, q)
        np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=2e-5, err_msg=q)
        p = ref_solve(x, divergence, q).p
        np.testing.assert_allclose(
            out[f"grad_int/{q}"][[3, 4]], p - BAD_ONE_HOT[[3, 4]], atol=1e-5, err_msg=q
        )


def test_minus_inf_logits(divergence):
    """−inf logits (e.g. a padded vocabulary) with no label mass: finite loss, gradient p − y."""
    out = _bad(divergence)
    for q in Q_MODES:
        assert np.isfinite(out[f"int/{q}"][1]), (q, out[f"int/{q}"][1])
        grad = out[f"grad_int/{q}"][1]
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[4:], 0.0)
        np.testing.assert_allclose(grad.sum(), 0.0, atol=P_TOL)  # p − y sums to 0
    # with unit q the reference does not depend on whether −inf classes are counted
    p = ref_solve(BAD_X[1], divergence, "unit").p
    np.testing.assert_allclose(out["grad_int/unit"][1], p - BAD_ONE_HOT[1], atol=P_TOL)
    expected = ref_loss(
        BAD_X[1], BAD_ONE_HOT[1], divergence, "unit", where=BAD_MASK[1] & np.isfinite(BAD_X[1])
    )
    if np.isfinite(ref_generator(divergence).f_at_zero):
        np.testing.assert_allclose(out["int/unit"][1], expected, rtol=1e-5, atol=2e-5)


def test_q_with_zeros(divergence):
    out = _bad(divergence)
    one_hot = np.eye(K)[Q_ZERO_LABELS]
    np.testing.assert_allclose(
        out["q_zeros"], ref_loss(THETA, one_hot, divergence, BAD_Q), rtol=1e-5, atol=2e-5
    )
    p = ref_solve(THETA, divergence, BAD_Q).p
    np.testing.assert_allclose(out["grad_q_zeros"], p - one_hot, atol=P_TOL)
    np.testing.assert_array_equal(out["grad_q_zeros"][:, [2, 4]], 0.0)


def test_negative_q_raises():
    q = jnp.array([0.5, -0.1, 0.6])
    with pytest.raises(ValueError):
        fdiv.fdiv_loss(jnp.zeros((2, 3)), jnp.full((2, 3), 1 / 3), "kl", q=q)
    with pytest.raises(ValueError):
        fdiv.fdiv_loss_with_integer_labels(jnp.zeros((2, 3)), jnp.array([0, 1]), "alpha:1.5", q=q)


@pytest.mark.parametrize("divergence", ["kl", "alpha:1.5"], indirect=True)
def test_out_of_range_integer_labels(divergence):
    """Concrete labels: ValueError. Under jit: NaN loss for that example, the others exact."""
    for bad in [K, K + 3, -1]:
        labels = LABELS.copy()
        labels[1] = bad
        with pytest.raises(ValueError):
            fdiv.fdiv_loss_with_integer_labels(THETA, labels, divergence)
        with pytest.raises(ValueError):
            fdiv.fdiv_loss_with_integer_labels(THETA, jnp.asarray(labels), divergence)
    labels = LABELS.copy()
    labels[1] = K
    loss = _np(jit_call(fdiv.fdiv_loss_with_integer_labels, THETA, labels, divergence=divergence))
    assert np.isnan(loss[1])
    others = np.arange(B) != 1
    np.testing.assert_allclose(
        loss[others], _standard(divergence)["int/uniform"][others], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("alpha", ["1.0001", "0.9999"])
def test_alpha_near_one_loss_is_close_to_kl(alpha):
    def run(theta, labels, y):
        return [
            [fdiv.fdiv_loss_with_integer_labels(theta, labels, d, q=q) for q in Q_MODES]
            + [fdiv.fdiv_loss(theta, y, d, q=q) for q in Q_MODES]
            for d in ["kl", f"alpha:{alpha}"]
        ]

    kl, near = jax.jit(run)(THETA, LABELS, Y_ZEROS)
    for a, b in zip(kl, near, strict=True):
        np.testing.assert_allclose(_np(b), _np(a), rtol=2e-3, atol=2e-3)
    for q, b in zip(Q_MODES, near[2:], strict=True):
        np.testing.assert_allclose(
            _np(b), ref_loss(THETA, Y_ZEROS, f"alpha:{alpha}", q), rtol=1e-5, atol=2e-5
        )


# ------------------------------------------------------------------------------------------------
# Binary loss.


def test_binary_kl_is_sigmoid_cross_entropy():
    hard = (Y_BINARY > 0.5).astype(np.float32)
    np.testing.assert_allclose(
        _np(fdiv.fdiv_binary_loss(X_BINARY, hard, "kl")),
        _np(optax.losses.sigmoid_binary_cross_entropy(X_BINARY, hard)),
        rtol=1e-5,
        atol=1e-5,
    )
    entropy = _entropy(np.stack([Y_BINARY, 1 - Y_BINARY], -1))
    for q in Q_MODES:
        np.testing.assert_allclose(
            _standard("kl")[f"binary/{q}"],
            _np(optax.losses.sigmoid_binary_cross_entropy(X_BINARY, Y_BINARY)) - entropy,
            rtol=1e-5,
            atol=1e-5,
        )


def test_binary_loss_is_two_class_loss(divergence):
    out = _standard(divergence)
    two_logits = np.stack([X_BINARY, np.zeros_like(X_BINARY)], -1)
    two_labels = np.stack([Y_BINARY, 1 - Y_BINARY], -1)
    for q in Q_MODES:
        loss = out[f"binary/{q}"]
        assert loss.shape == X_BINARY.shape and loss.dtype == np.float32
        np.testing.assert_allclose(
            loss, ref_loss(two_logits, two_labels, divergence, q), rtol=1e-5, atol=2e-5
        )
    np.testing.assert_allclose(
        out["binary/uniform"], out["binary_two/uniform"], rtol=1e-5, atol=1e-5
    )
    p = ref_solve(two_logits, divergence, "uniform").p[:, 0]
    np.testing.assert_allclose(out["grad_binary/uniform"], p - Y_BINARY, atol=P_TOL)
