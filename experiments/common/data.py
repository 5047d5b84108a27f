"""Image classification data: sources, fail-fast checks, and deterministic batching.

Two kinds of source share one interface (:class:`Source`):

* :class:`ArraySource` holds a split in memory as uint8 arrays: Fashion-MNIST from the idx files
  of the Debian package ``dataset-fashion-mnist`` (or tfds), and CIFAR-10/100 through tfds.
  Its training batches are a pure function of ``(seed, step)``, so a resumed run sees exactly the
  batches an uninterrupted one would.
* ``tfds_stream.StreamSource`` streams ImageNet through tf.data (too large for memory).

Every batch is the process-local part of a global batch: a dict with ``image`` (uint8, NHWC),
``label`` (int32) and, for evaluation, ``mask`` (False on padding).

Missing data fails fast: tfds datasets are looked up on disk before tensorflow is imported, and
nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import jax
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]

# Per-channel mean and standard deviation of the training images, on the [0, 1] scale.
MEAN_STD = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
# tfds names the test split of ImageNet "validation".
TEST_SPLIT = {
    "fashion_mnist": "test",
    "cifar10": "test",
    "cifar100": "test",
    "imagenet2012": "validation",
}
STREAMED = frozenset({"imagenet2012"})

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetMissingError(FileNotFoundError):
    """The dataset is not on disk; the message says how to get it."""


class Source(Protocol):
    """What a training script needs from a dataset."""

    num_classes: int
    image_shape: tuple[int, int, int]

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
        """Endless process-local training batches, starting at global step ``start_step``."""
        ...

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over the test split, padded to full batches (see ``mask``)."""
        ...

    def class_prior(self) -> np.ndarray:
        """Frequencies of the classes in the training labels, shape ``[num_classes]``."""
        ...


def tfds_data_dir(data_dir: str) -> Path:
    """``data_dir`` if set, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def tfds_is_prepared(name: str, data_dir: str) -> bool:
    """Whether some version of tfds dataset ``name`` is prepared in the data dir (no tf import)."""
    return any((tfds_data_dir(data_dir) / name).glob("*/dataset_info.json"))


def require_tfds(name: str, data_dir: str) -> None:
    """Raises :class:`DatasetMissingError` with instructions unless ``name`` is prepared."""
    if tfds_is_prepared(name, data_dir):
        return
    where = tfds_data_dir(data_dir)
    how = (
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{where}').download_and_prepare()\""
    )
    if name == "imagenet2012":
        how = (
            f"put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {where}/downloads/manual, "
            f"then run: {how}"
        )
    raise DatasetMissingError(
        f"tfds dataset {name!r} is not prepared in {where} "
        f"(no {name}/<version>/dataset_info.json). "
        f"Where a network is reachable, {how}; or point --config.data.tfds_data_dir (or "
        "$TFDS_DATA_DIR) at a directory that holds it."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped idx file (the MNIST format): magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_idx(idx_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = _IDX_FILES[split]
    images = _read_idx(idx_dir / images_file)[..., None]
    return images, _read_idx(idx_dir / labels_file).astype(np.int32)


def _load_tfds(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # Imported late: tensorflow takes seconds to import.

    builder = tfds.builder(name, data_dir=str(tfds_data_dir(data_dir)))
    batches = list(tfds.as_numpy(builder.as_dataset(split=split).batch(8192)))
    images = np.concatenate([b["image"] for b in batches])
    return images, np.concatenate([b["label"] for b in batches]).astype(np.int32)


def _load_arrays(cfg: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of an in-memory dataset, from the idx files or tfds."""
    name = cfg.name
    if name == "fashion_mnist":
        idx_dir = Path(cfg.idx_dir)
        if all((idx_dir / f).exists() for f in _IDX_FILES[split]):
            return _load_idx(idx_dir, split)
        if not tfds_is_prepared(name, cfg.tfds_data_dir):
            raise DatasetMissingError(
                f"Fashion-MNIST not found: no idx files in {idx_dir} and tfds 'fashion_mnist' is "
                f"not prepared in {tfds_data_dir(cfg.tfds_data_dir)}. Install the Debian package "
                "dataset-fashion-mnist (bash scripts/setup.sh does it), point "
                "--config.data.idx_dir at the idx files, or prepare it with tfds where a network "
                "is reachable: python -c "
                "\"import tensorflow_datasets as tfds; tfds.builder('fashion_mnist')"
                '.download_and_prepare()"'
            )
    else:
        require_tfds(name, cfg.tfds_data_dir)
    return _load_tfds(name, TEST_SPLIT[name] if split == "test" else split, cfg.tfds_data_dir)


@dataclasses.dataclass
class ArraySource:
    """A dataset held in memory as uint8 images and int32 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train_images.shape[1:]

    def class_prior(self) -> np.ndarray:
        counts = np.bincount(self.train_labels, minlength=self.num_classes)
        return (counts / counts.sum()).astype(np.float32)

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
        """Batch ``s`` holds positions ``[s·B, (s+1)·B)`` of an endless sequence of epochs.

        Each epoch is a permutation drawn from ``(seed, epoch)``, so any batch can be produced
        without replaying the ones before it; batches may straddle two epochs.
        """
        n = len(self.train_labels)
        lo, hi = _process_slice(batch_size)
        perms: dict[int, np.ndarray | None] = {}
        for step in range(start_step, 2**62):
            positions = step * batch_size + np.arange(lo, hi)
            epochs = positions // n
            # Keep only the (one or two) epochs this batch draws from.
            perms = {int(e): perms.get(int(e)) for e in np.unique(epochs)}
            for epoch, perm in perms.items():
                if perm is None:
                    perms[epoch] = np.random.default_rng((seed, epoch)).permutation(n)
            idx = np.empty_like(positions)
            for epoch, perm in perms.items():
                at = epochs == epoch
                idx[at] = perm[positions[at] % n]
            yield {"image": self.train_images[idx], "label": self.train_labels[idx]}

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        n = len(self.test_labels)
        lo, hi = _process_slice(batch_size)
        for start in range(0, n, batch_size):
            positions = np.arange(start + lo, start + hi)
            mask = positions < n
            idx = np.where(mask, positions, 0)
            yield {"image": self.test_images[idx], "label": self.test_labels[idx], "mask": mask}


def _process_slice(batch_size: int) -> tuple[int, int]:
    """This process's part ``[lo, hi)`` of a global batch (all of it on one host)."""
    if batch_size % jax.process_count():
        raise ValueError(f"batch size {batch_size} is not divisible by {jax.process_count()} hosts")
    local = batch_size // jax.process_count()
    return jax.process_index() * local, (jax.process_index() + 1) * local


def _subset(images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` examples (all when ``size`` is 0): for smoke tests."""
    return (images[:size], labels[:size]) if size else (images, labels)


def make_source(cfg: ml_collections.ConfigDict) -> Source:
    """The data source named by ``cfg.name`` (``config.data``)."""
    if cfg.name in STREAMED:
        from experiments.common import tfds_stream  # Imports tensorflow.

        return tfds_stream.StreamSource(cfg)
    train = _subset(*_load_arrays(cfg, "train"), cfg.train_size)
    test = _subset(*_load_arrays(cfg, "test"), cfg.test_size)
    return ArraySource(*train, *test, num_classes=NUM_CLASSES[cfg.name])
