"""fdiv.metrics against float64 NumPy references written from the definitions, and closed forms."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
import fdiv.metrics

METRICS_WITH_LABELS = {
    "epsilon_cross_entropy": fdiv.epsilon_cross_entropy,
    "jensen_shannon_to_label": fdiv.jensen_shannon_to_label,
    "sparsemax_score": fdiv.sparsemax_score,
}


def _kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(a ‖ b) along the last axis, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * np.log(a / b), 0.0)
    return terms.sum(-1)


def reference(name: str, p: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The metric from its definition, in float64 (classes last, p normalised)."""
    p = np.asarray(p, np.float64)
    k = p.shape[-1]
    one_hot = np.eye(k)[y]
    p_y = np.take_along_axis(p, y[..., None], -1)[..., 0]
    if name == "epsilon_cross_entropy":
        mixed = (p + eps) / (p.sum(-1, keepdims=True) + k * eps)
        return -np.log(np.take_along_axis(mixed, y[..., None], -1)[..., 0])
    if name == "jensen_shannon_to_label":
        m = (p + one_hot) / 2
        return 0.5 * _kl(p, m) + 0.5 * _kl(one_hot, m)
    if name == "sparsemax_score":
        return 1 - (0.5 * (p**2).sum(-1) - p_y + 0.5)
    raise ValueError(name)


