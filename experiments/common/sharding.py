"""Data parallelism with ``jax.sharding``: one mesh axis, ``data``, over every device.

Parameters and optimiser state are replicated; batches are split along their first axis. With
the FSDP option (:func:`state_sharding` with ``fsdp=True``) large parameters and their optimiser
state are instead split over the same ``data`` axis (each device holds a slice; XLA gathers them
for the forward and backward passes and reduce-scatters the gradients), for models whose state
does not fit on one device. The same script therefore runs on one CPU, on 8 forced host devices
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


def state_sharding(tree: Any, mesh: Mesh, *, fsdp: bool = False, min_size: int = 2**18) -> Any:
    """The sharding of each leaf of a train state: replicated, or with ``fsdp`` the arrays of at
    least ``min_size`` elements split along their largest axis that the ``data`` axis divides
    (replicated when no axis does). Works on arrays and on ``jax.ShapeDtypeStruct`` leaves."""
    n = mesh.shape[DATA_AXIS]

    def leaf_sharding(x: Any) -> NamedSharding:
        shape = getattr(x, "shape", ())
        if not fsdp or n == 1 or np.prod(shape, dtype=np.int64) < min_size:
            return replicated(mesh)
        divisible = [i for i, size in enumerate(shape) if size % n == 0]
        if not divisible:
            return replicated(mesh)
        axis = max(divisible, key=lambda i: shape[i])
        spec = [None] * len(shape)
        spec[axis] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(leaf_sharding, tree)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays split along axis 0 from this process's part of a batch."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def hardware() -> str:
    """The devices in a few words: ``"1x cpu (Intel Xeon, 2 cores, AVX-512, 1024 KB cache)"``,
    ``"8x NVIDIA H100"``.

    On CPU the widest vector extension and the cache size the kernel reports are named too:
    virtual machines of one model name differ in both, and the benchmarks' ratios with them.
    """
    text = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    if jax.default_backend() == "cpu":
        model, details = _cpu_description()
        text += f" ({', '.join([model, f'{os.cpu_count()} cores', *details])})"
    return text


# (cpuinfo flag, name), widest first.
_VECTOR_EXTENSIONS = (
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("avx", "AVX"),
    ("sse4_2", "SSE4.2"),
)


def _cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name, and its vector extension and cache size where Linux reports them."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:  # Not Linux.
        return platform.processor() or "unknown CPU", []
    flags = set(info.get("flags", "").split())
    vector = next((name for flag, name in _VECTOR_EXTENSIONS if flag in flags), None)
    details = [d for d in (vector, info.get("cache size") and f"{info['cache size']} cache") if d]
    return info.get("model name", "unknown CPU"), details
