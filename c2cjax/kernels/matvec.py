"""Batch-1 matrix-vector products on CPU: a streaming C++ kernel as an XLA FFI custom call.

:func:`linear` is ``x @ w`` for the model's projections and LM head. When a product has a
single row (batch-1 decode), runs on the CPU backend in fp32, and the kernel is available,
it calls ``cpu_matvec.cc`` (beside this file); everything else is the plain einsum. Both
give the same values up to float summation order (tests/test_matvec.py). Weights stored in
bfloat16 (``LM.with_layout(weight_dtype=jnp.bfloat16)``) go through the kernel too: it reads
half the bytes and widens each weight to fp32 before its multiply-add, so the product is
the fp32 product of the rounded weights.

Why a hand-written kernel: batch-1 decode is one pass over every weight per token, so its
speed is the memory read rate. XLA:CPU's matrix-vector products on decode-sized matrices
(576 x 1536 and smaller) stream below what the machine can read; the kernel splits each
product into contiguous row blocks shared by the calling thread and XLA's intra-op thread
pool (benchmarks/RESULTS.md, issue 16, tenth session).

The kernel is compiled once per machine with the system C++ compiler (``$CXX``, else
``c++``/``g++``), against the installed jaxlib's FFI headers, into
``$C2CJAX_CACHE/kernels/`` (default ``~/.cache/c2cjax``), as PyTorch's inductor does for
its CPU code. Without a compiler, or with ``C2CJAX_CPU_MATVEC=0``, :func:`linear` is the
einsum. Gradients go through the einsum (``jax.custom_jvp``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib.resources
import logging
import math
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jaxlib
import jax.numpy as jnp
import numpy as np

from c2cjax import runtime

TARGET = "c2cjax_cpu_matvec"
TARGET_BF16 = "c2cjax_cpu_matvec_bf16"  # bfloat16 weights, fp32 activations and sums
# The same, with one layer of weights stacked on a leading axis, read in place (LayerOf).
TARGET_AT, TARGET_BF16_AT = "c2cjax_cpu_matvec_at", "c2cjax_cpu_matvec_bf16_at"
SOURCE = "cpu_matvec.cc"
# Above one row, XLA's own products were faster on the 2-core machine (RESULTS.md).
MAX_ROWS = 1
_BLOCKS_PER_THREAD = 1

log = logging.getLogger(__name__)


def enabled() -> bool:
  """``C2CJAX_CPU_MATVEC`` (default on): 0/false/off/no routes every product to XLA;
  1/true/on/yes leaves the kernel on. Any other value is a ValueError naming it."""
  return runtime.env_flag("C2CJAX_CPU_MATVEC", True)


def build(compiler: str | None = None, folder: pathlib.Path | None = None,
          arch: tuple[str, ...] | None = None) -> pathlib.Path:
  """Compiles the kernel (once: the file name hashes the source, jaxlib, compiler, CPU and
  flags) and returns the shared library's path. Raises RuntimeError naming the compiler's
  error. ``arch``: the target flags (default ``-march=native``, then none); tests build
  each of the source's paths (AVX-512, AVX2, portable) with it."""
  cxx = compiler or os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not cxx:
    raise RuntimeError("no C++ compiler found (set $CXX)")
  source = importlib.resources.files("c2cjax.kernels").joinpath(SOURCE).read_bytes()
  include = jax.ffi.include_dir()
  key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), cxx.encode(),
                                   runtime.machine_id().encode(),
                                   " ".join(arch or ()).encode()])).hexdigest()[:16]
  folder = folder or runtime.cache_root() / "kernels"
  out = folder / f"cpu_matvec-{key}.so"
  if out.exists():
    return out
  try:
    folder.mkdir(parents=True, exist_ok=True)
    return _compile(cxx, source, include, folder, out,
                    (list(arch),) if arch is not None else (["-march=native"], []))
  except OSError as e:  # a read-only or full cache folder
    raise RuntimeError(f"could not compile the CPU matrix-vector kernel in {folder}: {e}") from e


def _compile(cxx: str, source: bytes, include: str, folder: pathlib.Path,
             out: pathlib.Path, archs) -> pathlib.Path:
  errors = []
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    src = pathlib.Path(tmp) / SOURCE
    src.write_bytes(source)
    lib = pathlib.Path(tmp) / out.name
    # -march=native: the library is built for (and its name hashes) this machine's CPU;
    # retried without it for compilers that do not know the flag.
    for arch in archs:
      cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", *arch, f"-I{include}",
             str(src), "-o", str(lib)]
      try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
      except (OSError, subprocess.TimeoutExpired) as e:
        errors.append(f"{' '.join(cmd)}: {e}")
        continue
      if done.returncode == 0:
        os.replace(lib, out)  # atomic: concurrent builds leave one whole file
        return out
      errors.append(f"{' '.join(cmd)}:\n{done.stderr[-2000:]}")
  raise RuntimeError("could not compile the CPU matrix-vector kernel:\n" + "\n".join(errors))


