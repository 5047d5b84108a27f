"""Distillation: the soft-label loss (zero with zero gradient at the teacher's target), the
teacher's targets, and end-to-end runs from a tiny teacher (smoke, clear errors)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from experiments.common import reference
from experiments.distill import task

N, D, V = 12, 8, 23


def _student(seed: int = 0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (N, D)), jax.random.normal(k2, (D, V))


def _teacher_logits_for(p: jax.Array, temperature: float) -> jax.Array:
    """Teacher logits whose softmax at ``temperature`` is exactly ``p`` (−inf where p = 0)."""
    return temperature * jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)


@pytest.mark.parametrize(
    ("divergence", "q", "top_k", "temperature"),
    [
        ("kl", "uniform", 0, 1.0),
        ("alpha:1.5", "uniform", 0, 2.0),
        ("alpha:1.5", "unit", 6, 1.0),  # entmax-1.5 of these logits has at most 6 tokens
        ("chi2", "unit", 6, 1.0),
        ("js", "uniform", 0, 1.0),
        ("reverse_kl", "unit", 0, 0.5),
    ],
)
def test_loss_and_gradient_vanish_when_the_student_operator_equals_the_target(
    divergence, q, top_k, temperature
):
    hidden, weight = _student()
    hidden = 3.0 * hidden  # Sharp enough for the sparse operators to have small supports.
    p = fdiv.f_softargmax(hidden @ weight / temperature, divergence, q=q)
    if top_k:
        assert int((p > 0).sum(-1).max()) <= top_k
    teacher = _teacher_logits_for(p, temperature)
    mask = jnp.ones(N, bool).at[-2:].set(False)

    def loss(h, w):
        return task.distillation_loss(
            h, w, teacher, mask, divergence, q, top_k=top_k, temperature=temperature
        )

    value, (d_hidden, d_weight) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, weight)
    # float32 round-off: p* − y is ~1e-6 per entry, summed over tokens into the weight's gradient.
    assert abs(float(value)) < 1e-5
    assert float(jnp.abs(d_hidden).max()) < 1e-4 and float(jnp.abs(d_weight).max()) < 1e-4
    # Elsewhere the loss is positive and the gradient is not zero: the test can fail.
    other, _ = _student(seed=1)
    value = loss(other, weight)
    assert float(value) > 1e-3
    assert float(jnp.abs(jax.grad(loss)(other, weight)).max()) > 1e-2


@pytest.mark.parametrize("divergence", ["kl", "alpha:1.5", "hellinger"])
def test_teacher_as_reference_measure_is_zero_at_constant_student_logits(divergence):
    """With q = the teacher's distribution, the operator of constant logits is the teacher."""
    _, weight = _student()
    teacher = 2.0 * jax.random.normal(jax.random.key(3), (N, V))
    mask = jnp.ones(N, bool)

    def loss(h):
        return task.distillation_loss(h, weight, teacher, mask, divergence, "teacher")

    zero = jnp.zeros((N, D))
    assert abs(float(loss(zero))) < 1e-5
    assert float(jnp.abs(jax.grad(loss)(zero)).max()) < 1e-4
    assert float(loss(_student(seed=2)[0])) > 1e-3


