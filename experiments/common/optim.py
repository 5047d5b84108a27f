"""optax optimisers from ``config.optim``: schedule, weight decay, gradient clipping.

Keys: ``name`` (``adamw`` | ``sgd``), ``learning_rate`` (peak), ``schedule`` (``cosine`` |
``constant``), ``warmup_steps`` (linear warm-up from 0), ``weight_decay`` (decoupled, on kernels
only: parameters with ≥ 2 dimensions), ``momentum`` (sgd, Nesterov), ``grad_clip_norm`` (global
norm; 0 turns clipping off).
"""

from __future__ import annotations

import jax
import ml_collections
import optax

NAMES = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``cfg.learning_rate``, then cosine decay to 0 or constant."""
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1)
        )
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
            optax.constant_schedule(cfg.learning_rate),
        ],
        [cfg.warmup_steps],
    )


def _decay_mask(params):
    # Biases, norm scales and the reference-measure logits are not decayed.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser of ``config.optim`` and its learning-rate schedule."""
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        tx = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask)
    else:
        tx = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
            optax.sgd(schedule, momentum=cfg.momentum, nesterov=True),
        )
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx, schedule
