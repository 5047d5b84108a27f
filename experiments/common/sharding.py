"""Data parallelism with ``jax.sharding``: one mesh axis, ``data``, over every device.

Parameters and optimiser state are replicated; batches are split along their first axis. The
same script therefore runs on one CPU, on 8 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on 8 GPUs or on a TPU slice; for
several hosts set ``config.distributed = True`` so that ``jax.distributed.initialize()`` runs first.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh with axis ``data`` over all (global) devices."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays split along axis 0 from this process's part of a batch."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def hardware() -> str:
    """The devices in a few words: ``"1x cpu (Intel Xeon, 2 cores)"``, ``"8x NVIDIA H100"``."""
    text = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    if jax.default_backend() == "cpu":
        text += f" ({_cpu_model()}, {os.cpu_count()} cores)"
    return text


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # Not Linux.
        pass
    return platform.processor() or "unknown CPU"
