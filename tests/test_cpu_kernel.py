"""The CPU kernels of the root: power-law generators (power_root.cc) and Jensen–Shannon
(js_root.cc), see fdiv/cpu_kernel.py.

Its accuracy on random and adversarial rows is tested with every "auto" case of
test_solvers.py, and its edge cases (masks, NaN, empty rows, leading axes, vmap, half precision)
with the operators' and losses' tests, which all run "auto" on CPU. Here: that "auto" does use
it, that it agrees with the JAX Newton solver where the other tests use shared q, that the value
it computes has the derivatives of the JAX path, and the fallback without it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import ref_solve

import fdiv
from fdiv import cpu_kernel
from fdiv import root_finding as rf
from fdiv.divergences import get_generator

SPARSE = ["alpha:1.5", "alpha:2", "chi2", "alpha:1.25", f"alpha:{4 / 3!r}"]
POLES = ["reverse_kl", "hellinger", "alpha:0.5", "alpha:0.75"]
POWER_LAWS = SPARSE + POLES
KERNELS = [*POWER_LAWS, "js"]


def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize(
    "divergence, target",
    [
        ("alpha:1.5", "fdiv_power_root"),
        ("chi2", "fdiv_power_root"),
        ("reverse_kl", "fdiv_power_root"),
        ("js", "fdiv_js_root"),
    ],
)
def test_auto_uses_the_kernel_on_cpu(divergence, target):
    x = jnp.zeros((4, 16))
    assert cpu_kernel.available()
    labels = jnp.zeros(4, int)
    auto = _lowered(lambda x: fdiv.fdiv_loss_with_integer_labels(x, labels, divergence), x)
    assert target in auto
    newton = _lowered(lambda x: fdiv.f_softargmax(x, divergence, solver="newton"), x)
    assert target not in newton


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


@pytest.mark.parametrize("divergence", KERNELS)
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


@pytest.mark.parametrize("q", ["uniform", "unit"])
def test_the_guess_from_the_last_row_leaves_the_root(q, rng):
    """The sparse laws' first pass over a row also takes the sums at a guess from the thread's
    last row (rows of one batch run in order on one thread): rows alternating in scale and
    offset put the guess above the root, far below it or next to it. Each row solved alone (no
    guess) gets the same probabilities, and so does the JAX Newton solver."""
    scales = np.array([1.0, 30.0, 0.1, 2.0, 2.0, 2.0, 5.0, 1.0])
    offsets = np.array([0.0, -50.0, 1000.0, 0.0, 0.5, -0.5, 3.0, 0.0])
    x = jnp.asarray(rng.normal(size=(8, 2000)) * scales[:, None] + offsets[:, None], jnp.float32)
    for divergence in ("alpha:1.5", "alpha:2", "chi2"):
        together = fdiv.f_softargmax(x, divergence, q=q)
        alone = [fdiv.f_softargmax(x[i : i + 1], divergence, q=q) for i in range(len(x))]
        np.testing.assert_allclose(together, jnp.concatenate(alone), atol=1e-6, err_msg=divergence)
        newton = fdiv.f_softargmax(x, divergence, q=q, solver="newton")
        np.testing.assert_allclose(together, newton, atol=2e-6, err_msg=divergence)


@pytest.mark.parametrize(
    "divergence", ["alpha:1.5", "chi2", "alpha:1.25", "reverse_kl", "hellinger", "js"]
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


@pytest.mark.parametrize("q", ["uniform", "unit", "array"])
def test_js_classes_next_to_the_pole(q, rng):
    """Jensen–Shannon's kernel takes each class's e^r from exponentials stored once per row,
    except where e^r > 1/2: there the mass 1/expm1(−r) needs r itself (in double). Rows with
    hundreds of classes there (near ties at the top, every class tied), one class ~1e-5 below
    the pole (uniform q over 32768 classes, 2·N(0, 1) logits) or a few of them, and a tail of
    classes past the last vector of sixteen, match a float64 bisection."""
    v = 32768 + 5
    top = np.arange(v) < 600
    x = np.stack(
        [
            np.where(top, rng.uniform(-0.3, 0.0, v), rng.normal(size=v) - 4.0),
            np.zeros(v),
            rng.normal(size=v) * 2.0,
            np.where(np.arange(v) >= v - 3, 2.0, rng.normal(size=v)),
        ]
    ).astype(np.float32)
    q_arr = rng.uniform(0.0, 2.0, size=x.shape).astype(np.float32) if q == "array" else q
    p = fdiv.f_softargmax(jnp.asarray(x), "js", q=q_arr)
    ref = ref_solve(x, "js", q_arr)
    np.testing.assert_allclose(p, ref.p, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    value = fdiv.f_softmax(jnp.asarray(x), "js", q=q_arr) - ref.shift
    np.testing.assert_allclose(value, ref.value_rel, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("q", ["uniform", "unit", "array"])
def test_reverse_kl_value_from_the_kernel(q, rng):
    """Reverse KL's ``f*`` is a log: its kernel sums ``log(τ + 1 − θ_j)`` in the pass it expects
    to be the last (or one more at the root), leaving masked classes out. Rows with masked
    classes and classes past the last vector of eight match a float64 bisection."""
    x = (rng.normal(size=(3, 4099)) * np.array([[1.0], [3.0], [0.01]])).astype(np.float32)
    where = rng.uniform(size=x.shape) > 0.1
    q_arr = rng.uniform(0.0, 2.0, size=x.shape).astype(np.float32) if q == "array" else q
    value = fdiv.f_softmax(jnp.asarray(x), "reverse_kl", q=q_arr, where=jnp.asarray(where))
    ref = ref_solve(x, "reverse_kl", q_arr, where=where)
    np.testing.assert_allclose(value - ref.shift, ref.value_rel, rtol=1e-6, atol=1e-6)


def test_derivative_in_q_matches_the_jax_path(rng):
    x = jnp.asarray(rng.normal(size=(3, 30)), jnp.float32)
    q = jnp.asarray(rng.uniform(0.5, 1.5, size=(3, 30)), jnp.float32)

    def value(q, solver):
        return fdiv.f_softmax(x, "alpha:1.5", q=q, solver=solver).sum()

    np.testing.assert_allclose(jax.grad(value)(q, "auto"), jax.grad(value)(q, "newton"), atol=1e-6)


@pytest.mark.parametrize("divergence", ["alpha:1.5", "hellinger", "js", "reverse_kl"])
def test_value_for_edge_rows(divergence):
    """An empty row has value −inf, a NaN row NaN, ties and a single class their closed forms."""
    x = jnp.array(
        [[-jnp.inf] * 4, [0.0, jnp.nan, 1.0, 2.0], [3.0] * 4, [5.0, -jnp.inf, -jnp.inf, -jnp.inf]]
    )
    auto = fdiv.f_softmax(x, divergence, q="unit")
    newton = fdiv.f_softmax(x, divergence, q="unit", solver="newton")
    assert auto[0] == -jnp.inf and jnp.isnan(auto[1])
    np.testing.assert_allclose(auto[2:], newton[2:], rtol=1e-6)


def test_without_the_kernel_auto_is_newton(monkeypatch):
    monkeypatch.setenv("FDIV_CPU_KERNEL", "0")
    cpu_kernel.available.cache_clear()
    try:
        assert not rf.uses_kernel(get_generator("alpha:1.5"), "auto", None, jnp.float32)
        x = jnp.zeros((2, 8))
        assert "fdiv_power_root" not in _lowered(lambda x: fdiv.f_softargmax(x, "alpha:1.5"), x)
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


@pytest.mark.parametrize("divergence", ["reverse_kl", "hellinger", "js"])
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
    below = get_generator(divergence).conj_grad_rel(jnp.array([-1.0, -3.0, -6.0]))
    others = np.array([0.5, 0.3, 0.2]) * np.asarray(below, np.float64)
    expected = np.concatenate([[1.0 - others.sum()], others])
    for solver in ("auto", "newton"):
        p = fdiv.f_softargmax(x, divergence, q=q, solver=solver)
        np.testing.assert_allclose(p[0], expected, rtol=1e-6, err_msg=solver)
    assert np.isfinite(fdiv.f_softmax(x, divergence, q=q)).all()


def test_the_fused_head_keeps_the_jax_solver():
    """Its time is its matmuls', and the kernel's operand would keep a chunk's logits alive
    beside their gradient (the head's peak memory 0.113x → 0.131x of the unfused path)."""
    hidden, weight = jnp.zeros((6, 4)), jnp.zeros((4, 16))
    labels = jnp.zeros(6, int)

    def head(h, w):
        return fdiv.fused_linear_fdiv_loss(h, w, labels, "alpha:1.5", reduction="sum")

    assert "fdiv_power_root" not in _lowered(jax.grad(head, argnums=(0, 1)), hidden, weight)
