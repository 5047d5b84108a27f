"""A whole language-model training step with an f-divergence loss against the KL step.

The step is the pre-training experiment's (``experiments.pretrain``): the Transformer's forward
and backward passes, the loss through the fused LM head (``fdiv.fused_linear_fdiv_loss``) and the
AdamW update, jit'd by ``trainer.make_train_step``. Every candidate trains the same model (same
initial parameters) on the same batch of random tokens; each call is one real optimiser step.
``tokens_per_s`` is ``batch · seq_len / median_s``; ``ratio_to_kl`` is the step time over the KL
step's, measured in the same interleaved rounds (issue 5's target: within 1.05 for alpha:1.5).

Sizes: on an accelerator, a ~100M-parameter model (the ``c4_100m`` shape: 14 layers, d_model
768, vocabulary 32768, 16 sequences of 1024 tokens, bfloat16); on a CPU, the ``tiny`` pre-training
config's shape (2 layers, d_model 128, vocabulary 4096, 16 sequences of 128 tokens, float32);
``--quick``, a 1-layer model of width 32 (a smoke test).
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from experiments.benchmarks import harness
from experiments.common import optim, sharding, trainer, transformer
from experiments.pretrain import task
from experiments.pretrain.configs import base

BASELINE = ("kl", "uniform")
CANDIDATES = {
    "full": (BASELINE, ("alpha:1.5", "uniform"), ("alpha:1.5", "unit")),
    "quick": (BASELINE, ("alpha:1.5", "uniform")),
}
# (num_layers, d_model, num_heads, mlp_dim, vocabulary, batch, seq_len, dtype)
SIZES = {
    "accelerator": (14, 768, 12, 3072, 32768, 16, 1024, "bfloat16"),
    "cpu": (2, 128, 4, 512, 4096, 16, 128, "float32"),
    "quick": (1, 32, 2, 64, 256, 4, 32, "float32"),
}
REPEATS = {"full": 20, "quick": 3}
TIME_BUDGET_S = {"full": 300.0, "quick": None}


def _config(size: tuple, divergence: str, q: str) -> ml_collections.ConfigDict:
    layers, d, heads, mlp, _, _, seq_len, dtype = size
    c = base.get_config()
    c.model.update(
        num_layers=layers, d_model=d, num_heads=heads, mlp_dim=mlp, max_len=seq_len, dtype=dtype
    )
    c.data.seq_len = seq_len
    c.loss.update(divergence=divergence, q=q)
    return c


def run(mode: str, out_dir: Path) -> Path:
    """Runs the benchmark; returns the CSV written."""
    path = out_dir / "train_step.csv"
    size_name = (
        "quick" if mode == "quick" else ("cpu" if jax.default_backend() == "cpu" else "accelerator")
    )
    size = SIZES[size_name]
    layers, d, _, _, vocab, batch_size, seq_len, dtype = size
    provenance = harness.provenance()
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (batch_size, seq_len + 1), dtype=np.int32)
    batch = sharding.shard_batch(
        {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "mask": np.ones((batch_size, seq_len), bool),
        },
        mesh,
    )
    calls, num_params = {}, 0
    for divergence, q in CANDIDATES[mode]:
        config = _config(size, divergence, q)
        model = transformer.Transformer(config.model, vocab, rngs=nnx.Rngs(0))
        num_params = transformer.num_params(model)
        graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
        tx, schedule = optim.make_optimizer(config.optim, 1000)
        state = trainer.create_state(params, model_state, tx, jax.random.key(0))
        state_sharding = sharding.state_sharding(state, mesh)
        step = trainer.make_train_step(
            task.make_loss_fn(graphdef, config, q), tx, schedule, mesh, state_sharding
        )
        calls[(divergence, q)] = _Stepper(step, jax.device_put(state, state_sharding), batch)
    harness.progress(
        f"[train_step] {size_name}: {num_params:,} parameters, V={vocab}, "
        f"{batch_size}x{seq_len} tokens, {dtype}: timing"
    )
    times, repeats = harness.time_interleaved(
        calls, REPEATS[mode], time_budget_s=TIME_BUDGET_S[mode]
    )
    rows = []
    for (divergence, q), t in times.items():
        row = {
            "benchmark": "train_step",
            "mode": mode,
            "size": size_name,
            "num_params": num_params,
            "num_layers": layers,
            "d_model": d,
            "vocab": vocab,
            "batch": batch_size,
            "seq_len": seq_len,
            "dtype": dtype,
            "divergence": divergence,
            "reference_measure": q,
            "repeats": repeats,
            "median_s": t,
            "tokens_per_s": batch_size * seq_len / t,
            "ratio_to_kl": t / times[BASELINE],
            **provenance,
        }
        rows.append(row)
        harness.progress(
            f"  {divergence:>10} {q:>8}: {t * 1e3:9.2f} ms/step, "
            f"{row['tokens_per_s']:10.0f} tokens/s ({row['ratio_to_kl']:.3f}x KL)"
        )
    harness.write_csv(path, rows)
    return path


class _Stepper:
    """One call = one training step from the current state (each call continues training, so
    the donated state is never reused); returns the step's metrics."""

    def __init__(self, step, state: trainer.TrainState, batch: dict):
        self._step, self._state, self._batch = step, state, batch

    def __call__(self):
        self._state, metrics = self._step(self._state, self._batch)
        return metrics