def test_teacher_targets_softmax_and_top_k():
    logits = jax.random.normal(jax.random.key(4), (5, V)) * 3
    full = reference.token_distribution(logits, temperature=2.0)
    np.testing.assert_allclose(full, jax.nn.softmax(logits / 2.0), rtol=1e-6)
    indices, values = reference.top_k_distribution(logits, 4, temperature=2.0)
    np.testing.assert_allclose(values.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(indices, jnp.argsort(-logits, axis=-1)[:, :4])
    # Within the kept tokens, the ratios are the teacher's.
    ratio = jnp.take_along_axis(full, indices, -1) / values
    np.testing.assert_allclose(ratio, ratio[:, :1] * jnp.ones_like(ratio), rtol=1e-5)
    with pytest.raises(ValueError, match="top_k must be in"):
        reference.top_k_distribution(logits, V + 1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        reference.token_distribution(logits, temperature=0.0)


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
    from lmutil import save_pretrained

    return save_pretrained(tmp_path_factory.mktemp("teacher"), d_model=24, num_heads=2)


@pytest.fixture
def distill_config(tmp_path, teacher_workdir):
    """The default distillation config on a tiny byte-vocabulary teacher: 3 steps, 2 batches."""
    from experiments.distill.configs import tiny

    c = tiny.get_config()
    c.teacher.workdir = str(teacher_workdir)
    c.workdir = str(tmp_path / "run")
    c.results_csv = str(tmp_path / "results.csv")
    c.model.d_model, c.model.mlp_dim, c.model.max_len = 8, 16, 32
    c.data.seq_len = 32
    c.train.batch_size = 4
    c.train.steps = 3
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 3
    c.optim.warmup_steps = 1
    c.eval.batch_size = 4
    c.eval.max_batches = 2
    return c


DISTILL_METRICS = [
    "test_agreement",
    "test_softmax_agreement",
    "test_distill_loss",
    *(f"test_{p}{m}" for p in ("", "softmax_") for m in ("loss", "accuracy", "eps_perplexity")),
    "test_softmax_perplexity",
]


@pytest.mark.parametrize(("q", "top_k"), [("uniform", 0), ("teacher", 5)])
def test_distill_run_writes_one_row(distill_config, q, top_k):
    from experiments.common import results
    from experiments.distill import main

    distill_config.loss.q, distill_config.distill.top_k = q, top_k
    row = main.run(distill_config)
    rows = results.read_rows(distill_config.results_csv)
    assert len(rows) == 1 and rows[0]["run_name"] == f"alpha1.5-{q}-seed0"
    assert rows[0]["experiment"] == "distill" and rows[0]["top_k"] == str(top_k)
    assert int(rows[0]["teacher_params"]) > int(rows[0]["student_params"])
    assert row["teacher_step"] == 1 and row["student_init_step"] is None
    for name in DISTILL_METRICS:
        assert np.isfinite(float(rows[0][name])), name
    assert 0 <= row["test_agreement"] <= 1 and row["test_distill_loss"] >= -1e-6


def test_distill_errors_are_clear(distill_config, tmp_path):
    from experiments.common import config as config_lib
    from experiments.common import lm
    from experiments.distill import main

    distill_config.teacher.workdir = str(tmp_path / "no_teacher")
    with pytest.raises(lm.ModelRestoreError, match="not the workdir of a pre-training run"):
        main.run(distill_config)
    distill_config.loss.q = "base"
    with pytest.raises(config_lib.ConfigError, match="expected one of uniform, unit, teacher"):
        main.run(distill_config)
    distill_config.loss.q = "uniform"
    distill_config.data.seq_len = 64
    with pytest.raises(config_lib.ConfigError, match=r"exceeds model\.max_len 32"):
        main.run(distill_config)


def test_evaluation_uses_the_trained_operator_of_logits_over_the_temperature(
    distill_config, teacher_workdir
):
    """Training fuses 1/T into the student's head, so evaluation must score (and decode)
    f_softargmax(logits / T), not f_softargmax(logits)."""
    import optax
    from flax import nnx

    from experiments.common import lm, lm_eval, trainer, transformer

    teacher, _, _ = lm.restore_model(teacher_workdir)
    vocab_size = teacher.output_weight().shape[-1]
    student = transformer.Transformer(distill_config.model, vocab_size, rngs=nnx.Rngs(1))
    graphdef, params, rest = nnx.split(student, nnx.Param, ...)
    state = trainer.create_state(
        params, task.initial_model_state(rest, teacher), optax.sgd(0.1), jax.random.key(0)
    )
    inputs = np.random.default_rng(0).integers(0, vocab_size, (2, 12)).astype(np.int32)
    batch = {"inputs": inputs, "targets": np.roll(inputs, -1, 1), "mask": np.ones((2, 12), bool)}

    def evaluate(temperature):
        distill_config.distill.temperature = temperature
        return task.make_evaluate(graphdef, distill_config, nnx.graphdef(teacher), lambda: [batch])(
            state
        )

    divergence = distill_config.loss.divergence
    at_two = evaluate(2.0)
    want = lm_eval.evaluate_lm(lambda x: student(x) / 2.0, [batch], divergence, "uniform")
    for key, value in want.items():
        np.testing.assert_allclose(at_two[key], value, rtol=1e-5, err_msg=key)
    p = fdiv.f_softargmax(student(inputs) / 2.0, divergence, q="uniform")
    top = teacher(inputs).argmax(-1)
    np.testing.assert_allclose(at_two["agreement"], float(jnp.mean(p.argmax(-1) == top)))
    # The temperature does change the evaluated operator: the test can fail.
    assert evaluate(1.0)["loss"] != at_two["loss"]


def test_per_batch_lm_metrics_combine_to_those_of_one_call():
    """Distillation evaluates one batch at a time (q = teacher changes per batch)."""
    from experiments.common import lm_eval

    table = jax.random.normal(jax.random.key(5), (V, V)) * 2

    def logits_fn(inputs):
        return table[inputs]

    rng = np.random.default_rng(0)
    batches = []
    for n_masked in (0, 3, 7):
        inputs = rng.integers(0, V, (2, 6)).astype(np.int32)
        mask = np.ones((2, 6), bool)
        mask.reshape(-1)[:n_masked] = False
        batches.append({"inputs": inputs, "targets": np.roll(inputs, -1, 1), "mask": mask})
    whole = lm_eval.evaluate_lm(logits_fn, batches, "alpha:1.5", "unit")
    parts = [
        (lm_eval.evaluate_lm(logits_fn, [b], "alpha:1.5", "unit"), int(b["mask"].sum()))
        for b in batches
    ]
    combined = lm_eval.combine_lm_metrics(parts)
    assert combined.keys() == whole.keys()
    for key, value in whole.items():
        np.testing.assert_allclose(combined[key], value, rtol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="no batch holds an unmasked token"):
        lm_eval.combine_lm_metrics([(parts[0][0], 0)])


# Distillation on the SFT task: an SFT-run teacher, its instruction data, task accuracy.


@pytest.fixture(scope="module")
def sft_teacher(tmp_path_factory):
    """A tiny SFT teacher: ``arithmetic_teacher.py`` on a byte-vocabulary base, 2 steps; returns
    ``(base workdir, SFT workdir, SFT result row)``."""
    from lmutil import save_pretrained

    from experiments.distill.configs import arithmetic_teacher
    from experiments.sft import main as sft_main

    tmp = tmp_path_factory.mktemp("sft_teacher")
    base = save_pretrained(tmp / "base", d_model=24, num_heads=2)
    c = arithmetic_teacher.get_config()
    c.base.workdir = str(base)
    c.workdir = str(tmp / "sft")
    c.results_csv = str(tmp / "sft.csv")
    c.data.train_size, c.data.test_size = 200, 8
    c.data.seq_len = 72  # Byte vocabulary: 67 prompt tokens, up to 2 answer tokens, eos.
    c.optim.learning_rate, c.optim.warmup_steps = 1e-2, 1
    c.train.batch_size, c.train.steps = 8, 2
    c.train.log_every_steps = c.train.checkpoint_every_steps = 2
    c.eval.batch_size = 8
    row = sft_main.run(c)
    return base, tmp / "sft", row


def test_restore_model_reads_an_sft_run(sft_teacher):
    """The SFT run's fine-tuned parameters, in the architecture of its base pre-training run."""
    from experiments.common import lm

    base_workdir, sft_workdir, _ = sft_teacher
    tuned, tuned_config, tuned_step = lm.restore_model(sft_workdir)
    base, base_config, base_step = lm.restore_model(base_workdir)
    assert (tuned_step, base_step) == (2, 1)
    assert "model" not in tuned_config and tuned_config.name == "arithmetic_teacher"
    assert lm.pretraining_config(tuned_config).to_dict() == base_config.to_dict()
    inputs = jnp.arange(12, dtype=jnp.int32)[None]
    assert tuned(inputs).shape == base(inputs).shape
    assert float(jnp.abs(tuned(inputs) - base(inputs)).max()) > 1e-4  # Fine-tuned, not the base.


@pytest.fixture
def arithmetic_config(tmp_path, sft_teacher):
    """``arithmetic.py`` on the tiny SFT teacher, the student from a tiny pre-trained model."""
    from lmutil import model_config, save_pretrained

    from experiments.distill.configs import arithmetic

    c = arithmetic.get_config()
    c.teacher.workdir = str(sft_teacher[1])
    c.student_init.workdir = str(save_pretrained(tmp_path / "student_init", seed=1))
    c.model = model_config()  # The student_init run's shape (d_model 16 < the teacher's 24).
    c.workdir = str(tmp_path / "run")
    c.results_csv = str(tmp_path / "results.csv")
    c.data.seq_len = 72
    c.train.batch_size, c.train.steps = 8, 3
    c.train.log_every_steps = c.train.checkpoint_every_steps = 3
    c.optim.warmup_steps = 1
    c.eval.batch_size = 8
    return c


@pytest.mark.parametrize("q", ["uniform", "teacher"])
def test_distill_on_the_sft_task_reports_task_accuracy(arithmetic_config, sft_teacher, q):
    from experiments.common import results
    from experiments.distill import main

    arithmetic_config.loss.q = q
    row = main.run(arithmetic_config)
    rows = results.read_rows(arithmetic_config.results_csv)
    assert len(rows) == 1 and rows[0]["config_name"] == "arithmetic"
    assert rows[0]["data_kind"] == "instructions"
    assert (row["teacher_step"], row["student_init_step"]) == (2, 1)
    assert int(rows[0]["teacher_params"]) > int(rows[0]["student_params"])
    for name in DISTILL_METRICS:
        assert np.isfinite(float(rows[0][name])), name
    for decoding in ("greedy", "softmax_greedy", "seen_greedy", "seen_softmax_greedy"):
        assert 0 <= row[f"test_{decoding}_accuracy"] <= 1, decoding
    # The teacher's greedy softmax answers on the same held-out problems as in its SFT run.
    sft_row = sft_teacher[2]
    assert row["test_teacher_greedy_accuracy"] == sft_row["test_softmax_greedy_accuracy"]
    assert 0 <= row["test_agreement"] <= 1 and row["test_distill_loss"] >= -1e-6


def test_distill_on_the_sft_task_errors_are_clear(arithmetic_config, teacher_workdir, tmp_path):
    from lmutil import save_pretrained

    from experiments.common import config as config_lib
    from experiments.distill import main

    good_teacher = arithmetic_config.teacher.workdir
    arithmetic_config.teacher.workdir = str(teacher_workdir)  # A pre-training run.
    with pytest.raises(config_lib.ConfigError, match="needs a teacher fine-tuned by"):
        main.run(arithmetic_config)
    arithmetic_config.teacher.workdir = good_teacher
    arithmetic_config.student_init.workdir = str(save_pretrained(tmp_path / "other", d_model=8))
    with pytest.raises(config_lib.ConfigError, match=r"differs from config\.model at 'd_model'"):
        main.run(arithmetic_config)
    # Same parameter shapes, another model config: refused too (not built from the init's).
    arithmetic_config.student_init.workdir = str(
        save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    )
    with pytest.raises(config_lib.ConfigError, match=r"differs from config\.model at 'dtype'"):
        main.run(arithmetic_config)
    arithmetic_config.data.kind = "sft"
    with pytest.raises(config_lib.ConfigError, match="expected one of text, instructions"):
        main.run(arithmetic_config)
