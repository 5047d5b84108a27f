"""Fine-tune a pre-trained language model with an f-divergence loss on the response tokens,
evaluate its answers, write one result row.

    python -m experiments.sft --config=experiments/sft/configs/arithmetic.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=base

The model starts from the latest checkpoint of the pre-training run in ``config.base.workdir``
(its architecture and vocabulary come with it). Rerunning the same command after an
interruption resumes from the latest SFT checkpoint in the run's workdir; a finished run only
re-evaluates and replaces its row in ``config.results_csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import fdiv
from experiments.common import config as config_lib
from experiments.common import entry, instructions, lm, optim, sharding, text, trainer
from experiments.common.progress import log
from experiments.sft import task

EXPERIMENT = "sft"
DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "arithmetic.py")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`config_lib.ConfigError` naming the first invalid value."""
    c = config
    config_lib.check(c, "name", bool, "expected a non-empty config name")
    config_lib.check(c, "base.workdir", bool, "expected the workdir of a pre-training run")
    config_lib.check_positive(c, "base.step", allow_zero=True)
    config_lib.check(c, "data.task", bool, "expected a reasoning-gym dataset name")
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
    for key in ("data.train_size", "data.test_size", "data.seq_len"):
        config_lib.check_positive(c, key)
    config_lib.check(c, "data.test_fraction", lambda f: 0 < f < 1, "expected a number in (0, 1)")
    for key in ("optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm"):
        config_lib.check_positive(c, key, allow_zero=True)
    for key in ("train.eval_every_steps", "train.stop_after_steps", "eval.max_new_tokens"):
        config_lib.check_positive(c, key, allow_zero=True)
    devices = jax.device_count()
    config_lib.check(
        c, "train.batch_size", lambda b: b % devices == 0, f"not divisible by {devices} devices"
    )


def run(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Fine-tunes (resuming if possible), evaluates and writes the result row, which it returns.

    Returns None when ``train.stop_after_steps`` stopped training before the final step.
    """
    run_name, workdir = entry.start(EXPERIMENT, config, validate)

    base, base_config, base_step = lm.restore_model(
        config.base.workdir, step=config.base.step or None
    )
    # The architecture and vocabulary are the pre-training run's (the base may be an SFT run).
    architecture = lm.pretraining_config(base_config)
    if architecture.model.max_len < config.data.seq_len:
        raise config_lib.ConfigError(
            f"config.data.seq_len = {config.data.seq_len} exceeds the base model's max_len "
            f"{architecture.model.max_len}"
        )
    try:
        source = instructions.InstructionSource(
            config.data, text.load_vocabulary(architecture.data.vocab)
        )
    except ValueError as e:
        raise config_lib.ConfigError(f"config.data: {e}") from e
    vocab_size = base.output_weight().shape[-1]
    if source.vocab.vocab_size > vocab_size:
        raise config_lib.ConfigError(
            f"the vocabulary {architecture.data.vocab!r} has {source.vocab.vocab_size} tokens, "
            f"more than the base model's output size {vocab_size}"
        )
    config_lib.record(workdir, config)
    log.info(
        "SFT of %s: %d training examples, %d test problems",
        config.base.workdir,
        len(source.train_problems),
        len(source.test_problems),
    )
    mesh = sharding.make_mesh()
    # The model to fine-tune is a copy of the base; for q = base the base itself stays frozen
    # in the train state's model_state.
    graphdef, params, rest = nnx.split(base, nnx.Param, ...)
    # A copy: the train step donates (frees) the state's buffers, which the base still uses.
    params = jax.tree.map(jnp.copy, params)
    frozen = base if config.loss.q == "base" else None
    base_graphdef = nnx.graphdef(base) if frozen is not None else None
    model_state = task.initial_model_state(rest, frozen)
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
    state = trainer.create_state(params, model_state, tx, jax.random.key(config.seed))
    state = sharding.replicate(state, mesh)
    evaluate = task.make_evaluate(graphdef, config, base_graphdef, source)

    loss_fn = task.make_loss_fn(graphdef, config, base_graphdef)
    train_step = trainer.make_train_step(loss_fn, tx, schedule, mesh)
    trained = trainer.resume_and_train(
        state,
        train_step,
        lambda start: source.train_batches(config.train.batch_size, config.seed, start),
        workdir=workdir,
        mesh=mesh,
        train_cfg=config.train,
        examples_per_step=config.train.batch_size,
        eval_fn=evaluate,
    )
    base_columns = {
        "base_workdir": config.base.workdir,
        "base_step": base_step,
        "base_divergence": base_config.loss.divergence,
    }
    return entry.finish(EXPERIMENT, config, run_name, trained, evaluate, columns=base_columns)


def main(argv: list[str], config: ml_collections.ConfigDict) -> None:
    """The command line (``__main__`` defines ``--config``)."""
    entry.command_line(run, argv, config, (lm.ModelRestoreError, text.DatasetMissingError))
