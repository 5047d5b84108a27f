"""On-device image preprocessing: uint8 batches travel to the device, floats are made there."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def normalize(
    images_BxHxWxC: Array, mean: Sequence[float], std: Sequence[float], dtype: jnp.dtype
) -> Array:
    """uint8 images to ``(x / 255 − mean) / std`` in ``dtype``, per channel."""
    x = images_BxHxWxC.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def random_crop_flip(images_BxHxWxC: Array, rng: Array, pad: int = 4) -> Array:
    """The CIFAR augmentation: zero-pad by ``pad``, crop back at a random offset, flip half."""
    b, h, w, _ = images_BxHxWxC.shape
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets_rng, flip_rng = jax.random.split(rng)
    offsets_Bx2 = jax.random.randint(offsets_rng, (b, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    cropped = jax.vmap(crop)(padded, offsets_Bx2)
    flip_B = jax.random.bernoulli(flip_rng, 0.5, (b,))
    return jnp.where(flip_B[:, None, None, None], cropped[:, :, ::-1], cropped)
