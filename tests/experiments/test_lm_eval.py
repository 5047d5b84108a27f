"""experiments.common.lm_eval.evaluate_lm with a fake language model (a bigram table).

The expected values are computed token by token in float64 NumPy from the metric definitions,
so the test checks the batching, the masking, the reference measure and the two operators.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from experiments.common.lm_eval import evaluate_lm

V = 11
KEYS = {"loss", "accuracy", "eps_perplexity", "js", "sparsemax_score", "support_size"}


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    """Bigram logits: the next-token logits depend on the current token only."""
    return (np.random.default_rng(0).normal(size=(V, V)) * 2.0).astype(np.float32)


@pytest.fixture(scope="module")
def logits_fn(table):
    return jax.jit(lambda inputs: jnp.asarray(table)[inputs])


def make_batches(seed: int) -> list[dict[str, np.ndarray]]:
    """Three batches of different shapes, padded at the end of rows (targets -1 there)."""
    rng = np.random.default_rng(seed)
    batches = []
    for b, length in ((4, 7), (4, 7), (2, 5)):
        tokens = rng.integers(0, V, size=(b, length + 1))
        lengths = rng.integers(1, length + 1, size=b)
        mask = np.arange(length)[None] < lengths[:, None]
        batches.append(
            {
                "inputs": tokens[:, :-1].astype(np.int32),
                "targets": np.where(mask, tokens[:, 1:], -1).astype(np.int32),
                "mask": mask,
            }
        )
    return batches


def _per_token(probs: np.ndarray, y: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of each token from their definitions (float64)."""
    p = probs.astype(np.float64)
    p /= p.sum(-1, keepdims=True)
    p_y = p[np.arange(len(y)), y]
    one_hot = np.eye(V)[y]
    m = (p + one_hot) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
    eps = 1e-6
    return {
        "loss": loss,
        "accuracy": (p.argmax(-1) == y).astype(float),
        "eps_perplexity": -np.log((p_y + eps) / (1 + V * eps)),
        "js": 0.5 * kl_pm + 0.5 * -np.log(m[np.arange(len(y)), y]),
        "sparsemax_score": 1 - (0.5 * (p**2).sum(-1) - p_y + 0.5),
        "support_size": (p > 0).sum(-1).astype(float),
    }


def expected_metrics(table, batches, divergence, q) -> dict[str, float]:
    inputs = np.concatenate([b["inputs"][b["mask"]] for b in batches])
    targets = np.concatenate([b["targets"][b["mask"]] for b in batches])
    logits = jnp.asarray(table[inputs])
    out = {}
    for prefix, probs, loss in (
        ("", fdiv.f_softargmax(logits, divergence, q=q),
         fdiv.fdiv_loss_with_integer_labels(logits, targets, divergence, q=q)),
        ("softmax_", jax.nn.softmax(logits),
         -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), targets[:, None], 1)[:, 0]),
    ):  # fmt: skip
        values = _per_token(np.asarray(probs), targets, np.asarray(loss, np.float64))
        for k, v in values.items():
            out[prefix + k] = float(np.mean(v))
        out[prefix + "eps_perplexity"] = float(np.exp(out[prefix + "eps_perplexity"]))
    out["softmax_perplexity"] = float(np.exp(out["softmax_loss"]))
    return out


@pytest.mark.parametrize(
    "divergence, q",
    [("alpha:1.5", "unit"), ("chi2", "uniform"), ("js", "unigram")],
)
def test_matches_token_by_token_reference(table, logits_fn, divergence, q):
    batches = make_batches(seed=1)
    if q == "unigram":
        q = np.random.default_rng(2).dirichlet(np.ones(V)).astype(np.float32)
    got = evaluate_lm(logits_fn, iter(batches), divergence, q)
    assert set(got) == KEYS | {f"softmax_{k}" for k in KEYS} | {"softmax_perplexity"}
    assert all(isinstance(v, float) for v in got.values())
    expected = expected_metrics(table, batches, divergence, q)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    if divergence != "js":
        assert got["support_size"] < V  # a sparse operator
    assert got["softmax_support_size"] == V


def test_kl_with_unit_q_is_softmax(logits_fn):
    got = evaluate_lm(logits_fn, make_batches(seed=3), "kl", "unit")
    for key in KEYS:
        np.testing.assert_allclose(got[key], got[f"softmax_{key}"], rtol=1e-5, err_msg=key)
    # With the cross-entropy, the ε-perplexity is the perplexity (no target is near ε).
    np.testing.assert_allclose(got["eps_perplexity"], got["softmax_perplexity"], rtol=1e-3)


def test_masked_tokens_do_not_count(table, logits_fn):
    batches = make_batches(seed=4)
    base = evaluate_lm(logits_fn, batches, "alpha:1.5", "unit")
    # Rewriting every masked input/target, or adding a fully masked batch, changes nothing.
    noisy = [
        {
            "inputs": np.where(b["mask"], b["inputs"], (b["inputs"] + 3) % V),
            "targets": np.where(b["mask"], b["targets"], 0),
            "mask": b["mask"],
        }
        for b in batches
    ]
    empty = {**batches[0], "mask": np.zeros_like(batches[0]["mask"])}
    again = evaluate_lm(logits_fn, [*noisy, empty], "alpha:1.5", "unit")
    for key, value in base.items():
        np.testing.assert_allclose(again[key], value, rtol=1e-6, err_msg=key)


def test_bad_input(logits_fn):
    batches = make_batches(seed=5)
    empty = [{**b, "mask": np.zeros_like(b["mask"])} for b in batches]
    with pytest.raises(ValueError, match="no unmasked token"):
        evaluate_lm(logits_fn, empty, "kl", "uniform")
    with pytest.raises(ValueError, match="no unmasked token"):
        evaluate_lm(logits_fn, [], "kl", "uniform")
    with pytest.raises(ValueError, match="lacks"):
        evaluate_lm(logits_fn, [{"inputs": batches[0]["inputs"]}], "kl", "uniform")
    with pytest.raises(ValueError, match="valid"):
        evaluate_lm(logits_fn, batches, "no-such-divergence", "uniform")
