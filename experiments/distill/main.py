"""Distil a pre-trained teacher into a smaller student with a soft-label f-divergence loss,
evaluate the student, write one result row.

    python -m experiments.distill --config=experiments/distill/configs/tiny.py \\
        --config.loss.divergence=alpha:1.5 --config.loss.q=uniform

The teacher is the latest checkpoint of the run in ``config.teacher.workdir`` (a pre-training
run, or an SFT run for ``data.kind = "instructions"``); the student (``config.model``) starts
from random weights, or from the pre-training run in ``config.student_init.workdir``, and trains
on the teacher's text or instruction task. Rerunning
the same command after an interruption resumes from the latest checkpoint in the run's workdir;
a finished run only re-evaluates and replaces its row in ``config.results_csv``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

import fdiv
from experiments.common import config as config_lib
from experiments.common import entry, lm, optim, sharding, text, trainer, transformer
from experiments.common.progress import log
from experiments.distill import task

EXPERIMENT = "distill"
DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny.py")
# Keys that may change between a run and its resumption besides entry.RESUMABLE_CHANGES.
RESUMABLE_CHANGES = ("data.cache_dir",)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`config_lib.ConfigError` naming the first invalid value."""
    c = config
    config_lib.check(c, "name", bool, "expected a non-empty config name")
    config_lib.check(c, "teacher.workdir", bool, "expected the workdir of a pre-training run")
    config_lib.check_positive(c, "teacher.step", allow_zero=True)
    config_lib.check_positive(c, "student_init.step", allow_zero=True)
    config_lib.check_one_of(c, "data.kind", task.DATA_KINDS)
    transformer.validate(c)
    config_lib.check_one_of(c, "loss.q", task.REFERENCE_MEASURES)
    config_lib.check_one_of(c, "optim.name", optim.NAMES)
    config_lib.check_one_of(c, "optim.schedule", optim.SCHEDULES)
    try:
        fdiv.get_generator(c.loss.divergence)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.loss.divergence = {c.loss.divergence!r}: {e}") from e
    config_lib.check(
        c, "distill.temperature", lambda t: isinstance(t, float) and t > 0, "expected a float > 0"
    )
    config_lib.check(
        c, "distill.top_k", lambda k: isinstance(k, int) and k >= 0, "expected an integer ≥ 0"
    )
    for key in ("optim.learning_rate", "train.steps", "train.batch_size", "eval.batch_size"):
        config_lib.check_positive(c, key)
    for key in ("train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints"):
        config_lib.check_positive(c, key)
    config_lib.check_positive(c, "data.seq_len")
    config_lib.check(
        c,
        "data.seq_len",
        lambda n: n <= c.model.max_len,
        f"exceeds model.max_len {c.model.max_len}",
    )
    for key in ("optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm"):
        config_lib.check_positive(c, key, allow_zero=True)
    for key in (
        "train.eval_every_steps",
        "train.stop_after_steps",
        "eval.max_batches",
        "eval.max_new_tokens",
    ):
        config_lib.check_positive(c, key, allow_zero=True)
    devices = jax.device_count()
    for key in ("train.batch_size", "eval.batch_size"):
        config_lib.check(c, key, lambda b: b % devices == 0, f"not divisible by {devices} devices")


