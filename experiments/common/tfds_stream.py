"""Streamed tfds image datasets (ImageNet) through tf.data, for the real-scale configs.

Training images get the Inception crop (a random area 8–100 %, aspect ratio 3/4–4/3) and a random
flip; test images are resized to ``image_size / 0.875`` on the short side and centre-cropped.
Both come out as uint8 ``[image_size, image_size, 3]``; normalisation happens on the device.

Each host reads its own part of a split (``tfds.split_for_jax_process``). The training stream is
shuffled with the run's seed; a resumed run skips the records of the steps already done, which
reproduces the order of an uninterrupted run on the same host count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments.common import data

# tf.data only feeds the host; keep tensorflow off the accelerators that JAX uses.
tf.config.set_visible_devices([], "GPU")

_SHUFFLE_BUFFER = 16_384


def _inception_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    return tf.image.resize(image, (size, size), method="bilinear")


def _centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(image)[:2]
    scale = (size / 0.875) / tf.cast(tf.reduce_min(shape), tf.float32)
    new = tf.cast(tf.round(tf.cast(shape, tf.float32) * scale), tf.int32)
    image = tf.image.resize(image, new, method="bilinear")
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return image[top : top + size, left : left + size]


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


class StreamSource:
    """A tfds image dataset read through tf.data; see the module docstring."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        data.require_tfds(cfg.name, cfg.tfds_data_dir)
        self._builder = tfds.builder(cfg.name, data_dir=str(data.tfds_data_dir(cfg.tfds_data_dir)))
        self._image_size = cfg.image_size
        self._test_split = data.TEST_SPLIT[cfg.name]
        self.num_classes = data.NUM_CLASSES[cfg.name]
        self.image_shape = (cfg.image_size, cfg.image_size, 3)

    def num_test_examples(self) -> int:
        return self._builder.info.splits[self._test_split].num_examples

    def class_prior(self) -> np.ndarray:
        raise ValueError(
            "the class prior needs every training label in memory, which a streamed dataset does "
            "not hold; ImageNet's classes are close to balanced, so use q = 'uniform'"
        )

    def _read(self, split: str, *, shuffle_seed: int | None) -> tf.data.Dataset:
        options = tf.data.Options()
        options.deterministic = True
        return self._builder.as_dataset(
            split=tfds.split_for_jax_process(split),
            shuffle_files=shuffle_seed is not None,
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options),
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[data.Batch]:
        local = batch_size // jax.process_count()
        size = self._image_size

        def prepare(example):
            image = tf.io.decode_jpeg(example["image"], channels=3)
            image = tf.image.random_flip_left_right(_inception_crop(image, size))
            return {"image": _to_uint8(image), "label": tf.cast(example["label"], tf.int32)}

        ds = self._read("train", shuffle_seed=seed)
        ds = ds.repeat().shuffle(_SHUFFLE_BUFFER, seed=seed).skip(start_step * local)
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from tfds.as_numpy(ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def test_batches(self, batch_size: int) -> Iterator[data.Batch]:
        local = batch_size // jax.process_count()
        # Every host runs the same number of steps: pad to the largest host part.
        per_host = math.ceil(self.num_test_examples() / jax.process_count())
        steps = math.ceil(per_host / local)
        size = self._image_size

        def prepare(example):
            image = _centre_crop(tf.io.decode_jpeg(example["image"], channels=3), size)
            return {
                "image": _to_uint8(image),
                "label": tf.cast(example["label"], tf.int32),
                "mask": True,
            }

        ds = self._read(self._test_split, shuffle_seed=None)
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors(
            {
                "image": tf.zeros([size, size, 3], tf.uint8),
                "label": tf.constant(0, tf.int32),
                "mask": False,
            }
        ).repeat()
        ds = ds.concatenate(padding).take(steps * local).batch(local)
        yield from tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))