@functools.cache
def available() -> bool:
  """Whether the kernel is built and registered with XLA (compiles it on first call)."""
  try:
    path = build()
  except RuntimeError as e:
    log.warning("c2cjax: batch-1 products use XLA's own kernels (%s)", str(e)[-1000:])
    return False
  try:
    lib = ctypes.CDLL(str(path))
    handlers = {TARGET: lib.C2cjaxCpuMatVec, TARGET_BF16: lib.C2cjaxCpuMatVecBf16,
                TARGET_AT: lib.C2cjaxCpuMatVecAt, TARGET_BF16_AT: lib.C2cjaxCpuMatVecBf16At}
  except (OSError, AttributeError) as e:  # a damaged or foreign file under the cached name
    log.warning("c2cjax: batch-1 products use XLA's own kernels (cannot load %s: %s; delete "
                "it to rebuild)", path, e)
    return False
  for name, handler in handlers.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
  _LIBRARIES.append(lib)  # keep it loaded for the process's lifetime
  return True


_LIBRARIES: list = []


def active() -> bool:
  """Whether batch-1 fp32-activation products use the kernel: switched on, the CPU
  backend, built."""
  return enabled() and jax.default_backend() == "cpu" and available()


def use_kernel(x: jax.Array, w: jax.Array) -> bool:
  """Static (trace-time) choice: one fp32 row and fp32 or bfloat16 weights, on the CPU
  backend with the kernel built."""
  return (math.prod(x.shape[:-1]) <= MAX_ROWS and x.dtype == jnp.float32
          and w.dtype in (jnp.float32, jnp.bfloat16) and w.ndim == 2 and active())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerOf:
  """Layer ``index`` of a weight stacked on a leading layer axis, for :func:`linear`.

  ``stacked`` [L, *shape], ``index`` an int32 scalar (traced: a loop over layers). The
  kernel reads the layer in place; anything else takes ``stacked[index]`` (a copy, as XLA
  makes inside a layer scan). The stacked Decoder's batch-1 decode on CPU passes its
  projections this way (``layers.Decoder``)."""

  stacked: jax.Array
  index: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.stacked.shape[1:])

  @property
  def ndim(self) -> int:
    return self.stacked.ndim - 1

  @property
  def dtype(self):
    return self.stacked.dtype

  def reshape(self, *shape) -> "LayerOf":
    return LayerOf(self.stacked.reshape(self.stacked.shape[0], *shape), self.index)

  def get(self) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(self.stacked, self.index, keepdims=False)


def _einsum(x, w, out_in: bool):
  return jnp.einsum("...i,oi->...o" if out_in else "...i,io->...o", x, w)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kernel(x, w, out_in: bool):
  n = w.shape[0] if out_in else w.shape[1]
  rows = x.reshape(-1, x.shape[-1])
  target = TARGET_BF16 if w.dtype == jnp.bfloat16 else TARGET
  y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                       vmap_method="sequential")(
      rows, w, out_in=out_in, blocks_per_thread=np.int64(_BLOCKS_PER_THREAD))
  return y.reshape(*x.shape[:-1], n)


@_kernel.defjvp
def _kernel_jvp(out_in, primals, tangents):
  x, w = primals
  dx, dw = tangents
  return _kernel(x, w, out_in), _einsum(dx, w, out_in) + _einsum(x, dw, out_in)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _kernel_at(x, stacked, index, out_in: bool):
  n = stacked.shape[1] if out_in else stacked.shape[2]
  rows = x.reshape(-1, x.shape[-1])
  target = TARGET_BF16_AT if stacked.dtype == jnp.bfloat16 else TARGET_AT
  y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                       vmap_method="sequential")(
      rows, stacked, jnp.asarray(index, jnp.int32),
      out_in=out_in, blocks_per_thread=np.int64(_BLOCKS_PER_THREAD))
  return y.reshape(*x.shape[:-1], n)


@_kernel_at.defjvp
def _kernel_at_jvp(out_in, primals, tangents):
  x, stacked, index = primals
  dx, dstacked, _ = tangents
  at = lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False)
  return (_kernel_at(x, stacked, index, out_in),
          _einsum(dx, at(stacked), out_in) + _einsum(x, at(dstacked), out_in))


def linear(x: jax.Array, w: jax.Array | LayerOf, *, out_in: bool = False,
           kernel: bool = True) -> jax.Array:
  """``x [..., I] . w`` -> ``[..., O]``, with ``w`` stored ``[I, O]`` (or ``[O, I]`` when
  ``out_in``, e.g. a tied embedding as the LM head): the kernel for one fp32 row on CPU,
  else the einsum (same dtype rules as ``jnp.einsum``). ``w`` may be a :class:`LayerOf`
  (one layer of a stacked weight, read in place by the kernel). ``kernel=False``: always
  the einsum."""
  if kernel and use_kernel(x, w):
    if isinstance(w, LayerOf):
      return _kernel_at(x, w.stacked, w.index, out_in)
    return _kernel(x, w, out_in)
  return _einsum(x, w.get() if isinstance(w, LayerOf) else w, out_in)


enabled()  # a bad C2CJAX_CPU_MATVEC stops `import c2cjax` at once, before any model loads
