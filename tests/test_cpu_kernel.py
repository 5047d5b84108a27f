"""The CPU kernels (fdiv/cpu_kernel.py): the power-law generators' root (power_root.cc) and
KL's log-sum-exp (log_sum_exp.cc).

Their accuracy on random and adversarial rows is tested with every "auto" case of
test_solvers.py, and their edge cases (masks, NaN, empty rows, leading axes, vmap, half
precision) with the operators' and losses' tests, which all run "auto" on CPU (KL's against
optax's cross-entropy too). Here: that "auto" does use them, that they agree with the JAX
solvers or float64 where the other tests use shared q, that the value they give has the
derivatives of the JAX path, and the fallback without them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fdiv
from fdiv import cpu_kernel
from fdiv import root_finding as rf
from fdiv.divergences import get_generator

SPARSE = ["alpha:1.5", "alpha:2", "chi2", "alpha:1.25", f"alpha:{4 / 3!r}"]
POLES = ["reverse_kl", "hellinger", "alpha:0.5", "alpha:0.75"]
POWER_LAWS = SPARSE + POLES


def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize("divergence", ["alpha:1.5", "chi2", "reverse_kl"])
def test_auto_uses_the_kernel_on_cpu(divergence):
    x = jnp.zeros((4, 16))
    assert cpu_kernel.available()
    labels = jnp.zeros(4, int)
    auto = _lowered(lambda x: fdiv.fdiv_loss_with_integer_labels(x, labels, divergence), x)
    assert "fdiv_power_root" in auto
    newton = _lowered(lambda x: fdiv.f_softargmax(x, divergence, solver="newton"), x)
    assert "fdiv_power_root" not in newton


@pytest.mark.parametrize("divergence", ["kl", "js", "alpha:3", "alpha:1.7", "alpha:-1"])
def test_other_generators_have_no_power_law(divergence):
    assert get_generator(divergence).power_law is None


def test_power_laws_are_the_generators_maps():
    """coef · |r|^power on the support (r > 0) or below the pole (r < 0)."""
    for name in POWER_LAWS:
        gen = get_generator(name)
        coef, power = gen.power_law
        r = jnp.linspace(0.1, 3.0, 11) * (1.0 if power > 0 else -1.0)
        np.testing.assert_allclose(
            gen.conj_grad_rel(r), coef * jnp.abs(r) ** power, rtol=1e-5, err_msg=name
        )
        if power > 0:
            assert np.all(gen.conj_grad_rel(-r) == 0.0)


@pytest.mark.parametrize("divergence", POWER_LAWS)
def test_array_q_matches_newton(divergence, rng):
    """q per class, shared by the rows or one per row, with zeros (masked classes)."""
    x = jnp.asarray(rng.normal(size=(6, 300)) * 2.0, jnp.float32)
    per_class = rng.uniform(0.1, 2.0, size=(1, 300)) * (rng.uniform(size=(1, 300)) > 0.2)
    per_row = rng.uniform(0.0, 1.0, size=(6, 300))
    for q in (jnp.asarray(per_class, jnp.float32), jnp.asarray(per_row, jnp.float32)):
        auto = fdiv.f_softargmax(x, divergence, q=q)
        newton = fdiv.f_softargmax(x, divergence, q=q, solver="newton")
        np.testing.assert_allclose(auto, newton, atol=2e-6)
        np.testing.assert_allclose(auto.sum(-1), 1.0, atol=1e-5)
        assert not np.any(np.asarray(auto)[np.asarray(jnp.broadcast_to(q, x.shape)) == 0])


@pytest.mark.parametrize(
    "divergence", ["alpha:1.5", "chi2", "alpha:1.25", "reverse_kl", "hellinger"]
)
@pytest.mark.parametrize("q", ["uniform", "unit"])
def test_value_and_derivatives_match_the_jax_path(divergence, q, rng):
    """The kernel's value (its last pass's sum) and the envelope rule attached to it give the
    JAX path's loss, gradient, Hessian and forward derivative."""
    x = jnp.asarray(rng.normal(size=(5, 40)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 40, size=5))

    def loss(x, solver):
        return fdiv.fdiv_loss_with_integer_labels(x, labels, divergence, q=q, solver=solver).sum()

    for fn, atol in ((loss, 1e-5), (jax.grad(loss), 1e-6)):
        np.testing.assert_allclose(fn(x, "auto"), fn(x, "newton"), atol=atol)

    def value(row, solver):
        return fdiv.f_softmax(row, divergence, q=q, solver=solver)

    np.testing.assert_allclose(
        jax.hessian(value)(x[0], "auto"), jax.hessian(value)(x[0], "newton"), atol=1e-5
    )
    tangents = [
        jax.jvp(functools.partial(value, solver=s), (x,), (x[::-1],))[1] for s in ("auto", "newton")
    ]
    np.testing.assert_allclose(*tangents, atol=1e-5)


