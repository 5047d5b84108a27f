"""The CPU kernels of the root search: power-law generators (``power_root.cc``) and
Jensen–Shannon (``js_root.cc``).

Some generators give each class the mass ``q_j · coef · |θ_j − τ − a|^power`` with an integer
power (``Generator.power_law``): on the support for ``alpha:2``, ``alpha:1.5``,
``alpha:4/3``, ``alpha:1.25`` and ``chi2`` (power 1 to 4, sparse), and below the pole for
``reverse_kl``, ``hellinger``, ``alpha:1/2``, ``alpha:2/3`` and ``alpha:3/4`` (power −1 to
−4). On CPU, ``solver="auto"`` solves their root with an XLA FFI kernel that keeps each row in
cache while it searches it, with sums in double precision (float within blocks of 256 classes
for the sparse laws), dropping the classes that cannot be in the support as it goes: XLA:CPU
spends about a cycle per element on each pass of the JAX solvers, which made these losses
2.5–3.4× the time of cross-entropy at V = 32k (README, "Performance"). Jensen–Shannon's mass
``q_j / expm1(τ + a − θ_j)`` takes an exponential per class: its kernel takes them once per row
and then a product and a division per class and pass (4× → 1.6× cross-entropy). The kernels
also return the sum in the f-softmax's value.
Everything else (the probabilities, every derivative) stays in JAX, and so does the root on
GPU and TPU, where the JAX solvers run as the default branch of
``jax.lax.platform_dependent``.

The kernels are compiled on first use with the C++ compiler (``$CXX``, else ``c++``) for this
machine (``-march=native``) into one library cached under ``$FDIV_CACHE_DIR`` (default
``~/.cache/fdiv``), keyed on their sources (``power_root.cc``, ``js_root.cc``, ``cpu_rows.h``),
the flags, jaxlib's version and the CPU's flags (``scripts/setup.sh`` builds it ahead). Without
a compiler, or with ``FDIV_CPU_KERNEL=0``, ``"auto"`` uses the JAX Newton solver everywhere,
with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

Array = jax.Array

_HERE = Path(__file__).parent
_SOURCES = (_HERE / "power_root.cc", _HERE / "js_root.cc")
_HEADERS = (_HERE / "cpu_rows.h",)
# XLA's custom-call targets and the library's handler symbols.
_TARGETS = {"fdiv_power_root": "FdivPowerRoot", "fdiv_js_root": "FdivJsRoot"}
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared")


def _cpu_flags() -> str:
    """The CPU's feature flags: a library built with -march=native must not be loaded by a
    machine with fewer (a cache shared across machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path() -> Path:
    key = hashlib.sha256()
    for source in (*_SOURCES, *_HEADERS):
        key.update(source.read_bytes())
    for part in (" ".join(_FLAGS), jaxlib.__version__):
        key.update(part.encode())
    key.update(_cpu_flags().encode())
    cache = Path(os.environ.get("FDIV_CACHE_DIR", Path.home() / ".cache" / "fdiv"))
    return cache / f"fdiv_cpu-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """Compiles the kernel unless the cache has it; returns the shared library's path.

    Raises:
      RuntimeError: no C++ compiler found, or the compilation failed (with its output).
      OSError: the compiler could not be run, or the cache directory not written.
    """
    path = _library_path()
    if path.exists():
        return path
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    include = jax.ffi.include_dir()
    # Compiled to a temporary name and renamed: concurrent builds (pytest-xdist) never see a
    # half-written library.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        command = [compiler, *_FLAGS, "-isystem", include, *map(str, _SOURCES), "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# The library registered with XLA in this process: XLA refuses a second handler under the same
# name, so a later source or cache directory does not replace it.
_registered: Path | None = None


@functools.cache
def available() -> bool:
    """Whether the kernels are built and registered with XLA (built now if needed; once)."""
    global _registered
    if os.environ.get("FDIV_CPU_KERNEL", "1") == "0":
        return False
    if _registered is None:
        try:
            path = build()
            library = ctypes.CDLL(str(path))
            for target, symbol in _TARGETS.items():
                handler = jax.ffi.pycapsule(getattr(library, symbol))
                jax.ffi.register_ffi_target(target, handler, platform="cpu")
        except (OSError, RuntimeError) as error:
            warnings.warn(
                f"fdiv: the CPU root kernel is unavailable ({error}); solver='auto' uses the JAX "
                "Newton solver for the power-law generators and JS on CPU",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        _registered = path
    return True


def power_root(
    theta: Array, q: Array, coef: float, power: int
) -> tuple[Array, Array, Array, Array, Array]:
    """``(shift, t, q_sum, empty, excess)`` per row of float32 logits ``theta [..., k]`` for the
    mass ``q_j · coef · |θ_j − shift − t|^power`` (on ``θ_j > shift + t`` for ``power > 0``;
    every class lies below the pole ``shift + t`` for ``power < 0``); ``q`` has the rank of
    ``theta``, each dimension its own or 1.

    ``shift`` is the root rounded to float32 (a NaN row: NaN; an empty row: 0) and ``t`` the
    rest of it, as :class:`fdiv.root_finding.Root` expects; ``excess`` is
    ``coef / |power + 1| · Σ_j q_j |θ_j − shift − t|^(power + 1)``, the sum of
    ``q_j (f*(θ_j − τ) + f(0))`` in the f-softmax's value, and for ``power = −1`` (reverse KL,
    whose ``f(0)`` is infinite) ``−coef Σ_j q_j log(shift + t − θ_j)``, the sum of
    ``q_j f*(θ_j − τ)`` (``−inf`` logits left out). CPU only (see :func:`available`).
    """
    return _call("fdiv_power_root", theta, q, coef=float(coef), power=int(power))


def js_root(theta: Array, q: Array) -> tuple[Array, Array, Array, Array, Array]:
    """``(shift, t, q_sum, empty, excess)`` per row of float32 logits ``theta [..., k]`` for the
    Jensen–Shannon mass ``q_j / expm1(shift + t − θ_j)`` (``js_root.cc``; every class below the
    pole ``shift + t``), as :func:`power_root`: ``excess`` is
    ``−Σ_j q_j log(1 − exp(θ_j − shift − t))``, the sum of ``q_j (f*(θ_j − τ) + f(0))`` in the
    f-softmax's value. CPU only (see :func:`available`)."""
    return _call("fdiv_js_root", theta, q)


def _call(target: str, theta: Array, q: Array, **attributes) -> tuple[Array, ...]:
    rows = jax.ShapeDtypeStruct(theta.shape[:-1], jnp.float32)
    flags = jax.ShapeDtypeStruct(theta.shape[:-1], jnp.bool_)
    call = jax.ffi.ffi_call(target, (rows, rows, rows, flags, rows), vmap_method="broadcast_all")
    return call(theta, q, **attributes)
