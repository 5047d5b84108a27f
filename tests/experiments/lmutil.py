"""A tiny pre-trained-model workdir for the SFT and distillation tests, written directly with the
machinery that ``python -m experiments.pretrain`` uses (config record + orbax train state), so
that the tests need neither a pre-training run nor its corpus."""

from pathlib import Path

import jax
import ml_collections
import optax
from flax import nnx

from experiments.common import checkpoint, text, trainer, transformer
from experiments.common import config as config_lib


def model_config(**changes) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "num_layers": 1,
            "d_model": 16,
            "num_heads": 2,
            "mlp_dim": 32,
            "positions": "rotary",
            "max_len": 80,
            "tie_embeddings": True,
            "dtype": "float32",
        }
    )
    cfg.update(changes)
    return cfg


def save_pretrained(workdir: Path, *, seed: int = 0, **model_changes) -> Path:
    """A randomly initialised byte-vocabulary Transformer saved as a KL pre-training run of the
    KJV Bible at step 1 (what ``lm.restore_model`` reads); returns ``workdir``."""
    config = ml_collections.ConfigDict()
    config.model = model_config(**model_changes)
    config.data = text.data_config(vocab="byte", seq_len=32)
    config.loss = ml_collections.ConfigDict({"divergence": "kl", "q": "uniform"})
    vocab_size = text.load_vocabulary("byte").vocab_size
    model = transformer.Transformer(config.model, vocab_size, rngs=nnx.Rngs(seed))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = trainer.create_state(params, rest, optax.sgd(0.1), jax.random.key(seed))
    config_lib.record(workdir, config)
    saver = checkpoint.Checkpointer(workdir / "checkpoints", keep=1)
    saver.save(1, state, {"train_time_s": 0.0})
    saver.close()
    return workdir