def test_derivative_in_q_matches_the_jax_path(rng):
    x = jnp.asarray(rng.normal(size=(3, 30)), jnp.float32)
    q = jnp.asarray(rng.uniform(0.5, 1.5, size=(3, 30)), jnp.float32)

    def value(q, solver):
        return fdiv.f_softmax(x, "alpha:1.5", q=q, solver=solver).sum()

    np.testing.assert_allclose(jax.grad(value)(q, "auto"), jax.grad(value)(q, "newton"), atol=1e-6)


@pytest.mark.parametrize("divergence", ["alpha:1.5", "hellinger"])
def test_value_for_edge_rows(divergence):
    """An empty row has value −inf, a NaN row NaN, ties and a single class their closed forms."""
    x = jnp.array(
        [[-jnp.inf] * 4, [0.0, jnp.nan, 1.0, 2.0], [3.0] * 4, [5.0, -jnp.inf, -jnp.inf, -jnp.inf]]
    )
    auto = fdiv.f_softmax(x, divergence, q="unit")
    newton = fdiv.f_softmax(x, divergence, q="unit", solver="newton")
    assert auto[0] == -jnp.inf and jnp.isnan(auto[1])
    np.testing.assert_allclose(auto[2:], newton[2:], rtol=1e-6)


def test_without_the_kernel_auto_is_jax(monkeypatch):
    monkeypatch.setenv("FDIV_CPU_KERNEL", "0")
    cpu_kernel.available.cache_clear()
    try:
        x = jnp.zeros((2, 8))
        for divergence in ("alpha:1.5", "kl"):
            assert not rf.uses_kernel(get_generator(divergence), "auto", None, jnp.float32)
            lowered = _lowered(lambda x, d=divergence: fdiv.f_softmax(x, d), x)
            assert "fdiv_power_root" not in lowered and "fdiv_log_sum_exp" not in lowered
    finally:
        cpu_kernel.available.cache_clear()


def test_a_missing_compiler_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("FDIV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(OSError, match="no-such-compiler"):
        cpu_kernel.build()
    assert not list(tmp_path.iterdir())  # no half-written library


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    def fail():
        raise RuntimeError("c++ failed")

    monkeypatch.setattr(cpu_kernel, "build", fail)
    monkeypatch.setattr(cpu_kernel, "_registered", None)
    cpu_kernel.available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="CPU root kernel is unavailable"):
            assert not cpu_kernel.available()
    finally:
        cpu_kernel.available.cache_clear()


def test_the_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("FDIV_CACHE_DIR", str(tmp_path))
    path = cpu_kernel.build()
    assert path.parent == tmp_path and path.exists()
    stamp = path.stat().st_mtime_ns
    assert cpu_kernel.build() == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("divergence", ["reverse_kl", "hellinger"])
def test_pole_root_next_to_the_max(divergence):
    """A tiny q at the largest logit puts the pole's root within ~q of it (3e-20 here): the
    root must stay above that logit (a bound lowered by ulps of the logit would cross it) and
    be resolved next to it (lost in the logit plus the root, the top class gets no mass).
    With the root ~0 above the max, the other classes have their mass at τ = max θ, and the
    top class the rest. The JAX Newton solver needs ``q/r²`` weighed in that order (1/r²
    overflows float32).
    """
    x = jnp.array([[4.0, 3.0, 1.0, -2.0]])
    q = jnp.array([[1e-20, 0.5, 0.3, 0.2]])
    power = get_generator(divergence).power_law[1]
    others = np.array([0.5, 0.3, 0.2]) * np.array([1.0, 3.0, 6.0]) ** power
    expected = np.concatenate([[1.0 - others.sum()], others])
    for solver in ("auto", "newton"):
        p = fdiv.f_softargmax(x, divergence, q=q, solver=solver)
        np.testing.assert_allclose(p[0], expected, rtol=1e-6, err_msg=solver)
    assert np.isfinite(fdiv.f_softmax(x, divergence, q=q)).all()


@pytest.mark.parametrize(
    "divergence, target", [("alpha:1.5", "fdiv_power_root"), ("kl", "fdiv_log_sum_exp")]
)
def test_the_fused_head_keeps_the_jax_solver(divergence, target):
    """Its time is its matmuls', and the kernel's operand would keep a chunk's logits alive
    beside their gradient (the head's peak memory 0.113x → 0.131x of the unfused path)."""
    hidden, weight = jnp.zeros((6, 4)), jnp.zeros((4, 16))
    labels = jnp.zeros(6, int)

    def head(h, w):
        return fdiv.fused_linear_fdiv_loss(h, w, labels, divergence, reduction="sum")

    assert target not in _lowered(jax.grad(head, argnums=(0, 1)), hidden, weight)


# KL's log-sum-exp (log_sum_exp.cc): chunks of 1024 classes, blocks of 64, a scalar tail.
KL_CLASSES = [1, 5, 63, 64, 65, 1000, 1024, 1100, 4097]


