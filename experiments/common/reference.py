"""A frozen model's per-token distribution: the reference measure ``q = "base"`` of SFT, and the
teacher targets (and ``q = "teacher"``) of distillation.

The distribution is the softmax of the frozen model's logits at a temperature ``T``; the default
base and teacher are pre-trained with the KL loss, whose operator is exactly this softmax. For
large vocabularies it can be cut to the ``k`` most likely tokens and renormalised, as the top-k
pair ``(indices [N, K], values [N, K])`` that ``fdiv.fused_linear_fdiv_loss`` takes as targets
without a dense ``[N, V]`` array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def frozen_logits(graphdef: nnx.GraphDef, state: nnx.State, inputs_BxL: Array) -> Array:
    """Logits of a frozen model split into ``(graphdef, state)``, without gradient.

    The experiments keep a frozen model's state in the train state's ``model_state``, so that it
    is an argument of the jit'd step: a model closed over by a jit'd function would be compiled
    into it as constants (gigabytes for a real teacher).
    """
    return jax.lax.stop_gradient(nnx.merge(graphdef, state)(inputs_BxL))


def _check(temperature: float, top_k: int, vocab_size: int) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [0, {vocab_size}] (0: all tokens), got {top_k}")


def top_k_distribution(
    logits_NxV: Array, top_k: int, *, temperature: float = 1.0
) -> tuple[Array, Array]:
    """``(indices [N, K], values [N, K])``: the ``top_k`` most likely tokens of
    ``softmax(logits / T)`` and their probabilities renormalised to sum to one (float32)."""
    _check(temperature, top_k, logits_NxV.shape[-1])
    if top_k == 0:
        raise ValueError("top_k_distribution needs top_k ≥ 1")
    logits = jax.lax.stop_gradient(logits_NxV).astype(jnp.float32) / temperature
    top_logits, indices = jax.lax.top_k(logits, top_k)
    # Renormalising over the kept tokens is the softmax of their logits alone.
    return indices, jax.nn.softmax(top_logits, axis=-1)


def token_distribution(logits_NxV: Array, *, temperature: float = 1.0) -> Array:
    """The dense ``[N, V]`` distribution ``softmax(logits / T)`` (float32). A constant: no
    gradient flows to the frozen model."""
    _check(temperature, 0, logits_NxV.shape[-1])
    logits = jax.lax.stop_gradient(logits_NxV).astype(jnp.float32)
    return jax.nn.softmax(logits / temperature, axis=-1)
