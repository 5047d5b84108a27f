"""The Transformer language model: causality, output layer, dtypes, sizes, and restore_model."""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import fdiv
from experiments.common import checkpoint, lm, trainer, transformer
from experiments.common import config as config_lib

VOCAB = 61


def _config(**model) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        num_layers=2,
        d_model=32,
        num_heads=4,
        mlp_dim=64,
        positions="rotary",
        max_len=24,
        tie_embeddings=True,
        dtype="float32",
    )
    c.model.update(model)
    return c


VARIANTS = [
    {},
    {"positions": "learned", "tie_embeddings": False, "mlp": "swiglu"},
    {"dtype": "bfloat16"},
]


@pytest.mark.parametrize("model_cfg", VARIANTS, ids=["rotary-tied", "learned-untied", "bf16"])
def test_later_tokens_never_change_earlier_outputs(model_cfg):
    model = transformer.Transformer(_config(**model_cfg).model, VOCAB, rngs=nnx.Rngs(0))
    inputs = jax.random.randint(jax.random.key(1), (3, 20), 0, VOCAB)
    changed = inputs.at[:, 12:].set((inputs[:, 12:] + 1) % VOCAB)
    logits, logits_changed = model(inputs), model(changed)
    assert logits.dtype == jnp.float32 and logits.shape == (3, 20, VOCAB)
    np.testing.assert_array_equal(logits[:, :12], logits_changed[:, :12])
    # The change is visible from its own position on: the test can fail.
    assert np.abs(logits[:, 12:] - logits_changed[:, 12:]).max() > 1e-3


@pytest.mark.parametrize("model_cfg", VARIANTS, ids=["rotary-tied", "learned-untied", "bf16"])
def test_logits_are_hidden_times_output_weight_and_the_fused_loss_agrees(model_cfg):
    cfg = _config(**model_cfg).model
    model = transformer.Transformer(cfg, VOCAB, rngs=nnx.Rngs(0))
    inputs = jax.random.randint(jax.random.key(2), (2, 16), 0, VOCAB)
    targets = jnp.roll(inputs, -1, axis=1)
    hidden, weight = model.hidden(inputs), model.output_weight()
    assert hidden.dtype == weight.dtype == jnp.dtype(cfg.dtype)
    assert hidden.shape == (2, 16, cfg.d_model) and weight.shape == (cfg.d_model, VOCAB)
    if cfg.tie_embeddings:
        np.testing.assert_array_equal(weight, model.embed.embedding[...].T.astype(weight.dtype))
    logits = model(inputs)
    np.testing.assert_allclose(
        logits, jnp.einsum("bld,dv->blv", hidden, weight, preferred_element_type=jnp.float32)
    )
    # Initial logits are about unit scale (neither saturated nor flat).
    assert 0.3 < float(logits.std()) < 3
    fused = fdiv.fused_linear_fdiv_loss(
        hidden.reshape(-1, cfg.d_model), weight, targets.reshape(-1), "alpha:1.5", q="unit"
    )
    unfused = fdiv.fdiv_loss_with_integer_labels(logits, targets, "alpha:1.5", q="unit")
    tol = 1e-5 if cfg.dtype == "float32" else 2e-2
    np.testing.assert_allclose(fused, unfused.reshape(-1), rtol=tol, atol=tol)


def test_parameters_are_float32_in_bfloat16_mode():
    model = transformer.Transformer(_config(dtype="bfloat16").model, VOCAB, rngs=nnx.Rngs(0))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_sequences_longer_than_max_len_are_refused():
    model = transformer.Transformer(_config().model, VOCAB, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceeds the model's max_len 24"):
        model(jnp.zeros((1, 25), jnp.int32))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_heads", 5, "not divisible by num_heads=5"),
        ("num_heads", 32, "even head dimension"),
        ("positions", "alibi", "expected one of rotary, learned"),
        ("mlp", "relu", "expected one of gelu, swiglu"),
        ("dtype", "float16", "expected one of float32, bfloat16"),
        ("num_layers", 0, "expected a number > 0"),
    ],
)
def test_bad_model_configs_are_clear_errors(key, value, message):
    config = _config(**{key: value})
    with pytest.raises(config_lib.ConfigError, match=rf"config\.model\.\w+ = .*{message}"):
        transformer.validate(config)


def test_sizes_of_the_real_scale_shapes():
    # GPT-2-small-like and ~1B shapes, counted abstractly (nothing is allocated).
    def count(**model):
        cfg = _config(**model).model
        return transformer.num_params(
            nnx.eval_shape(lambda: transformer.Transformer(cfg, 32_000, rngs=nnx.Rngs(0)))
        )

    assert 100e6 < count(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072) < 120e6
    assert 0.9e9 < count(num_layers=18, d_model=2048, num_heads=16, mlp_dim=8192) < 1.1e9


def _save_run(workdir: Path, config: ml_collections.ConfigDict, model: nnx.Module) -> None:
    """A workdir as a pre-training run leaves it: config.json and a TrainState checkpoint."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = trainer.create_state(params, rest, optax.adamw(1e-3), jax.random.key(0))
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=1)
    ckpt.save(7, state, {"train_time_s": 0.0})
    ckpt.close()
    config_lib.record(workdir, config)


def test_restore_model_gives_back_the_saved_model(tmp_path):
    config = _config(positions="learned", tie_embeddings=False)
    model = transformer.Transformer(config.model, VOCAB, rngs=nnx.Rngs(3))
    _save_run(tmp_path, config, model)
    restored, restored_config, step = lm.restore_model(tmp_path)
    assert step == 7
    assert restored_config.model.to_dict() == config.model.to_dict()
    inputs = jnp.arange(10)[None] % VOCAB
    np.testing.assert_array_equal(restored(inputs), model(inputs))


def test_restore_model_errors(tmp_path):
    with pytest.raises(lm.ModelRestoreError, match="not the workdir of a pre-training run"):
        lm.restore_model(tmp_path / "nowhere")
    config = _config()
    config_lib.record(tmp_path, config)
    with pytest.raises(lm.ModelRestoreError, match="no checkpoint"):
        lm.restore_model(tmp_path)
    _save_run(tmp_path, config, transformer.Transformer(config.model, VOCAB, rngs=nnx.Rngs(0)))
    config.model.d_model = 64
    config_lib.record(tmp_path, config)
    with pytest.raises(lm.ModelRestoreError, match=r"does not match its config.model.*\(32, 96\)"):
        lm.restore_model(tmp_path)


def test_restore_model_refuses_an_unfinished_run_unless_its_step_is_asked(tmp_path):
    config = _config()
    config.train = ml_collections.ConfigDict({"steps": 10})
    model = transformer.Transformer(config.model, VOCAB, rngs=nnx.Rngs(0))
    _save_run(tmp_path, config, model)  # Its checkpoint is step 7.
    with pytest.raises(lm.ModelRestoreError, match="unfinished: latest checkpoint step 7 of 10"):
        lm.restore_model(tmp_path)
    assert lm.restore_model(tmp_path, step=7)[2] == 7
    config.train.steps = 7
    config_lib.record(tmp_path, config)
    assert lm.restore_model(tmp_path)[2] == 7