def _log_sum_exp64(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    x, q = x.astype(np.float64), np.broadcast_to(q, x.shape).astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m + np.log(np.sum(q * np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def test_auto_uses_the_log_sum_exp_kernel_on_cpu():
    x, labels = jnp.zeros((4, 16)), jnp.zeros(4, int)
    auto = _lowered(lambda x: fdiv.fdiv_loss_with_integer_labels(x, labels, "kl"), x)
    assert "fdiv_log_sum_exp" in auto
    assert "fdiv_log_sum_exp" in _lowered(lambda x: fdiv.f_softargmax(x, "kl"), x)


@pytest.mark.parametrize("k", KL_CLASSES)
def test_log_sum_exp_matches_float64(k, rng):
    """Rows with masked classes and logits spread over 200 (exponentials below e^−87 are 0),
    q shared, per class with zeros, or per row; the root τ = shift + t."""
    x = (rng.normal(size=(4, 3, k)) * np.array([1.0, 5.0, 40.0])[:, None]).astype(np.float32)
    x[0, 1, : k // 2] = -np.inf
    x[3, :, 1::3] = -np.inf
    per_class = (rng.uniform(0.1, 2.0, size=(1, 1, k)) * (rng.uniform(size=k) > 0.3)).astype(
        np.float32
    )
    per_row = rng.uniform(0.0, 1.0, size=(4, 3, k)).astype(np.float32)
    for q in (np.full((1, 1, 1), 1.0 / k, np.float32), per_class, per_row):
        shift, t, q_sum, empty = cpu_kernel.log_sum_exp(jnp.asarray(x), jnp.asarray(q))
        expected = _log_sum_exp64(x, q)
        finite = np.isfinite(expected)
        np.testing.assert_allclose((shift + t)[finite], expected[finite], rtol=2e-7, atol=2e-7)
        assert np.all(np.asarray(shift + t)[~finite] == -np.inf)  # every class with q > 0 masked
        total = np.broadcast_to(q, x.shape).sum(-1)
        np.testing.assert_allclose(q_sum, np.where(total > 0, total, 1.0), rtol=1e-6)
        assert not np.any(empty)


def test_log_sum_exp_edge_rows():
    """An empty row: shift = t = 0 and Q = 1 (as row_stats); NaN, +inf or all-NaN: NaN."""
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [-inf] * 3,
            [1.0, nan, 2.0],
            [1.0, inf, 2.0],
            [-inf, inf, 0.0],
            [nan] * 3,
            [7.0, -inf, -inf],
        ],
        np.float32,
    )
    x = np.concatenate([x, np.full((6, 70), -np.inf, np.float32)], axis=1)  # a block and a tail
    shift, t, q_sum, empty = map(
        np.asarray, cpu_kernel.log_sum_exp(jnp.asarray(x), jnp.ones((1, 1)))
    )
    assert list(empty) == [True, False, False, False, False, False]
    assert shift[0] == 0 and t[0] == 0 and q_sum[0] == 1
    assert np.all(np.isnan(shift[1:5])) and np.all(np.isnan(t[1:5]))
    assert shift[5] == 7 and t[5] == 0


def test_kl_through_the_kernel_is_cross_entropy_with_its_derivatives(rng):
    """Loss and gradient as optax's; the f-softmax's Hessian is softmax's Jacobian; forward
    derivative; the derivative in q."""
    x = jnp.asarray(rng.normal(size=(5, 130)) * 3.0, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 130, size=5))

    def loss(x):
        return fdiv.fdiv_loss_with_integer_labels(x, labels, "kl", q="unit").sum()

    def cross_entropy(x):
        return optax.softmax_cross_entropy_with_integer_labels(x, labels).sum()

    np.testing.assert_allclose(loss(x), cross_entropy(x) + 0.0, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(x), jax.grad(cross_entropy)(x), atol=1e-7)
    p = jax.nn.softmax(x[0])
    hessian = jax.hessian(lambda row: fdiv.f_softmax(row, "kl", q="unit"))(x[0])
    np.testing.assert_allclose(hessian, jnp.diag(p) - jnp.outer(p, p), atol=1e-7)
    tangent = jax.jvp(lambda x: fdiv.f_softmax(x, "kl", q="unit"), (x,), (x[::-1],))[1]
    np.testing.assert_allclose(tangent, jnp.sum(jax.nn.softmax(x) * x[::-1], -1), rtol=1e-5)
    q = jnp.asarray(rng.uniform(0.5, 1.5, size=(5, 130)), jnp.float32)
    dq = jax.grad(lambda q: fdiv.f_softmax(x, "kl", q=q).sum())(q)
    # ∂/∂q (log Σ q e^θ + 1 − Σ q) = e^θ / Σ q e^θ − 1
    weights = jnp.exp(x - jax.nn.logsumexp(x + jnp.log(q), axis=-1, keepdims=True))
    np.testing.assert_allclose(dq, weights - 1.0, atol=1e-6)
