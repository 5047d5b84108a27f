"""The fused LM head: same losses and gradients as the unfused loss of ``hidden @ weight``.

The reference is ``fdiv.fdiv_loss_with_integer_labels`` (or ``fdiv.fdiv_loss`` for soft
targets) applied to the materialised logits, differentiated by JAX. Sizes are small so that
the whole file runs in seconds; N = 13 is prime, so most chunk sizes leave a padded chunk.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from fdiv import lm_head
from fdiv.lm_head import fused_linear_fdiv_loss

N, D, V = 13, 8, 24
DIVERGENCES = [
    ("kl", None),
    ("alpha:1.5", "uniform"),
    ("alpha:1.5", "unit"),
    ("chi2", None),
    ("reverse_kl", None),
]
REDUCE = {"none": lambda x: x, "sum": jnp.sum, "mean": jnp.mean}


@pytest.fixture
def problem(rng):
    hidden = rng.normal(size=(N, D)).astype(np.float32)
    weight = rng.normal(size=(D, V)).astype(np.float32)
    labels = rng.integers(0, V, size=N)
    cotangent = rng.normal(size=N).astype(np.float32)  # a non-uniform upstream gradient
    return hidden, weight, labels, cotangent


def _value_and_grads(loss_fn, hidden, weight, cotangent, reduction):
    """Loss, and the gradients of ``⟨cotangent, loss⟩`` (or of the reduced loss)."""

    def objective(h, w):
        loss = loss_fn(h, w)
        return (jnp.sum(loss * cotangent) if reduction == "none" else loss), loss

    run = jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))
    (_, loss), grads = run(hidden, weight)
    return loss, grads


def _assert_same(fused, unfused, rtol=1e-5, atol=1e-5):
    (loss_f, (dh_f, dw_f)), (loss_u, (dh_u, dw_u)) = fused, unfused
    np.testing.assert_allclose(loss_f, loss_u, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dh_f, dh_u, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dw_f, dw_u, rtol=rtol, atol=atol)


def _unfused(divergence, q, reduction, labels, **kwargs):
    def loss_fn(h, w):
        loss = fdiv.fdiv_loss_with_integer_labels(h @ w, labels, divergence, q=q, **kwargs)
        return REDUCE[reduction](loss)

    return loss_fn


def _fused(divergence, q, reduction, labels, **kwargs):
    return lambda h, w: fused_linear_fdiv_loss(
        h, w, labels, divergence, q=q, reduction=reduction, **kwargs
    )


@pytest.mark.parametrize(("divergence", "q"), DIVERGENCES)
@pytest.mark.parametrize("reduction", ["none", "sum"])  # "mean": see the chunk and mask tests
def test_integer_labels_match_unfused(divergence, q, reduction, problem):
    hidden, weight, labels, cotangent = problem
    args = (divergence, q, reduction, labels)
    fused = _value_and_grads(_fused(*args, chunk_size=4), hidden, weight, cotangent, reduction)
    unfused = _value_and_grads(_unfused(*args), hidden, weight, cotangent, reduction)
    _assert_same(fused, unfused)


@pytest.mark.parametrize("chunk_size", [1, 5, N, 64])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_any_chunk_size(chunk_size, reduction, problem):
    hidden, weight, labels, cotangent = problem
    args = ("alpha:1.5", "unit", reduction, labels)
    fused = _value_and_grads(
        _fused(*args, chunk_size=chunk_size), hidden, weight, cotangent, reduction
    )
    unfused = _value_and_grads(_unfused(*args), hidden, weight, cotangent, reduction)
    _assert_same(fused, unfused)


@pytest.mark.parametrize("solver", ["bisect", "newton", "auto"])
def test_solvers(solver, problem):
    hidden, weight, labels, cotangent = problem
    args = ("js", None, "none", labels)
    fused = _value_and_grads(
        _fused(*args, chunk_size=4, solver=solver), hidden, weight, cotangent, "none"
    )
    unfused = _value_and_grads(_unfused(*args, solver=solver), hidden, weight, cotangent, "none")
    _assert_same(fused, unfused)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_masked_tokens_have_no_loss_and_no_gradient(reduction, problem):
    hidden, weight, labels, cotangent = problem
    keep = np.arange(N) % 3 != 0
    padded = np.where(keep, labels, -100)  # padding labels are ignored on masked tokens
    fused_fn = _fused("chi2", None, reduction, padded, chunk_size=4, where=keep)
    fused = _value_and_grads(fused_fn, hidden, weight, cotangent, reduction)

    def unfused_fn(h, w):
        loss = fdiv.fdiv_loss_with_integer_labels(h @ w, labels, "chi2") * keep
        return (
            loss
            if reduction == "none"
            else jnp.sum(loss) / (keep.sum() if reduction == "mean" else 1)
        )

    unfused = _value_and_grads(unfused_fn, hidden, weight, cotangent, reduction)
    _assert_same(fused, unfused)
    if reduction == "none":
        assert np.all(np.asarray(fused[0])[~keep] == 0.0)
        assert np.all(np.asarray(fused[1][0])[~keep] == 0.0)


def test_class_mask_and_temperature(problem):
    hidden, weight, labels, cotangent = problem
    class_ok = np.arange(V) % 4 != 1
    labels = np.where(class_ok[labels], labels, 0)
    args = ("alpha:1.5", "uniform", "none", labels)
    fused = _value_and_grads(
        _fused(*args, chunk_size=4, class_where=class_ok, temperature=2.5),
        hidden,
        weight,
        cotangent,
        "none",
    )
    unfused = _value_and_grads(
        _unfused(*args, where=class_ok, temperature=2.5), hidden, weight, cotangent, "none"
    )
    _assert_same(fused, unfused)


@pytest.mark.parametrize("q_kind", ["prior", "per_token"])
@pytest.mark.parametrize("divergence", ["alpha:1.5", "hellinger"])
def test_reference_measure_arrays(q_kind, divergence, problem, rng):
    hidden, weight, labels, cotangent = problem
    shape = (V,) if q_kind == "prior" else (N, V)
    q = rng.uniform(0.2, 2.0, size=shape).astype(np.float32)
    args = (divergence, q, "none", labels)
    fused = _value_and_grads(_fused(*args, chunk_size=5), hidden, weight, cotangent, "none")
    unfused = _value_and_grads(_unfused(*args), hidden, weight, cotangent, "none")
    _assert_same(fused, unfused)


def _soft_targets(rng, k):
    """Top-k targets: distinct indices, positive values summing to 1 (one row all on one class)."""
    indices = np.stack([rng.choice(V, size=k, replace=False) for _ in range(N)])
    values = rng.dirichlet(np.ones(k), size=N).astype(np.float32)
    values[0] = np.eye(k, dtype=np.float32)[0]  # zeros inside the top-k too
    dense = np.zeros((N, V), np.float32)
    np.put_along_axis(dense, indices, values, axis=-1)
    return indices, values, dense


@pytest.mark.parametrize(("divergence", "q"), DIVERGENCES)
@pytest.mark.parametrize("form", ["dense", "top_k"])
def test_soft_targets_match_unfused(divergence, q, form, problem, rng):
    hidden, weight, _, cotangent = problem
    indices, values, dense = _soft_targets(rng, k=5)
    labels = dense if form == "dense" else (indices, values)
    fused_fn = _fused(divergence, q, "none", labels, chunk_size=4)
    fused = _value_and_grads(fused_fn, hidden, weight, cotangent, "none")

    def unfused_fn(h, w):
        return fdiv.fdiv_loss(h @ w, dense, divergence, q=q)

    unfused = _value_and_grads(unfused_fn, hidden, weight, cotangent, "none")
    _assert_same(fused, unfused, rtol=2e-5, atol=2e-5)


def test_top_k_with_class_mask_and_prior(problem, rng):
    hidden, weight, _, cotangent = problem
    indices, values, dense = _soft_targets(rng, k=3)
    class_ok = np.ones(V, bool)
    class_ok[np.setdiff1d(np.arange(V), indices)[:5]] = False  # masked classes carry no target
    q = rng.uniform(0.2, 2.0, size=V).astype(np.float32)
    fused_fn = _fused("js", q, "none", (indices, values), chunk_size=6, class_where=class_ok)
    fused = _value_and_grads(fused_fn, hidden, weight, cotangent, "none")

    def unfused_fn(h, w):
        return fdiv.fdiv_loss(h @ w, dense, "js", q=q, where=class_ok)

    unfused = _value_and_grads(unfused_fn, hidden, weight, cotangent, "none")
    _assert_same(fused, unfused, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("divergence", ["chi2", "alpha:2", "alpha:1.5"])
def test_ties_at_the_support_end_match_unfused(divergence, rng):
    """1000 exact or near ties with unit q put τ within 2e-3 of the support's end, where only the
    anchored root resolves the mass (tests/test_solvers.py::test_ties_with_unit_q_are_exact):
    the fused head must use it too. The logits ``c + r_j`` are exact: weight rows of ones and of
    small offsets ``r``, hidden rows ``[c, 0|1, 0|1]``. The first column of the hidden
    gradient is ``g (Σp − 1)`` (the weight row of ones), so its tolerance 1e-5 is the unfused
    tests' ``|Σp − 1| ≤ 1e-5``; a fused head solving for τ itself was 5e-5 off there. Against the
    unfused path with the head's own solver (JAX Newton: no CPU kernel in the head): with unit q
    over 1000 classes the float32 values of the two solvers differ by 6e-5 (README, Status)."""
    v = 1000
    weight = np.stack(
        [
            np.ones(v),
            1e-3 * rng.normal(size=v),
            1e-3 * np.arange(v) / v,
        ]
    ).astype(np.float32)
    hidden = np.array([[0.3, 0, 0], [0.3, 1, 0], [0.3, 0, 1], [0, 0, 0], [1.7, 1, 1]], np.float32)
    labels = rng.integers(0, v, size=len(hidden))
    cotangent = rng.normal(size=len(hidden)).astype(np.float32)
    args = (divergence, "unit", "none", labels)
    fused = _value_and_grads(_fused(*args, chunk_size=2), hidden, weight, cotangent, "none")
    unfused = _value_and_grads(_unfused(*args, solver="newton"), hidden, weight, cotangent, "none")
    _assert_same(fused, unfused)


@pytest.mark.parametrize(("divergence", "q"), DIVERGENCES)
@pytest.mark.parametrize("form", ["integer", "top_k"])
def test_logits_of_1e9_match_unfused(divergence, q, form, problem, rng):
    """Logits of exactly ±1e9 (tied at the row max) beside O(1) ones: the fused loss, like the
    unfused one, is computed relative to the row max, so a loss of 0.7 next to 1e9 keeps its
    digits (tests/test_losses.py::test_huge_logits). The first hidden unit is 1e9 on most tokens
    and the weight columns that read it are ``±e_0``, so those logits are exact; the labels
    alternate between tied 1e9 classes and ordinary ones."""
    hidden, weight, _, cotangent = problem
    hidden, weight = hidden.copy(), weight.copy()
    hidden[:, 0] = np.where(np.arange(N) % 4 == 3, 0.0, 1e9)
    weight[0] = 0.0
    big = np.array([2, 5, 11])  # logit +1e9 (tied)
    weight[:, big] = 0.0
    weight[0, big] = 1.0
    weight[:, 7] = 0.0
    weight[0, 7] = -1.0  # logit −1e9
    labels = np.where(np.arange(N) % 2 == 0, big[np.arange(N) % 3], rng.integers(0, V, size=N))
    if form == "integer":
        fused_fn = _fused(divergence, q, "none", labels, chunk_size=4)
        unfused_fn = _unfused(divergence, q, "none", labels)
        tol = {"rtol": 1e-5, "atol": 2e-5}
    else:  # half the mass on the label, half on class 5 (tied at 1e9)
        indices = np.stack([labels, np.where(labels == 5, 2, 5)], axis=1)
        values = np.full((N, 2), 0.5, np.float32)
        dense = np.zeros((N, V), np.float32)
        np.put_along_axis(dense, indices, values, axis=-1)
        fused_fn = _fused(divergence, q, "none", (indices, values), chunk_size=4)
        unfused_fn = lambda h, w: fdiv.fdiv_loss(h @ w, dense, divergence, q=q)
        tol = {"rtol": 2e-5, "atol": 2e-5}
    fused = _value_and_grads(fused_fn, hidden, weight, cotangent, "none")
    unfused = _value_and_grads(unfused_fn, hidden, weight, cotangent, "none")
    assert np.all(np.isfinite(fused[0])), fused[0]
    _assert_same(fused, unfused, **tol)


def test_reverse_kl_with_the_target_as_reference_matches_unfused(problem, rng):
    """Distillation with ``q = y`` = a peaked teacher softmax (many classes underflow to 0):
    where the student's top class has a tiny ``q_j``, the reverse-KL root lies within ~q_j of
    that logit. A fused head that solved for τ itself and added the anchor back (``τ + 1``)
    rounded ``θ_j − t`` to 0 there: ``f*_rel = −log 0 = +∞`` in the loss of 10 of these 13 tokens
    (the distillation run's "non-finite training loss (inf)"). The anchored root in the row-max
    frame keeps it finite and equal to the unfused loss."""
    hidden, weight, _, cotangent = problem
    hidden = 3.0 * hidden  # student logits with gaps of several units
    target = np.asarray(jax.nn.softmax(20.0 * rng.normal(size=(N, V)).astype(np.float32)))
    assert np.any(target == 0.0)  # classes outside the measure too
    fused_fn = _fused("reverse_kl", target, "none", target, chunk_size=4)
    fused = _value_and_grads(fused_fn, hidden, weight, cotangent, "none")

    def unfused_fn(h, w):
        return fdiv.fdiv_loss(h @ w, target, "reverse_kl", q=target)

    unfused = _value_and_grads(unfused_fn, hidden, weight, cotangent, "none")
    assert np.all(np.isfinite(fused[0])), fused[0]
    _assert_same(fused, unfused, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_bfloat16_inputs(reduction, problem):
    """bf16 matmuls with float32 accumulation: close to the float32 loss of the same bf16 values."""
    hidden, weight, labels, cotangent = problem
    h16, w16 = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(weight, jnp.bfloat16)
    loss_f, (dh, dw) = _value_and_grads(
        _fused("alpha:1.5", "unit", reduction, labels, chunk_size=4), h16, w16, cotangent, reduction
    )
    assert loss_f.dtype == jnp.float32
    assert dh.dtype == dw.dtype == jnp.bfloat16
    h32, w32 = (x.astype(jnp.float32) for x in (h16, w16))
    unfused = _unfused("alpha:1.5", "unit", reduction, labels)
    loss_u, (dh_u, dw_u) = _value_and_grads(unfused, h32, w32, cotangent, reduction)
    # The logits are exact float32 sums of bf16 products; only the gradients are rounded to bf16.
    np.testing.assert_allclose(loss_f, loss_u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dh.astype(jnp.float32), dh_u, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(dw.astype(jnp.float32), dw_u, rtol=2e-2, atol=2e-2)


def test_jit_and_invalid_labels_under_jit(problem):
    hidden, weight, labels, _ = problem
    labels = labels.copy()
    labels[2] = V  # out of range: NaN loss, no gradient, as the unfused loss under jit

    @jax.jit
    def run(h, w, y):
        loss_fn = lambda h, w: fused_linear_fdiv_loss(h, w, y, "chi2", chunk_size=4)
        return loss_fn(h, w), jax.grad(lambda h: jnp.nansum(loss_fn(h, w)))(h)

    loss, dh = run(hidden, weight, labels)
    assert np.isnan(loss[2]) and np.all(np.isfinite(np.delete(np.asarray(loss), 2)))
    assert np.all(np.asarray(dh)[2] == 0.0)


def test_float64(problem, x64):
    hidden, weight, labels, cotangent = problem
    hidden, weight = jnp.asarray(hidden, jnp.float64), jnp.asarray(weight, jnp.float64)
    cotangent = cotangent.astype(np.float64)
    args = ("alpha:1.5", "uniform", "none", labels)
    fused = _value_and_grads(_fused(*args, chunk_size=4), hidden, weight, cotangent, "none")
    assert fused[0].dtype == jnp.float64 and fused[1][1].dtype == jnp.float64
    unfused = _value_and_grads(_unfused(*args), hidden, weight, cotangent, "none")
    _assert_same(fused, unfused, rtol=1e-10, atol=1e-10)


def test_peak_memory_does_not_grow_with_tokens():
    """Compiled temporaries of forward+backward: O(chunk · V + D · V), not O(N · V)."""
    d, v, chunk = 16, 4096, 32

    def temp_bytes(n, loss_fn):
        args = (jnp.zeros((n, d)), jnp.zeros((d, v)), jnp.zeros(n, jnp.int32))
        grad = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))
        return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

    def fused(h, w, y):
        return fused_linear_fdiv_loss(h, w, y, "alpha:1.5", chunk_size=chunk, reduction="sum")

    def unfused(h, w, y):
        return jnp.sum(fdiv.fdiv_loss_with_integer_labels(h @ w, y, "alpha:1.5"))

    small, large = temp_bytes(512, fused), temp_bytes(2048, fused)
    logits_row = v * 4
    assert temp_bytes(2048, unfused) >= 2048 * logits_row  # the unfused path holds the logits
    assert large - small < (2048 - 512) * logits_row / 32  # the fused one a few chunks of them


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_weight_gradient_in_column_blocks(reduction, problem, monkeypatch):
    """Blocks of 7 of the 24 columns: the last block overlaps the one before it."""
    monkeypatch.setattr(lm_head, "_WEIGHT_BLOCK", 7)
    hidden, weight, labels, cotangent = problem
    args = ("alpha:1.5", "unit", reduction, labels)
    fused = _value_and_grads(_fused(*args, chunk_size=5), hidden, weight, cotangent, reduction)
    unfused = _value_and_grads(_unfused(*args), hidden, weight, cotangent, reduction)
    _assert_same(fused, unfused)


def test_no_temporary_the_size_of_the_weight(monkeypatch):
    """The weight's gradient is updated in place: the temporaries hold a block of its columns."""
    monkeypatch.setattr(lm_head, "_WEIGHT_BLOCK", 512)
    n, d, v = 64, 1024, 4096
    args = (jnp.zeros((n, d)), jnp.zeros((d, v)), jnp.zeros(n, jnp.int32))

    def fused(h, w, y):
        return fused_linear_fdiv_loss(h, w, y, "alpha:1.5", chunk_size=8, reduction="sum")

    grad = jax.jit(jax.grad(fused, argnums=(0, 1)))
    temp = grad.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert temp < d * v * 4 / 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "avg"}, "unknown reduction"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"solver": "brent"}, "unknown solver"),
        ({"where": np.ones(N + 1, bool)}, "token mask"),
        ({"class_where": np.ones(V + 1, bool)}, "class_where"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments(kwargs, message, problem):
    hidden, weight, labels, _ = problem
    with pytest.raises(ValueError, match=message):
        fused_linear_fdiv_loss(hidden, weight, labels, "kl", **kwargs)


def test_bad_labels(problem):
    hidden, weight, labels, _ = problem
    run = functools.partial(fused_linear_fdiv_loss, hidden, weight, divergence="kl")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 24\)"):
        run(np.full(N, V))
    with pytest.raises(ValueError, match="labels must be"):
        run(labels[:-1])
    with pytest.raises(ValueError, match="top-k"):
        run((np.zeros((N, 2), np.int32), np.zeros((N, 3), np.float32)))
    with pytest.raises(ValueError, match="top-k indices must lie"):
        run((np.full((N, 2), -1), np.zeros((N, 2), np.float32)))
