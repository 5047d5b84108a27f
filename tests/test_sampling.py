"""fdiv.sampling: draws from sparse f-softargmax distributions never hit a zero-probability class,
and their frequencies match the probabilities (fixed seeds, so the statistical checks are
deterministic; the bounds are 5 standard deviations)."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
import fdiv.sampling

DRAWS = 40_000


def _draw_many(p_RxK: jax.Array, seed: int, draws: int = DRAWS) -> np.ndarray:
    """``draws`` samples of every row: int32[draws, R]."""
    tiled = jnp.broadcast_to(p_RxK, (draws, *p_RxK.shape))
    return np.asarray(jax.jit(fdiv.sample)(jax.random.key(seed), tiled))


def _check_frequencies(samples_NxR: np.ndarray, p_RxK: np.ndarray) -> None:
    n, rows = samples_NxR.shape
    k = p_RxK.shape[-1]
    for r in range(rows):
        counts = np.bincount(samples_NxR[:, r], minlength=k)
        assert counts.sum() == n
        freq = counts / n
        p = p_RxK[r] / p_RxK[r].sum()
        assert np.all(counts[p == 0] == 0), f"row {r}: a zero-probability class was sampled"
        bound = 5 * np.sqrt(p * (1 - p) / n) + 1e-12
        np.testing.assert_array_less(np.abs(freq - p), bound, err_msg=f"row {r}")


@pytest.mark.parametrize("divergence", ["alpha:1.5", "alpha:2"])
@pytest.mark.parametrize("q", ["unit", "uniform"])
def test_sparse_operator_samples_only_its_support(divergence, q):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 40)).astype(np.float32) * np.array([[1], [2], [4], [8], [1], [3]])
    if q == "uniform":
        logits = logits * 40 ** (float(divergence.split(":")[1]) - 1)  # same sparsity as unit q
    p = fdiv.f_softargmax(jnp.asarray(logits), divergence, q=q)
    zeros = np.asarray(p == 0)
    assert zeros.sum(-1).min() > 0, "the test needs sparse rows"
    samples = _draw_many(p, seed=sum(map(ord, divergence + q)))
    _check_frequencies(samples, np.asarray(p, np.float64))


def test_tiny_and_unnormalised_probabilities():
    # Zeros between tiny masses, a huge dynamic range, and rows that do not sum to one.
    p = np.zeros((3, 12), np.float32)
    p[0, [1, 5, 11]] = [1e-30, 1.0, 1e-30]
    p[1, [0, 2, 4, 6]] = [3.0, 1.0, 1.0, 3.0]  # sums to 8
    p[2, 7] = 1e-37  # a single tiny mass (normal float32; XLA flushes subnormals to zero)
    samples = _draw_many(jnp.asarray(p), seed=3)
    assert np.all(np.take_along_axis(p.T, samples, axis=0) > 0)
    assert np.all(samples[:, 0] == 5)  # 1e-30 is never drawn in 40k tries
    assert np.all(samples[:, 2] == 7)
    _check_frequencies(samples[:, 1:2], p[1:2].astype(np.float64))


def test_half_precision_and_axis():
    p = fdiv.f_softargmax(jnp.array([[2.0, 1.8, -1.0, 0.5, -3.0]]), "alpha:1.5", q="unit")
    p16 = p.astype(jnp.bfloat16)
    samples = np.asarray(fdiv.sample(jax.random.key(0), jnp.broadcast_to(p16, (5000, 5))))
    assert np.all(np.asarray(p16.astype(jnp.float32))[0, samples] > 0)
    # axis: classes on axis 0 give the same draws as the transposed input.
    probs = jnp.broadcast_to(p, (300, 5))
    a = fdiv.sample(jax.random.key(7), probs)
    b = fdiv.sample(jax.random.key(7), probs.T, axis=0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == jnp.int32 and a.shape == (300,)


def test_greedy_is_argmax_and_first_on_ties(rng):
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(8, 30)), jnp.float32))
    np.testing.assert_array_equal(fdiv.greedy(probs), np.argmax(np.asarray(probs), -1))
    np.testing.assert_array_equal(fdiv.greedy(jnp.array([0.0, 0.5, 0.5])), 1)
    np.testing.assert_array_equal(fdiv.greedy(probs.T, axis=0), np.argmax(np.asarray(probs), -1))
    sparse = fdiv.f_softargmax(jnp.array([[0.0, 3.0, 1.0, -2.0]]), "alpha:2", q="unit")
    np.testing.assert_array_equal(fdiv.greedy(sparse), [1])


@pytest.mark.parametrize("fn", [fdiv.greedy, lambda p: fdiv.sample(jax.random.key(0), p)])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="positive probability"):
        fn(jnp.zeros((2, 3)).at[0, 1].set(1.0))
    with pytest.raises(ValueError, match="non-negative"):
        fn(jnp.array([0.5, -0.1, 0.6]))
    with pytest.raises(ValueError, match="non-negative"):
        fn(jnp.array([0.5, jnp.nan, 0.5]))
    with pytest.raises(ValueError, match="floating point"):
        fn(jnp.array([0, 1, 0]))
    # Under jit the values are unknown: an empty or NaN row gives -1, the others are unaffected.
    p = jnp.array([[0.0, 0.0, 0.0], [jnp.nan] * 3, [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(jax.jit(fn)(p), [-1, -1, 1])


def test_docstring_examples():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(fdiv.sampling, optionflags=flags)
    assert result.attempted > 0 and result.failed == 0
