"""Train an image classifier with an f-divergence loss, evaluate it, write one result row.

    python -m experiments.classification \\
        --config=experiments/classification/configs/fashion_mnist.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=uniform

Rerunning the same command after an interruption resumes from the latest checkpoint in the
run's workdir and finishes at the same final step; a finished run only re-evaluates and replaces
its row. The row goes to ``config.results_csv`` (see ``experiments.common.results``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

import fdiv
from experiments.classification import task
from experiments.common import config as config_lib
from experiments.common import data, entry, models, optim, sharding, trainer

EXPERIMENT = "classification"
DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "fashion_mnist.py")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`config_lib.ConfigError` naming the first invalid value."""
    c = config
    config_lib.check(c, "name", bool, "expected a non-empty config name")
    config_lib.check_one_of(c, "data.name", data.NUM_CLASSES)
    config_lib.check_one_of(c, "data.augment", task.AUGMENTATIONS)
    config_lib.check_one_of(c, "model.name", models.NAMES)
    config_lib.check_one_of(c, "model.dtype", ("float32", "bfloat16"))
    config_lib.check_one_of(c, "model.stem", ("imagenet", "cifar"))
    config_lib.check_one_of(c, "loss.q", task.REFERENCE_MEASURES)
    config_lib.check_one_of(c, "optim.name", optim.NAMES)
    config_lib.check_one_of(c, "optim.schedule", optim.SCHEDULES)
    try:
        fdiv.get_generator(c.loss.divergence)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.loss.divergence = {c.loss.divergence!r}: {e}") from e
    for key in ("optim.learning_rate", "train.steps", "train.batch_size", "eval.batch_size"):
        config_lib.check_positive(c, key)
    for key in ("train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints"):
        config_lib.check_positive(c, key)
    for key in ("optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm"):
        config_lib.check_positive(c, key, allow_zero=True)
    for key in ("data.train_size", "data.test_size", "train.eval_every_steps"):
        config_lib.check_positive(c, key, allow_zero=True)
    config_lib.check_positive(c, "train.stop_after_steps", allow_zero=True)
    config_lib.check_positive(c, "eval.ece_bins")
    devices = jax.device_count()
    for key in ("train.batch_size", "eval.batch_size"):
        config_lib.check(c, key, lambda b: b % devices == 0, f"not divisible by {devices} devices")
    if c.loss.q == "prior" and c.data.name in data.STREAMED:
        raise config_lib.ConfigError(
            f"config.loss.q = 'prior' needs the training labels in memory; {c.data.name} is "
            "streamed. Use 'uniform' (its classes are close to balanced)."
        )


def run(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Trains (resuming if possible), evaluates and writes the result row, which it returns.

    Returns None when ``train.stop_after_steps`` stopped training before the final step.
    """
    run_name, workdir = entry.start(EXPERIMENT, config, validate)

    source = data.make_source(config.data)
    config_lib.record(workdir, config)
    prior = source.class_prior() if config.loss.q == "prior" else None
    mesh = sharding.make_mesh()
    backbone = models.make_model(
        config.model,
        image_shape=source.image_shape,
        num_classes=source.num_classes,
        rngs=nnx.Rngs(config.seed),
    )
    model = task.Classifier(backbone, source.num_classes, learn_q=config.loss.q == "learned")
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
    state = trainer.create_state(params, model_state, tx, jax.random.key(config.seed))
    state = sharding.replicate(state, mesh)
    loss_fn = task.make_loss_fn(graphdef, config, prior)
    evaluate = task.make_evaluate(graphdef, config, prior, source, mesh)

    trained = trainer.resume_and_train(
        state,
        trainer.make_train_step(loss_fn, tx, schedule, mesh),
        lambda start: source.train_batches(config.train.batch_size, config.seed, start),
        workdir=workdir,
        mesh=mesh,
        train_cfg=config.train,
        examples_per_step=config.train.batch_size,
        eval_fn=evaluate,
    )
    return entry.finish(EXPERIMENT, config, run_name, trained, evaluate)


def main(argv: list[str], config: ml_collections.ConfigDict) -> None:
    """The command line (``__main__`` defines ``--config``)."""
    entry.command_line(run, argv, config, (data.DatasetMissingError,))