def run(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Distils (resuming if possible), evaluates and writes the result row, which it returns.

    Returns None when ``train.stop_after_steps`` stopped training before the final step.
    """
    run_name, workdir = entry.start(EXPERIMENT, config, validate, RESUMABLE_CHANGES)

    teacher, teacher_config, teacher_step = lm.restore_model(
        config.teacher.workdir, step=config.teacher.step or None
    )
    teacher_pretraining = lm.pretraining_config(teacher_config)
    if teacher_pretraining.model.max_len < config.data.seq_len:
        raise config_lib.ConfigError(
            f"config.data.seq_len = {config.data.seq_len} exceeds the teacher's max_len "
            f"{teacher_pretraining.model.max_len}"
        )
    # The teacher's corpus or instruction task and its vocabulary, at the student's length.
    source = task.make_source(config, teacher_config, teacher_pretraining)
    vocab_size = teacher.output_weight().shape[-1]
    student = transformer.Transformer(config.model, vocab_size, rngs=nnx.Rngs(config.seed))
    student_init_step = None
    if config.student_init.workdir:
        student, student_init_step = _initial_student(student, config)
    config_lib.record(workdir, config)
    mesh = sharding.make_mesh()
    log.info(
        "distilling %s (%d parameters) into a student of %d parameters",
        config.teacher.workdir,
        transformer.num_params(teacher),
        transformer.num_params(student),
    )
    graphdef, params, rest = nnx.split(student, nnx.Param, ...)
    teacher_graphdef = nnx.graphdef(teacher)
    model_state = task.initial_model_state(rest, teacher)
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
    state = trainer.create_state(params, model_state, tx, jax.random.key(config.seed))
    state = sharding.replicate(state, mesh)

    def validation_batches():
        batches = source.validation_batches(config.eval.batch_size)
        if config.eval.max_batches:
            batches = itertools.islice(batches, config.eval.max_batches)
        return (sharding.shard_batch(b, mesh) for b in batches)

    instruction_source = source if config.data.kind == "instructions" else None
    evaluate = task.make_evaluate(
        graphdef, config, teacher_graphdef, validation_batches, instruction_source
    )
    loss_fn = task.make_loss_fn(graphdef, config, teacher_graphdef)
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
    columns = {
        "top_k": config.distill.top_k,
        "temperature": config.distill.temperature,
        "data_kind": config.data.kind,
        "teacher_workdir": config.teacher.workdir,
        "teacher_step": teacher_step,
        "student_init_workdir": config.student_init.workdir,
        "student_init_step": student_init_step,
        "teacher_params": transformer.num_params(teacher),
        "student_params": transformer.num_params(student),
    }
    return entry.finish(EXPERIMENT, config, run_name, trained, evaluate, columns=columns)


def _initial_student(
    student: transformer.Transformer, config: ml_collections.ConfigDict
) -> tuple[transformer.Transformer, int]:
    """The model of the run in ``config.student_init.workdir`` (e.g. a pre-training run) as the
    student's starting point, and the step of its checkpoint; a :class:`config_lib.ConfigError`
    unless its model config is ``config.model`` (dtype, positions...: not only the shapes) and
    its parameter shapes, vocabulary included, are those of ``student`` (built from
    ``config.model``)."""
    init_cfg = config.student_init
    initial, initial_config, step = lm.restore_model(init_cfg.workdir, step=init_cfg.step or None)
    want_cfg = config.model.to_dict()
    have_cfg = lm.pretraining_config(initial_config).model.to_dict()
    if want_cfg != have_cfg:
        keys = want_cfg.keys() | have_cfg.keys()
        key = sorted(k for k in keys if want_cfg.get(k) != have_cfg.get(k))[0]
        raise config_lib.ConfigError(
            f"config.student_init.workdir = {init_cfg.workdir}: its model config differs from "
            f"config.model at {key!r}: {have_cfg.get(key)!r} vs {want_cfg.get(key)!r}"
        )

    def shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
        flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
        return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}

    want, have = shapes(student), shapes(initial)
    if want != have:
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        raise config_lib.ConfigError(
            f"config.student_init.workdir = {init_cfg.workdir}: its model does not have the "
            f"shapes of config.model and the teacher's vocabulary ({differ[0]}: "
            f"{have.get(differ[0])} vs {want.get(differ[0])})"
        )
    return initial, step


def main(argv: list[str], config: ml_collections.ConfigDict) -> None:
    """The command line (``__main__`` defines ``--config``)."""
    entry.command_line(run, argv, config, (lm.ModelRestoreError, text.DatasetMissingError))
