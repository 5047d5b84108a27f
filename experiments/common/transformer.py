"""A decoder-only Transformer language model in Flax NNX (nanodo-like).

Pre-norm blocks (RMSNorm → causal self-attention → residual, RMSNorm → MLP → residual), a final
RMSNorm, rotary or learned positions, tied or untied input/output embeddings, a GELU or SwiGLU
MLP. Parameters are float32; ``dtype`` is the compute dtype (``bfloat16`` on accelerators).

The output layer is exposed in two parts so that a training loss never materialises the
``[B, L, V]`` logits: :meth:`Transformer.hidden` (the normalised last hidden states) and
:meth:`Transformer.output_weight` (``[D, V]``), for ``fdiv.fused_linear_fdiv_loss``;
``model(inputs)`` returns the float32 logits ``hidden @ output_weight`` for evaluation and sampling.

``config.model`` keys: ``num_layers``, ``d_model``, ``num_heads`` (``d_model`` divisible by it),
``mlp_dim``, ``positions`` (``rotary`` | ``learned``), ``max_len`` (longest sequence; the size of
the learned position table), ``tie_embeddings``, ``dtype`` (``float32`` | ``bfloat16``), and
optionally ``mlp`` (``gelu``, the default, | ``swiglu``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from experiments.common import config as config_lib

Array = jax.Array

POSITIONS = ("rotary", "learned")
MLPS = ("gelu", "swiglu")
DTYPES = ("float32", "bfloat16")
ROPE_BASE = 10_000.0


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`config_lib.ConfigError` naming the first invalid ``config.model`` value."""
    for key in ("num_layers", "d_model", "num_heads", "mlp_dim", "max_len"):
        config_lib.check_positive(config, f"model.{key}")
    config_lib.check_one_of(config, "model.positions", POSITIONS)
    config_lib.check_one_of(config, "model.dtype", DTYPES)
    config_lib.check_one_of(config, "model.tie_embeddings", (True, False))
    if "mlp" in config.model:
        config_lib.check_one_of(config, "model.mlp", MLPS)
    heads = config.model.num_heads
    config_lib.check(
        config, "model.d_model", lambda d: d % heads == 0, f"not divisible by num_heads={heads}"
    )
    if config.model.positions == "rotary":
        config_lib.check(
            config,
            "model.d_model",
            lambda d: (d // heads) % 2 == 0,
            "rotary positions need an even head dimension (d_model / num_heads)",
        )


def rotary(x_BxLxHxK: Array) -> Array:
    """Rotary position embedding (Su et al., 2021): rotates feature pairs ``(i, i + K/2)`` of
    position ``t`` by ``t · ROPE_BASE^(−2i/K)``, so that query·key depends on the offset only."""
    length, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1]
    half = head_dim // 2
    freq_F = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_LxF = jnp.arange(length, dtype=jnp.float32)[:, None] * freq_F[None, :]
    cos, sin = jnp.cos(angle_LxF)[:, None, :], jnp.sin(angle_LxF)[:, None, :]
    x = x_BxLxHxK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


class Attention(nnx.Module):
    """Multi-head causal self-attention (softmax in float32)."""

    def __init__(self, d_model: int, num_heads: int, rotary: bool, dtype, rngs: nnx.Rngs):
        self.num_heads, self.rotary = num_heads, rotary
        linear = partial(nnx.Linear, use_bias=False, dtype=dtype, rngs=rngs)
        self.qkv = linear(d_model, 3 * d_model)
        self.out = linear(d_model, d_model)

    def __call__(self, x_BxLxD: Array) -> Array:
        b, length, d = x_BxLxD.shape
        qkv = self.qkv(x_BxLxD).reshape(b, length, 3, self.num_heads, d // self.num_heads)
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rotary:
            q_BxLxHxK, k_BxLxHxK = rotary(q_BxLxHxK), rotary(k_BxLxHxK)
        y_BxLxHxK = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True)
        return self.out(y_BxLxHxK.reshape(b, length, d))


