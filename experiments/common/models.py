"""Flax NNX image classifiers: a small CNN (CPU-sized) and ResNet-18/50 (accelerator-sized).

Every model maps normalised images ``[B, H, W, C]`` to logits ``[B, num_classes]`` through
``model(images, train=...)``. ``dtype`` is the compute dtype (e.g. bfloat16); parameters are
float32, and the logits come out in float32 so that losses and metrics never run in half precision.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

Array = jax.Array


class SmallCNN(nnx.Module):
    """Two 3×3 conv + ReLU + 2×2 max-pool blocks, then a one-hidden-layer MLP head."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        *,
        channels: Sequence[int],
        hidden: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        height, width, in_channels = image_shape
        widths = (in_channels, *channels)
        self.convs = nnx.List(
            [nnx.Conv(a, b, (3, 3), dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(widths)]
        )
        pooled = (height >> len(channels)) * (width >> len(channels)) * channels[-1]
        self.hidden = nnx.Linear(pooled, hidden, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: Array, *, train: bool) -> Array:
        del train  # No dropout or batch norm: train and test behave alike.
        x = x_BxHxWxC
        for conv in self.convs:
            x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
        x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.head(x).astype(jnp.float32)


class BasicBlock(nnx.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        conv = partial(nnx.Conv, use_bias=False, dtype=dtype, rngs=rngs)
        norm = partial(nnx.BatchNorm, momentum=0.9, dtype=dtype, rngs=rngs)
        self.conv1, self.norm1 = conv(in_ch, width, (3, 3), stride), norm(width)
        # Zero-initialised last scale: each block starts as the identity (steadier early training).
        self.conv2 = conv(width, width, (3, 3))
        self.norm2 = norm(width, scale_init=nnx.initializers.zeros)
        self.shortcut = _shortcut(in_ch, width, stride, conv, norm)

    def __call__(self, x: Array, *, train: bool) -> Array:
        y = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
        y = self.norm2(self.conv2(y), use_running_average=not train)
        return nnx.relu(y + _apply_shortcut(self.shortcut, x, train))


class Bottleneck(nnx.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4) with a residual connection (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        conv = partial(nnx.Conv, use_bias=False, dtype=dtype, rngs=rngs)
        norm = partial(nnx.BatchNorm, momentum=0.9, dtype=dtype, rngs=rngs)
        out = width * self.expansion
        self.conv1, self.norm1 = conv(in_ch, width, (1, 1)), norm(width)
        self.conv2, self.norm2 = conv(width, width, (3, 3), stride), norm(width)
        self.conv3 = conv(width, out, (1, 1))
        self.norm3 = norm(out, scale_init=nnx.initializers.zeros)
        self.shortcut = _shortcut(in_ch, out, stride, conv, norm)

    def __call__(self, x: Array, *, train: bool) -> Array:
        y = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
        y = nnx.relu(self.norm2(self.conv2(y), use_running_average=not train))
        y = self.norm3(self.conv3(y), use_running_average=not train)
        return nnx.relu(y + _apply_shortcut(self.shortcut, x, train))


def _shortcut(in_ch: int, out: int, stride: int, conv, norm) -> nnx.List | None:
    """A strided 1×1 projection where the shape changes, else None (identity)."""
    if stride == 1 and in_ch == out:
        return None
    return nnx.List([conv(in_ch, out, (1, 1), stride), norm(out)])


def _apply_shortcut(shortcut: nnx.List | None, x: Array, train: bool) -> Array:
    if shortcut is None:
        return x
    projection, norm = shortcut
    return norm(projection(x), use_running_average=not train)


class ResNet(nnx.Module):
    """ResNet v1.5 (stride in the 3×3 convolution) with an ImageNet or a CIFAR stem.

    The ImageNet stem is a 7×7/2 convolution and a 3×3/2 max-pool; the CIFAR stem a single 3×3/1
    convolution, which keeps the resolution of 32×32 images.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        *,
        block: type[BasicBlock | Bottleneck],
        stage_sizes: Sequence[int],
        width: int,
        stem: str,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        in_channels = image_shape[-1]
        kernel, stride = ((7, 7), 2) if stem == "imagenet" else ((3, 3), 1)
        self.stem_pool = stem == "imagenet"
        self.stem = nnx.Conv(
            in_channels, width, kernel, stride, use_bias=False, dtype=dtype, rngs=rngs
        )
        self.stem_norm = nnx.BatchNorm(width, momentum=0.9, dtype=dtype, rngs=rngs)
        blocks, in_ch = [], width
        for i, size in enumerate(stage_sizes):
            for j in range(size):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_ch, width * 2**i, stride, dtype=dtype, rngs=rngs))
                in_ch = width * 2**i * block.expansion
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: Array, *, train: bool) -> Array:
        x = nnx.relu(self.stem_norm(self.stem(x_BxHxWxC), use_running_average=not train))
        if self.stem_pool:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)


_RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}
NAMES = ("cnn", *_RESNETS)


def make_model(
    cfg: ml_collections.ConfigDict,
    *,
    image_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The model named by ``cfg.name`` (``config.model``): ``cnn``, ``resnet18`` or ``resnet50``."""
    dtype = jnp.dtype(cfg.dtype)
    if cfg.name == "cnn":
        return SmallCNN(
            image_shape,
            num_classes,
            channels=cfg.channels,
            hidden=cfg.hidden,
            dtype=dtype,
            rngs=rngs,
        )
    block, stage_sizes = _RESNETS[cfg.name]
    return ResNet(
        image_shape,
        num_classes,
        block=block,
        stage_sizes=stage_sizes,
        width=cfg.width,
        stem=cfg.stem,
        dtype=dtype,
        rngs=rngs,
    )
