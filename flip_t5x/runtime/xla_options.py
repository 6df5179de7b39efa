"""XLA compiler options for the runtime's jitted functions (gin: `xla_options.XlaOptions.X = ...`).

Passed per compilation (`jax.jit(..., compiler_options=...)`), so they are configuration like any
other gin binding, not process-wide `XLA_FLAGS`. Every jit that runs the model (train and eval
steps, the eval binary's encoders, the benchmark's reference matmul) takes the same options, so a
measured matmul peak is that of the library the steps use.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Optional, Tuple

from absl import logging
import gin
import jax
import numpy as np

CPU_DOT_LIBRARIES = ("eigen", "xla_default")


@dataclasses.dataclass(frozen=True)
class XlaOptions:
  """Which XLA options the runtime compiles with.

  cpu_dot_library: the library that runs matmuls on XLA:CPU. "eigen": Eigen's contraction kernels,
    with YNNPACK kept for reductions (XLA's own lowering of them is slower); "xla_default": XLA's
    default (in jax 0.10, YNNPACK for every matmul). Eigen is the faster on the CPUs measured
    (docs/performance.md, "CPU matmul library"). Ignored on other platforms.
  """

  cpu_dot_library: str = "eigen"

  def __post_init__(self):
    if self.cpu_dot_library not in CPU_DOT_LIBRARIES:
      raise ValueError(f"XlaOptions.cpu_dot_library must be one of {CPU_DOT_LIBRARIES}, got "
                       f"{self.cpu_dot_library!r}")


def xla_options() -> XlaOptions:
  """The gin-configured `XlaOptions` (defaults when gin never saw it)."""
  try:
    return gin.get_configurable(XlaOptions)()
  except (ValueError, KeyError):
    return XlaOptions()


def compiler_options(platform: Optional[str] = None) -> Dict[str, str]:
  """`compiler_options` for `jax.jit` on `platform` (default: jax's default backend)."""
  platform = platform or jax.default_backend()
  options: Tuple[Tuple[str, str], ...] = ()
  if platform == "cpu" and xla_options().cpu_dot_library == "eigen":
    # The library-fusion types YNNPACK keeps: reductions only, so dots fall back to Eigen.
    options = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_REDUCE"),)
  return dict(options) if _supported(options) else {}


@functools.lru_cache(maxsize=None)
def _supported(options: Tuple[Tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's XLA knows `options` (older releases lack YNNPACK's option)."""
  if not options:
    return True
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
  except jax.errors.JaxRuntimeError as e:
    logging.warning("XLA options %s not supported by this jaxlib (%s); compiling with XLA's "
                    "defaults", dict(options), str(e).splitlines()[0])
    return False
  return True
