"""Language-model helpers shared by the experiments that start from a trained model (SFT,
distillation): load a trained :class:`~experiments.common.transformer.Transformer` from the
workdir of a ``python -m experiments.pretrain`` run or of a ``python -m experiments.sft`` run.

Such a workdir holds ``config.json`` (the run's config, :func:`config_lib.record`) and
``checkpoints/<step>/`` (orbax, :class:`~experiments.common.checkpoint.Checkpointer`) with the
whole :class:`~experiments.common.trainer.TrainState`; only its parameters are read here (an SFT
state's ``params`` are the fine-tuned Transformer's, like a pre-training state's). An SFT run
records no ``model`` config: its architecture and vocabulary are those of the pre-training run
in its ``base.workdir`` (:func:`pretraining_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from experiments.common import transformer


class ModelRestoreError(FileNotFoundError):
    """The workdir holds no usable pre-trained model; the message says what is wrong."""


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``"blocks/0/attn/qkv/kernel/value" -> shape`` for every array leaf of a saved tree."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): (
            tuple(leaf.shape)
        )
        for path, leaf in flat
    }


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config recorded in a run's workdir; :class:`ModelRestoreError` when there is none."""
    config_path = Path(workdir) / "config.json"
    if not config_path.exists():
        raise ModelRestoreError(
            f"{config_path} not found: {workdir} is not the workdir of a pre-training run "
            "(python -m experiments.pretrain --config.workdir=...) or of an SFT run."
        )
    return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def pretraining_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the pre-training run behind a run's ``config``: the config itself when it
    records a ``model`` (a pre-training run), else that of the run in its ``base.workdir`` (a
    fine-tuning run such as SFT), followed until a pre-training run."""
    seen = []
    while "model" not in config:
        base = config.base.get("workdir") if "base" in config else None
        if not base or base in seen:
            raise ModelRestoreError(
                f"the run config {config.get('name', '?')!r} has neither a model nor a "
                "base.workdir leading to a pre-training run"
            )
        seen.append(base)
        config = read_config(base)
    return config


def restore_model(
    workdir: str | Path, *, step: int | None = None
) -> tuple[transformer.Transformer, ml_collections.ConfigDict, int]:
    """The Transformer of a pre-training or SFT run, with the parameters of its latest checkpoint
    (or of ``step``), the run's own config (:func:`pretraining_config` gives the
    architecture's and vocabulary's) and the step of the checkpoint read (for the result rows).

    Without ``step``, an unfinished run (latest checkpoint below its recorded ``train.steps``)
    is refused: starting from a half-trained model by accident would silently change a result.

    The vocabulary size is read from the checkpoint (the embedding's shape), so no corpus is
    needed. Raises :class:`ModelRestoreError` when the workdir, its config or its checkpoints
    are missing, or when the checkpoint's parameter shapes do not match the recorded
    ``config.model`` (e.g. a workdir reused with another model size).
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    model_cfg = pretraining_config(config).model
    manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "record": ocp.JsonCheckpointHandler(),
        },
    )
    try:
        steps = manager.all_steps()
        if not steps:
            raise ModelRestoreError(
                f"no checkpoint in {workdir / 'checkpoints'}: the run saved none yet."
            )
        if step is None:
            step = max(steps)
            planned = config.get("train", {}).get("steps")
            if planned is not None and step < planned:
                raise ModelRestoreError(
                    f"{workdir}: run unfinished: latest checkpoint step {step} of {planned}; "
                    "finish it first (rerun its command) or ask for that step explicitly."
                )
        if step not in steps:
            raise ModelRestoreError(f"no checkpoint of step {step} in {workdir}; it has {steps}")
        saved = manager.item_metadata(step)["state"].tree["params"]
        saved_shapes = _shapes(saved)
        vocab_size = saved_shapes.get("embed/embedding/value", (None,))[0]
        if vocab_size is None:
            raise ModelRestoreError(f"checkpoint {step} in {workdir} holds no Transformer")
        abstract = nnx.eval_shape(
            lambda: transformer.Transformer(model_cfg, vocab_size, rngs=nnx.Rngs(0))
        )
        graphdef, target, rest = nnx.split(abstract, nnx.Param, ...)
        mismatched = [
            f"{k}: checkpoint {saved_shapes.get(k)} vs config {v}"
            for k, v in _shapes(target).items()
            if saved_shapes.get(k) != v
        ] + [f"{k}: only in the checkpoint" for k in saved_shapes.keys() - _shapes(target).keys()]
        if mismatched:
            raise ModelRestoreError(
                f"checkpoint {step} in {workdir} does not match its config.model: "
                + "; ".join(mismatched[:5])
            )
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target
        )
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item={"params": target},
                    restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
                    partial_restore=True,
                )
            ),
        )
    finally:
        manager.close()
    return nnx.merge(graphdef, restored.state["params"], rest), config, step
