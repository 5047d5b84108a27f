"""Pre-train a Transformer language model with an f-divergence loss, validate it, write its rows.

    python -m experiments.pretrain --config=experiments/pretrain/configs/tiny.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=unit

The loss is ``fdiv.fused_linear_fdiv_loss`` on the model's last hidden states (the fused LM head:
no ``[tokens, vocab]`` logits in memory) with the reference measure ``uniform``, ``unit`` or
``unigram`` (the training split's token frequencies). Validation (every
``train.eval_every_steps`` and at the end) reports every metric of ``lm_eval.evaluate_lm``, for
the model's operator and for softmax of the same logits. After training a greedy sample from
``config.sample.prompt`` (the model's operator) is printed in the log.

Rerunning the same command after an interruption resumes from the latest checkpoint in the
run's workdir and finishes at the same final step; a finished run only re-validates and replaces
its rows. The final metrics go to ``config.results_csv`` (one row per run) and the validation
curve, read from the run's ``metrics.jsonl``, to ``config.curves_csv`` (one row per validation;
a rerun replaces the run's rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

import fdiv
from experiments.common import (
    checkpoint,
    entry,
    optim,
    progress,
    results,
    sharding,
    text,
    text_tasks,
    trainer,
    transformer,
)
from experiments.common import config as config_lib
from experiments.common.progress import log
from experiments.pretrain import task

EXPERIMENT = "pretrain"
DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny.py")
# Keys that may change between a run and its resumption besides entry.RESUMABLE_CHANGES.
RESUMABLE_CHANGES = ("curves_csv", "sample.", "sharding.", "train.eval_every_steps")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`config_lib.ConfigError` naming the first invalid value."""
    c = config
    config_lib.check(c, "name", bool, "expected a non-empty config name")
    config_lib.check_one_of(c, "data.name", text_tasks.CORPORA)
    config_lib.check_one_of(c, "data.vocab", text_tasks.VOCABULARIES)
    config_lib.check(c, "data.seq_len", lambda n: isinstance(n, int) and n > 0, "expected > 0")
    transformer.validate(c)
    max_len = c.model.max_len
    config_lib.check(c, "data.seq_len", lambda n: n <= max_len, f"exceeds model.max_len={max_len}")
    config_lib.check_one_of(c, "loss.q", task.REFERENCE_MEASURES)
    config_lib.check_one_of(c, "optim.name", optim.NAMES)
    config_lib.check_one_of(c, "optim.schedule", optim.SCHEDULES)
    config_lib.check_one_of(c, "sharding.fsdp", (True, False))
    try:
        fdiv.get_generator(c.loss.divergence)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.loss.divergence = {c.loss.divergence!r}: {e}") from e
    for key in ("optim.learning_rate", "train.steps", "train.batch_size", "eval.batch_size"):
        config_lib.check_positive(c, key)
    for key in ("train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints"):
        config_lib.check_positive(c, key)
    for key in ("loss.chunk_size", "sharding.fsdp_min_size"):
        config_lib.check_positive(c, key)
    for key in ("optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm"):
        config_lib.check_positive(c, key, allow_zero=True)
    for key in ("train.eval_every_steps", "train.stop_after_steps", "eval.max_batches"):
        config_lib.check_positive(c, key, allow_zero=True)
    config_lib.check_positive(c, "sample.max_new_tokens", allow_zero=True)
    devices = jax.device_count()
    for key in ("train.batch_size", "eval.batch_size"):
        config_lib.check(c, key, lambda b: b % devices == 0, f"not divisible by {devices} devices")


def run(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Trains (resuming if possible), validates, prints a sample and writes the result row (which
    it returns) and the validation curve.

    Returns None when ``train.stop_after_steps`` stopped training before the final step.
    """
    run_name, workdir = entry.start(EXPERIMENT, config, validate, RESUMABLE_CHANGES)

    source = text.make_text_source(config.data)
    config_lib.record(workdir, config)
    q = task.reference_measure(config.loss.q, source)
    mesh = sharding.make_mesh()
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps)

    def split_model():
        model = transformer.Transformer(config.model, source.vocab_size, rngs=nnx.Rngs(config.seed))
        return nnx.split(model, nnx.Param, ...)

    def init_state() -> trainer.TrainState:
        _, params, model_state = split_model()
        return trainer.create_state(params, model_state, tx, jax.random.key(config.seed))

    # The state is created in place, already sharded: a large model never sits whole on one device.
    graphdef = nnx.eval_shape(split_model)[0]
    abstract = jax.eval_shape(init_state)
    num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    log.info("model: %.2fM parameters, vocabulary %d", num_params / 1e6, source.vocab_size)
    state_sharding = sharding.state_sharding(
        abstract, mesh, fsdp=config.sharding.fsdp, min_size=config.sharding.fsdp_min_size
    )
    state = jax.jit(init_state, out_shardings=state_sharding)()
    bind_logits = task.make_logits_fn(graphdef, mesh)
    evaluate = task.make_evaluate(bind_logits, config, q, source)
    if _fresh_start(workdir, config.train.keep_checkpoints):
        # The start of the validation curve: the initial model (a resumed run already has it).
        initial = evaluate(state)
        if jax.process_index() == 0:
            writer = progress.MetricsWriter(workdir / "metrics.jsonl", resume_step=-1)
            writer.write(0, "test", initial)
    tokens_per_step = config.train.batch_size * config.data.seq_len

    trained = trainer.resume_and_train(
        state,
        trainer.make_train_step(
            task.make_loss_fn(graphdef, config, q), tx, schedule, mesh, state_sharding
        ),
        lambda start: source.train_batches(config.train.batch_size, config.seed, start),
        workdir=workdir,
        mesh=mesh,
        train_cfg=config.train,
        examples_per_step=tokens_per_step,  # The logged "ex/s" are tokens per second.
        eval_fn=evaluate,
    )
    row = entry.finish(
        EXPERIMENT,
        config,
        run_name,
        trained,
        evaluate,
        split="val",
        throughput="train_tokens_per_s",
        columns={"num_params": num_params},
    )
    if row is None:
        return None
    result, writer = trained
    if config.sample.max_new_tokens:
        text_out = task.sample(bind_logits(result.state), config, q, source)
        log.info("greedy sample (%s operator): %r", config.loss.divergence, text_out)
    if jax.process_index() == 0:
        # The row's identity columns; curve rows carry their own step.
        run_cols = {k: row[k] for k in results.LEADING if k != "steps"}
        curve = task.curve_rows(writer.path, run_cols, row["git_commit"])
        results.replace_run_rows(config.curves_csv, run_cols, curve)
        log.info("%d validation rows written to %s", len(curve), config.curves_csv)
    return row


def _fresh_start(workdir: Path, keep: int) -> bool:
    """Whether the run in ``workdir`` has no checkpoint yet (training starts from step 0)."""
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", keep=keep)
    try:
        return checkpointer.latest_step() is None
    finally:
        checkpointer.close()


def main(argv: list[str], config: ml_collections.ConfigDict) -> None:
    """The command line (``__main__`` defines ``--config``)."""
    entry.command_line(run, argv, config, (text.DatasetMissingError,))