def random_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Dense and sparse rows: Dirichlet draws, about half the rows with half their classes
    zeroed (the top class is always kept), renormalised."""
    p = rng.dirichlet(np.full(shape[-1], 0.5), size=shape[:-1])
    sparse_row = rng.random((*shape[:-1], 1)) < 0.5
    zero = sparse_row & (rng.random(shape) < 0.5) & (p < p.max(-1, keepdims=True))
    p = np.where(zero, 0.0, p)
    return p / p.sum(-1, keepdims=True)


@pytest.fixture
def batch(rng):
    probs = random_probs(rng, (4, 6, 9))
    labels = rng.integers(0, 9, size=(4, 6))
    # Make sure some labels land off the support and some on the top class.
    labels[0] = np.argmax(probs[0], -1)
    labels[1] = np.argmin(probs[1], -1)
    assert (np.take_along_axis(probs, labels[..., None], -1) == 0).any()
    return probs, labels


@pytest.mark.parametrize("name", list(METRICS_WITH_LABELS))
def test_float64_matches_reference(name, batch, x64):
    probs, labels = batch
    got = METRICS_WITH_LABELS[name](jnp.asarray(probs), jnp.asarray(labels))
    assert got.dtype == jnp.float64 and got.shape == labels.shape
    np.testing.assert_allclose(got, reference(name, probs, labels), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(METRICS_WITH_LABELS))
def test_float32_and_half_precision(name, batch):
    probs, labels = batch
    expected = reference(name, probs, labels)
    got32 = METRICS_WITH_LABELS[name](jnp.asarray(probs, jnp.float32), labels)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(got32, expected, rtol=2e-5, atol=2e-6)
    half = jnp.asarray(probs, jnp.bfloat16)
    got16 = METRICS_WITH_LABELS[name](half, labels)
    assert got16.dtype == jnp.float32  # computed in float32 at least
    expected16 = reference(name, np.asarray(half.astype(jnp.float32)), labels)
    np.testing.assert_allclose(got16, expected16, rtol=1e-5, atol=1e-5)


def test_support_size_matches_count(batch):
    probs, _ = batch
    got = fdiv.support_size(jnp.asarray(probs, jnp.float32))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, (probs > 0).sum(-1))


def test_closed_forms():
    k = 5
    labels = jnp.arange(k)
    correct = jnp.eye(k)  # p = e_y
    wrong = jnp.roll(jnp.eye(k), 1, axis=1)  # one-hot on another class
    uniform = jnp.full((k, k), 1.0 / k)
    js, score = fdiv.jensen_shannon_to_label, fdiv.sparsemax_score
    np.testing.assert_allclose(js(correct, labels), 0.0, atol=1e-7)
    np.testing.assert_allclose(score(correct, labels), 1.0, atol=1e-7)
    np.testing.assert_allclose(js(wrong, labels), np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(score(wrong, labels), 0.0, atol=1e-7)
    np.testing.assert_allclose(score(uniform, labels), 0.5 + 0.5 / k, rtol=1e-6)
    # ε-cross-entropy: about 0 for a perfect p, about −log ε when p_y = 0, log k for uniform p.
    eps = 1e-6
    ce = fdiv.epsilon_cross_entropy
    np.testing.assert_allclose(ce(correct, labels), np.log((1 + k * eps) / (1 + eps)), atol=1e-6)
    np.testing.assert_allclose(ce(wrong, labels), np.log((1 + k * eps) / eps), rtol=1e-6)
    np.testing.assert_allclose(ce(uniform, labels), np.log(k), rtol=1e-5)
    np.testing.assert_array_equal(fdiv.support_size(correct), 1)
    np.testing.assert_array_equal(fdiv.support_size(uniform), k)


def test_epsilon_perplexity_of_softmax_is_the_perplexity(rng):
    # The ε-mixing changes −log p_y by about ε/p_y − kε: nothing while p_y ≫ ε.
    logits = rng.normal(size=(64, 50)).astype(np.float32)
    labels = rng.integers(0, 50, 64)
    probs = jax.nn.softmax(logits)
    nll = np.asarray(
        jax.vmap(lambda lo, y: -jax.nn.log_softmax(lo)[y])(jnp.asarray(logits), labels)
    )
    eps_ppl = np.exp(np.mean(fdiv.epsilon_cross_entropy(probs, labels, epsilon=1e-6)))
    np.testing.assert_allclose(eps_ppl, np.exp(nll.mean()), rtol=1e-4)


def test_sparse_operator_missing_the_target_stays_finite():
    logits = jnp.array([[4.0, 3.5, -3.0, -5.0]])
    for divergence in ("alpha:1.5", "alpha:2", "chi2"):
        p = fdiv.f_softargmax(logits, divergence, q="unit")
        assert p[0, 3] == 0
        y = jnp.array([3])
        assert np.isfinite(fdiv.epsilon_cross_entropy(p, y)).all()
        np.testing.assert_allclose(fdiv.jensen_shannon_to_label(p, y), np.log(2.0), rtol=1e-5)
        assert 0 <= float(fdiv.sparsemax_score(p, y)[0]) < 1
        assert int(fdiv.support_size(p)[0]) < 4


@pytest.mark.parametrize("name", list(METRICS_WITH_LABELS))
def test_axis_and_where(name, batch):
    probs, labels = batch
    fn = METRICS_WITH_LABELS[name]
    moved = np.moveaxis(probs, -1, 1)  # classes on axis 1: [4, 9, 6]
    np.testing.assert_allclose(fn(moved, labels, axis=1), fn(probs, labels), rtol=1e-6)
    # where: the masked classes behave as if they were not there at all.
    keep = np.ones(9, bool)
    keep[[2, 5]] = False
    masked = np.where(keep, probs, 0.3)  # values under the mask must not matter
    labels_kept = np.where(keep[labels], labels, 0)
    sub = probs[..., keep]
    sub_labels = np.searchsorted(np.flatnonzero(keep), labels_kept)
    got = fn(masked, labels_kept, where=keep)
    np.testing.assert_allclose(got, reference(name, sub, sub_labels), rtol=2e-5, atol=2e-6)
    support = fdiv.support_size(masked, where=keep)
    np.testing.assert_array_equal(support, (sub > 0).sum(-1))
    np.testing.assert_array_equal(fdiv.support_size(moved, axis=1), (probs > 0).sum(-1))


@pytest.mark.parametrize("name", list(METRICS_WITH_LABELS))
def test_jit_vmap_and_bad_labels(name, batch):
    probs, labels = batch
    fn = METRICS_WITH_LABELS[name]
    expected = fn(probs, labels)
    np.testing.assert_allclose(jax.jit(fn)(probs, labels), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(probs, labels), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\)"):
        fn(probs, np.full(labels.shape, 9))
    with pytest.raises(ValueError, match="integer labels"):
        fn(probs, labels.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        fn(probs, labels[:, :3])
    with pytest.raises(ValueError, match="floating point"):
        fn(np.ones((2, 3), np.int32), np.zeros(2, np.int32))
    bad = labels.copy()
    bad[0, 0] = -1
    out = np.asarray(jax.jit(fn)(probs, bad))
    assert np.isnan(out[0, 0]) and np.isfinite(out.ravel()[1:]).all()


def test_bad_epsilon():
    with pytest.raises(ValueError, match="epsilon must be positive"):
        fdiv.epsilon_cross_entropy(jnp.ones((1, 2)) / 2, jnp.array([0]), epsilon=0.0)


def test_docstring_examples():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(fdiv.metrics, optionflags=flags)
    assert result.attempted > 0 and result.failed == 0
