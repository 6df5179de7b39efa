"""XLA compiler options: the CPU matmul library is gin configuration and reaches every compile."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip_t5x import xla_options
from flip_t5x.evaluation import encoder as encoder_lib
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import train_loop
import test_train_helpers as h

YNN_FUSION = '"kind":"__ynn_fusion"'
EIGEN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def _compiled_matmul(options):
  a = jnp.ones((256, 128), jnp.float32)
  b = jnp.ones((128, 512), jnp.float32)
  return jax.jit(lambda x, y: x @ y, compiler_options=options).lower(a, b).compile().as_text()


def _partitioned_matmul(part) -> str:
  """The compiled HLO of a matmul `part` partitioned, checked against numpy's result."""
  fn = part.partition(lambda x, y: x @ y, in_axis_resources=(None, None),
                      out_axis_resources=None)
  a = np.ones((256, 128), np.float32)
  b = np.ones((128, 512), np.float32)
  np.testing.assert_allclose(np.asarray(fn(a, b)), a @ b)
  return fn.lower(a, b).compile().as_text()


def _eigen_supported() -> bool:
  return bool(xla_options.compiler_options("cpu", xla_options.XlaOptions()))


def test_default_runs_cpu_matmuls_in_eigen():
  if not _eigen_supported():
    pytest.skip("on a jaxlib other than the tested one: its XLA has no YNNPACK fusion option")
  options = xla_options.compiler_options("cpu", xla_options.XlaOptions())
  assert options == EIGEN
  assert YNN_FUSION not in _compiled_matmul(options)
  # What the option changes: XLA's default hands the same matmul to YNNPACK.
  assert YNN_FUSION in _compiled_matmul({})


def test_xla_default_leaves_xla_alone():
  assert xla_options.compiler_options("cpu", xla_options.XlaOptions("xla_default")) == {}


def test_other_platforms_get_no_options():
  for library in xla_options.CPU_DOT_LIBRARIES:
    assert xla_options.compiler_options("gpu", xla_options.XlaOptions(library)) == {}
    assert xla_options.compiler_options("tpu", xla_options.XlaOptions(library)) == {}


def test_unknown_library_is_a_clear_error():
  with pytest.raises(ValueError, match="cpu_dot_library must be one of"):
    xla_options.XlaOptions(cpu_dot_library="mkl")


def _run_file_partitioner(bindings):
  """The partitioner runs/pretrain.gin configures for flip_t5x.train, with `bindings` added."""
  train_loop.register_train_for_gin()
  gin_utils.parse_gin_flags([h.ROOT], [a.split("=", 1)[1] for a in h.BASE_ARGS[:2]],
                            [a[len("--gin."):] for a in h.BASE_ARGS[2:]]
                            + ["MODEL_DIR='/unused'", "TRAIN_STEPS=4"] + list(bindings))
  return gin.query_parameter("train_script.train.partitioner").scoped_configurable_fn()


@pytest.mark.parametrize("library,ynn_matmuls", [("eigen", False), ("xla_default", True)])
def test_the_run_files_binding_reaches_the_partitioned_steps(library, ynn_matmuls,
                                                             clean_gin_and_counters):
  if not _eigen_supported():
    pytest.skip("on a jaxlib other than the tested one: its XLA has no YNNPACK fusion option")
  part = _run_file_partitioner([f"xla_options.XlaOptions.cpu_dot_library = '{library}'"])
  assert part.xla_options == xla_options.XlaOptions(library)
  assert (YNN_FUSION in _partitioned_matmul(part)) == ynn_matmuls


def test_a_partitioner_built_in_code_compiles_with_the_defaults():
  if not _eigen_supported():
    pytest.skip("on a jaxlib other than the tested one: its XLA has no YNNPACK fusion option")
  part = partitioning.PjitPartitioner(num_partitions=1)
  assert part.xla_options == xla_options.XlaOptions()
  assert YNN_FUSION not in _partitioned_matmul(part)


def test_the_encoders_compile_with_the_options_they_are_given(clean_gin_and_counters):
  if not _eigen_supported():
    pytest.skip("on a jaxlib other than the tested one: its XLA has no YNNPACK fusion option")
  model = gin_utils.parse_gin_flags_for_model([h.ROOT], ["gin_configs/models/flip_tiny.gin"], [])
  params = jax.eval_shape(lambda r: model.get_initial_variables(
      r, model.input_shapes(2))["params"], jax.random.PRNGKey(0))
  images = jax.ShapeDtypeStruct(model.input_shapes(2)["images"], jnp.float32)
  for library, ynn_matmuls in (("eigen", False), ("xla_default", True)):
    encoder = encoder_lib.encoder_for(model, xla_options.XlaOptions(library))
    text = encoder.image_fn.lower(params, images).compile().as_text()
    assert (YNN_FUSION in text) == ynn_matmuls, library