class Mlp(nnx.Module):
    """``GELU(x W1) W2`` or SwiGLU ``(SiLU(x Wg) ⊙ x W1) W2``."""

    def __init__(self, d_model: int, mlp_dim: int, kind: str, dtype, rngs: nnx.Rngs):
        linear = partial(nnx.Linear, use_bias=False, dtype=dtype, rngs=rngs)
        self.up = linear(d_model, mlp_dim)
        self.gate = linear(d_model, mlp_dim) if kind == "swiglu" else None
        self.down = linear(mlp_dim, d_model)

    def __call__(self, x_BxLxD: Array) -> Array:
        if self.gate is None:
            h = jax.nn.gelu(self.up(x_BxLxD))
        else:
            h = jax.nn.silu(self.gate(x_BxLxD)) * self.up(x_BxLxD)
        return self.down(h)


class Block(nnx.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ml_collections.ConfigDict, dtype, rngs: nnx.Rngs):
        d = cfg.d_model
        self.attn_norm = nnx.RMSNorm(d, dtype=dtype, rngs=rngs)
        self.attn = Attention(d, cfg.num_heads, cfg.positions == "rotary", dtype, rngs)
        self.mlp_norm = nnx.RMSNorm(d, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(d, cfg.mlp_dim, cfg.get("mlp", "gelu"), dtype, rngs)

    def __call__(self, x_BxLxD: Array) -> Array:
        x = x_BxLxD + self.attn(self.attn_norm(x_BxLxD))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nnx.Module):
    """Decoder-only Transformer: token ids ``[B, L]`` → next-token logits ``[B, L, V]``.

    Causal: the output at position ``t`` depends on ``inputs[:, :t + 1]`` only.

    Initialisation: embeddings ``N(0, 1/D)``, scaled by ``√D`` at the input (unit-scale
    residual stream) and used as is at the output when tied, so the initial logits are about
    ``N(0, 1)``; an untied output projection is drawn the same way. Linear layers use flax's
    default (LeCun normal).
    """

    def __init__(self, model_cfg: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs):
        cfg = model_cfg
        self.dtype = jnp.dtype(cfg.dtype)
        self.max_len = cfg.max_len
        d = cfg.d_model
        init = nnx.initializers.normal(stddev=d**-0.5)
        self.embed = nnx.Embed(vocab_size, d, dtype=self.dtype, embedding_init=init, rngs=rngs)
        self.positions = (
            nnx.Embed(cfg.max_len, d, dtype=self.dtype, embedding_init=init, rngs=rngs)
            if cfg.positions == "learned"
            else None
        )
        self.blocks = nnx.List([Block(cfg, self.dtype, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = nnx.RMSNorm(d, dtype=self.dtype, rngs=rngs)
        self.unembed = (
            None if cfg.tie_embeddings else nnx.Param(init(rngs.params(), (d, vocab_size)))
        )

    def hidden(self, inputs_BxL: Array) -> Array:
        """The final-norm hidden states ``[B, L, D]`` in the compute dtype."""
        length = inputs_BxL.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.max_len}")
        d = self.embed.features
        x = self.embed(inputs_BxL) * jnp.asarray(d**0.5, self.dtype)
        if self.positions is not None:
            x = x + self.positions(jnp.arange(length))[None]
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x).astype(self.dtype)

    def output_weight(self) -> Array:
        """The output projection ``[D, V]`` in the compute dtype (the embedding, transposed, when
        tied)."""
        w = self.embed.embedding[...].T if self.unembed is None else self.unembed[...]
        return w.astype(self.dtype)

    def __call__(self, inputs_BxL: Array) -> Array:
        """Next-token logits ``[B, L, V]`` in float32 (float32 accumulation of the projection)."""
        return jnp.einsum(
            "bld,dv->blv",
            self.hidden(inputs_BxL),
            self.output_weight(),
            preferred_element_type=jnp.float32,
        )


def num_params(model: nnx.Module) -> int:
    """The number of trained parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
