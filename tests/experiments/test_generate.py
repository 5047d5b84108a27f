"""experiments.common.generate with a fake causal model: a bigram table, so the next-token
distribution after token ``t`` is the operator applied to ``table[t]``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from experiments.common.generate import generate

V = 13
EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = (rng.normal(size=(V, V)) * 2.0).astype(np.float32)
    t[:, EOS] = -10.0  # eos is reachable only from token 2 (greedy or sampled: it is likely)
    t[2, EOS] = 10.0
    t[:, PAD] = -10.0
    return t


@pytest.fixture(scope="module")
def logits_fn(table):
    return jax.jit(lambda inputs: jnp.asarray(table)[inputs])


def _next_probs(table, prev: np.ndarray, divergence, q) -> np.ndarray:
    logits = jnp.asarray(table[prev])
    if divergence is None:
        return np.asarray(jax.nn.softmax(logits))
    return np.asarray(fdiv.f_softargmax(logits, divergence, q=q))


@pytest.mark.parametrize("divergence, q", [(None, None), ("alpha:1.5", "unit"), ("js", "unigram")])
def test_greedy_follows_the_argmax(table, logits_fn, divergence, q):
    if q == "unigram":  # an array q moves the argmax away from the logits' argmax
        q = np.random.default_rng(1).dirichlet(np.ones(V)).astype(np.float32)
    prompts = np.array([[3, 4], [5, 6], [7, 8]], np.int32)
    out = generate(logits_fn, prompts, 6, divergence=divergence, q=q, greedy=True, rng=None)
    assert out.shape == (3, 8) and out.dtype == np.int32
    np.testing.assert_array_equal(out[:, :2], prompts)
    for row in out:
        for i in range(2, 8):
            np.testing.assert_equal(
                row[i], np.argmax(_next_probs(table, row[i - 1 : i], divergence, q)[0])
            )


def test_eos_stops_a_row_and_pads_after_it(table, logits_fn):
    # From token 2 the greedy next token is eos: the row ends right after the prompt.
    out = generate(
        logits_fn, [[5, 2], [4, 3]], 5, divergence="alpha:2", q="unit", greedy=True, rng=None,
        eos_id=EOS,
    )  # fmt: skip
    np.testing.assert_array_equal(out[0], [5, 2, EOS, PAD, PAD, PAD, PAD])
    second = out[1]
    if EOS in second.tolist():
        end = second.tolist().index(EOS)
        assert np.all(second[end + 1 :] == PAD)
    # One prompt in, one row out; max_len caps the buffer.
    single = generate(
        logits_fn, [4, 3], 10, divergence=None, q=None, greedy=True, rng=None, max_len=6
    )
    batched = generate(logits_fn, [[4, 3]], 4, divergence=None, q=None, greedy=True, rng=None)
    assert single.shape == (6,)
    np.testing.assert_array_equal(single, batched[0])


@pytest.mark.parametrize("divergence", ["alpha:1.5", "alpha:2", None])
def test_sampled_tokens_have_nonzero_probability(table, logits_fn, divergence):
    q = None if divergence is None else "unit"
    prompts = np.tile(np.arange(2, V, dtype=np.int32)[:, None], (40, 1))  # 440 rows
    rng = jax.random.key(4)
    out = generate(logits_fn, prompts, 8, divergence=divergence, q=q, greedy=False, rng=rng)
    for i in range(1, out.shape[1]):
        p = _next_probs(table, out[:, i - 1], divergence, q)
        assert np.all(p[np.arange(len(out)), out[:, i]] > 0), f"step {i}"
    if divergence is not None:
        assert (p == 0).mean() > 0.3, "the operator should be sparse for this test to bite"
    # Sampling is random but a pure function of the key.
    assert len({tuple(r) for r in out[out[:, 0] == 2]}) > 1
    again = generate(logits_fn, prompts, 8, divergence=divergence, q=q, greedy=False, rng=rng)
    np.testing.assert_array_equal(out, again)


def test_sampled_frequencies_match_the_operator(table, logits_fn):
    prompts = np.full((4000, 1), 3, np.int32)
    out = generate(
        logits_fn, prompts, 1, divergence="alpha:1.5", q="unit", greedy=False,
        rng=jax.random.key(5),
    )  # fmt: skip
    p = _next_probs(table, np.array([3]), "alpha:1.5", "unit")[0].astype(np.float64)
    freq = np.bincount(out[:, 1], minlength=V) / len(out)
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / len(out)) + 1e-12)


def test_bad_input(logits_fn):
    kw = {"divergence": None, "q": None, "greedy": True, "rng": None}
    with pytest.raises(ValueError, match="one length"):
        generate(logits_fn, [[1, 2], [3]], 2, **kw)
    with pytest.raises(ValueError, match="B, P ≥ 1"):
        generate(logits_fn, np.zeros((2, 0), np.int32), 2, **kw)
    with pytest.raises(ValueError, match="no room"):
        generate(logits_fn, [1, 2, 3], 2, max_len=3, **kw)
    with pytest.raises(ValueError, match="needs an rng"):
        generate(logits_fn, [1, 2], 2, divergence=None, q=None, greedy=False, rng=None)
    with pytest.raises(ValueError, match="softmax takes none"):
        generate(logits_fn, [1, 2], 2, divergence=None, q="unit", greedy=True, rng=None)
    with pytest.raises(ValueError, match="expected \\[B, T, V\\]"):
        generate(lambda x: jnp.zeros((1, 5)), [1, 2], 2, **kw)
    nan_fn = jax.jit(lambda x: jnp.full((*x.shape, V), jnp.nan))
    with pytest.raises(ValueError, match="no valid distribution"):
        generate(nan_fn, [1, 2], 2, **kw)
