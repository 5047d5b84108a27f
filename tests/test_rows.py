"""The row layout helpers: reductions in pieces and the CPU loop over blocks of rows.

Most test arrays are smaller than one block, so the blocked path is checked here against the
whole-array path for the operators, the losses and their derivatives, with blocks of a few
rows (the last one overlapping the one before).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fdiv
from fdiv import _rows


def _per_row(theta, q):
    return {"max": jnp.max(theta, axis=-1), "dot": jnp.sum(theta * q, axis=-1)}


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of 4 rows for rows of 64 classes."""
    monkeypatch.setattr(_rows, "_BLOCK_ELEMENTS", 4 * 64)


@pytest.mark.parametrize("q_shape", [(1, 1, 64), (1, 1, 1), (3, 7, 1), (3, 7, 64), (1, 7, 64)])
def test_map_row_blocks_matches_the_whole_array(tiny_blocks, q_shape):
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.normal(size=(3, 7, 64)), jnp.float32)
    q = jnp.asarray(rng.uniform(size=q_shape), jnp.float32)
    seen = []

    def fn(theta, q):
        seen.append(theta.shape)
        return _per_row(theta, q)

    out = jax.jit(lambda t, q: _rows.map_row_blocks(fn, t, q))(theta, q)
    want = _per_row(theta, q)
    for key in want:
        assert out[key].shape == (3, 7)
        np.testing.assert_allclose(out[key], want[key], rtol=1e-6)
    if q_shape != (1, 7, 64):  # a partly broadcast q is one block
        assert (4, 64) in seen


def test_map_row_blocks_is_differentiable(tiny_blocks):
    rng = np.random.default_rng(1)
    theta = jnp.asarray(rng.normal(size=(21, 64)), jnp.float32)
    q = jnp.asarray(rng.uniform(size=(1, 64)), jnp.float32)

    def blocked(theta):
        return jnp.sum(_rows.map_row_blocks(_per_row, theta, q)["dot"] ** 2)

    def whole(theta):
        return jnp.sum(_per_row(theta, q)["dot"] ** 2)

    np.testing.assert_allclose(jax.grad(blocked)(theta), jax.grad(whole)(theta), rtol=1e-5)
    v = jnp.ones_like(theta)
    np.testing.assert_allclose(
        jax.jvp(jax.grad(blocked), (theta,), (v,))[1],
        jax.jvp(jax.grad(whole), (theta,), (v,))[1],
        rtol=1e-5,
    )


CASES = [("kl", "uniform"), ("alpha:1.5", "unit"), ("alpha:1.5", "uniform"), ("js", "unit")]
CASES += [("alpha:3", "uniform"), ("chi2", "array")]


@pytest.mark.parametrize(("divergence", "q"), CASES)
def test_blocked_operators_and_losses_match_the_whole_array(monkeypatch, divergence, q):
    """Blocks of 2 rows of 640 classes (segment maxima on, see root_finding) against one block;
    the 11 rows include a masked one, an empty one and ties."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(11, 640)).astype(np.float32) * 3.0
    x[3] = 0.0
    x[4, :5] = 7.0
    where = np.ones_like(x, bool)
    where[5, ::2] = False
    where[6] = False
    labels = jnp.asarray(rng.integers(0, 640, size=11))
    labels = labels.at[5].set(1)
    q_arg = jnp.asarray(rng.uniform(0.5, 2.0, size=(640,)), jnp.float32) if q == "array" else q

    def run():
        kw = dict(divergence=divergence, q=q_arg, where=where)
        loss = functools.partial(fdiv.fdiv_loss_with_integer_labels, **kw)

        def total(x):
            return jnp.sum(loss(x, labels))

        return {
            "p": fdiv.f_softargmax(x, **kw),
            "value": fdiv.f_softmax(x, **kw),
            "loss": loss(x, labels),
            "grad": jax.grad(total)(x),
            "hvp": jax.jvp(jax.grad(total), (jnp.asarray(x),), (jnp.ones_like(x),))[1],
        }

    whole = jax.jit(run)()
    monkeypatch.setattr(_rows, "_BLOCK_ELEMENTS", 2 * 640)
    blocked = jax.jit(run)()
    for key in whole:
        np.testing.assert_allclose(blocked[key], whole[key], rtol=2e-5, atol=2e-6, err_msg=key)
    assert np.all(np.isfinite(np.asarray(blocked["loss"])[[0, 1, 2, 3, 4, 7, 8, 9, 10]]))
    assert float(blocked["loss"][6]) == 0.0


@pytest.mark.parametrize("v", [32768, 32769, 131072, 3 * 65536])
def test_row_sum_in_pieces(v):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, v)), jnp.float32)
    np.testing.assert_allclose(_rows.row_sum(x), np.sum(np.asarray(x, np.float64), -1), atol=2e-3)


def test_kl_on_long_rows_runs_in_blocks_and_matches_cross_entropy(monkeypatch):
    """Rows longer than 32768 classes: KL goes through the blocked solver and the implicit
    derivative (shorter rows use the streaming log-sum-exp); both must be cross-entropy."""
    monkeypatch.setattr(_rows, "_BLOCK_ELEMENTS", 2 * 33000)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(5, 33000)) * 3.0, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 33000, size=5))

    def ours(x):
        return jnp.sum(fdiv.fdiv_loss_with_integer_labels(x, labels, "kl"))

    def ce(x):
        return jnp.sum(optax.losses.softmax_cross_entropy_with_integer_labels(x, labels))

    np.testing.assert_allclose(jax.jit(ours)(x), ce(x), rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.grad(ce)(x), atol=1e-7)
