"""XLA compiler options for the jitted functions that run the model (gin: `xla_options.XlaOptions`).

Passed per compilation (`jax.jit(..., compiler_options=...)`), so they are configuration like any
other gin binding, not process-wide `XLA_FLAGS`. The run files bind one `XlaOptions` to the
partitioner (`partitioning.PjitPartitioner.xla_options = @xla_options.XlaOptions()`), which
compiles the train and eval steps with it and hands it to the evaluation's encoders; the benchmark
takes it as an argument, so its reference matmul runs in the library the steps use.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Optional, Tuple

from absl import logging
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


def compiler_options(platform: Optional[str], options: XlaOptions) -> Dict[str, str]:
  """`jax.jit`'s `compiler_options` on `platform` (None: jax's default backend) under `options`."""
  platform = platform or jax.default_backend()
  flags: Tuple[Tuple[str, str], ...] = ()
  if platform == "cpu" and options.cpu_dot_library == "eigen":
    # The library-fusion types YNNPACK keeps: reductions only, so dots fall back to Eigen.
    flags = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_REDUCE"),)
  return dict(flags) if _supported(flags) else {}


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
