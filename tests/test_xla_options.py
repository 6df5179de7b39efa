"""XLA compiler options: the CPU matmul library is gin configuration and reaches every compile."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip_t5x.runtime import partitioning
from flip_t5x.runtime import xla_options

YNN_FUSION = '"kind":"__ynn_fusion"'


def _bind(library: str) -> None:
  gin.parse_config("from __gin__ import dynamic_registration\n"
                   "from flip_t5x.runtime import xla_options\n"
                   f"xla_options.XlaOptions.cpu_dot_library = '{library}'\n")


def _compiled_matmul(options):
  a = jnp.ones((256, 128), jnp.float32)
  b = jnp.ones((128, 512), jnp.float32)
  return jax.jit(lambda x, y: x @ y, compiler_options=options).lower(a, b).compile().as_text()


def test_default_runs_cpu_matmuls_in_eigen(clean_gin_and_counters):
  options = xla_options.compiler_options("cpu")
  if not options:
    pytest.skip("on a jaxlib other than the tested one: its XLA has no YNNPACK fusion option")
  assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  assert YNN_FUSION not in _compiled_matmul(options)
  # What the option changes: XLA's default hands the same matmul to YNNPACK.
  assert YNN_FUSION in _compiled_matmul({})


def test_xla_default_binding_leaves_xla_alone(clean_gin_and_counters):
  _bind("xla_default")
  assert xla_options.xla_options().cpu_dot_library == "xla_default"
  assert xla_options.compiler_options("cpu") == {}


def test_other_platforms_get_no_options(clean_gin_and_counters):
  assert xla_options.compiler_options("gpu") == {}
  assert xla_options.compiler_options("tpu") == {}


def test_unknown_library_is_a_clear_error(clean_gin_and_counters):
  with pytest.raises(ValueError, match="cpu_dot_library must be one of"):
    xla_options.XlaOptions(cpu_dot_library="mkl")


def test_partitioned_steps_compile_with_the_options(clean_gin_and_counters):
  if not xla_options.compiler_options("cpu"):
    pytest.skip("on a jaxlib other than the tested one: its XLA has no YNNPACK fusion option")
  part = partitioning.PjitPartitioner(num_partitions=1)
  fn = part.partition(lambda x, y: x @ y, in_axis_resources=(None, None),
                      out_axis_resources=None)
  a = np.ones((256, 128), np.float32)
  b = np.ones((128, 512), np.float32)
  text = fn.lower(a, b).compile().as_text()
  np.testing.assert_allclose(np.asarray(fn(a, b)), a @ b)
  assert YNN_FUSION not in text
