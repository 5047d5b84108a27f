"""What is particular to classification: the model wrapper, the reference measure, the loss and
the evaluation with the f-softargmax and with plain softmax of the same logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

import fdiv
from experiments.common import data, metrics, preprocess, sharding, trainer

Array = jax.Array

REFERENCE_MEASURES = ("uniform", "unit", "prior", "learned")
AUGMENTATIONS = ("none", "crop_flip")


class Classifier(nnx.Module):
    """A backbone and, for ``q = "learned"``, the logits of the reference measure.

    The learned ``q = softmax(q_logits)`` starts uniform and is trained jointly with the backbone
    (the loss is differentiable in ``q``).
    """

    def __init__(self, backbone: nnx.Module, num_classes: int, *, learn_q: bool):
        self.backbone = backbone
        self.q_logits = nnx.Param(jnp.zeros((num_classes,))) if learn_q else None

    def __call__(self, images: Array, *, train: bool) -> Array:
        return self.backbone(images, train=train)


def reference_measure(model: Classifier, q: str, prior: np.ndarray | None) -> str | Array:
    """The ``q`` argument of the fdiv functions for ``config.loss.q``."""
    if q == "learned":
        return jax.nn.softmax(model.q_logits[...])
    if q == "prior":
        return jnp.asarray(prior)
    return q  # "uniform" or "unit": fdiv knows them by name.


def make_loss_fn(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    prior: np.ndarray | None,
) -> trainer.LossFn:
    """The mean f-divergence loss of a training batch (see ``trainer.LossFn``)."""
    mean, std = data.MEAN_STD[config.data.name]
    dtype = jnp.dtype(config.model.dtype)

    def loss_fn(params, model_state, batch, rng):
        model = nnx.merge(graphdef, params, model_state)
        images = batch["image"]
        if config.data.augment == "crop_flip":
            images = preprocess.random_crop_flip(images, rng)
        logits = model(preprocess.normalize(images, mean, std, dtype), train=True)
        q = reference_measure(model, config.loss.q, prior)
        loss = fdiv.fdiv_loss_with_integer_labels(
            logits, batch["label"], config.loss.divergence, q=q
        ).mean()
        accuracy = (logits.argmax(-1) == batch["label"]).mean()
        return loss, (nnx.state(model, nnx.Not(nnx.Param)), {"accuracy": accuracy})

    return loss_fn


def make_evaluate(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    prior: np.ndarray | None,
    source: data.Source,
    mesh: Mesh,
) -> Callable[[trainer.TrainState], dict[str, float]]:
    """Evaluation on the whole test split: for the f-softargmax (with the training loss) and for
    softmax of the same logits (with the cross-entropy), ``accuracy``, ``loss``, ``ece`` and
    ``support_size``; softmax metrics carry a ``softmax_`` prefix."""
    mean, std = data.MEAN_STD[config.data.name]
    dtype = jnp.dtype(config.model.dtype)
    num_bins, divergence = config.eval.ece_bins, config.loss.divergence

    @jax.jit
    def eval_step(params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        logits = model(preprocess.normalize(batch["image"], mean, std, dtype), train=False)
        labels, mask = batch["label"], batch["mask"]
        q = reference_measure(model, config.loss.q, prior)
        probs = fdiv.f_softargmax(logits, divergence, q=q)
        loss = fdiv.fdiv_loss_with_integer_labels(logits, labels, divergence, q=q)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (
            metrics.prediction_sums(probs, labels, loss, mask, num_bins),
            metrics.prediction_sums(jax.nn.softmax(logits), labels, ce, mask, num_bins),
        )

    def evaluate(state: trainer.TrainState) -> dict[str, float]:
        totals: Sequence[dict | None] = (None, None)
        for batch in source.test_batches(config.eval.batch_size):
            sums = eval_step(state.params, state.model_state, sharding.shard_batch(batch, mesh))
            totals = [metrics.add(t, s) for t, s in zip(totals, sums, strict=True)]
        fdiv_metrics, softmax_metrics = (metrics.finalize(t) for t in totals)
        return {**fdiv_metrics, **{f"softmax_{k}": v for k, v in softmax_metrics.items()}}

    return evaluate
