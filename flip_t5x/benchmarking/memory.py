"""What the train step needs in memory, read from XLA's compiled program without running it.

`memory_only` compiles the step from abstract shapes (what fits, e.g. ViT-L/16 at a global batch
of 4,096) and reports XLA's memory analysis and the bytes the backward pass keeps under the
gin-bound `remat_policy`. With `described_gpus` it compiles for a GPU described by an XLA
GpuTargetConfig instead of the attached devices (XLA:GPU's own buffer assignment, remat honoured),
so what fits on an 80 GB card can be read off a CPU machine.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import models
from flip_t5x import network
from flip_t5x import train_state as train_state_lib
from flip_t5x.benchmarking import cases
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import trainer as trainer_lib


def memory_stats(compiled: Any) -> Dict[str, float]:
  """Peak bytes of a compiled step: arguments + outputs - donated aliases + XLA's temp buffers."""
  try:
    m = compiled.memory_analysis()
  except Exception as e:  # some backends have none
    logging.warning("no memory analysis: %s", e)
    return {}
  if m is None:
    return {}
  args, out = m.argument_size_in_bytes, m.output_size_in_bytes
  alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
  peak = args + out - alias + temp
  return {"peak_memory_gib": peak / 2**30, "temp_memory_gib": temp / 2**30,
          "argument_memory_gib": args / 2**30, "alias_memory_gib": alias / 2**30}


def cost_stats(lowered: Any, compiled: Any) -> Dict[str, float]:
  """XLA's cost analysis of the step: FLOPs (remat's recomputation included) and bytes accessed.

  The compiled program's where the backend has one; XLA:GPU compiled without a device has none,
  so then the lowered program's (before XLA's optimisations), analysed by the host's XLA:CPU.
  """
  try:
    cost = compiled.cost_analysis()
    if not cost:
      from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
      cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client,
                                           lowered.compiler_ir("hlo").as_hlo_module())
  except Exception as e:  # pylint: disable=broad-except  (a figure, not a result)
    logging.warning("no cost analysis: %s", e)
    return {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {f"xla_{k.replace(' ', '_')}": float(cost[k]) for k in ("flops", "bytes accessed")
          if k in cost}


def saved_activation_bytes(model: models.FlipModel, batch: Mapping[str, Any]) -> int:
  """Bytes the backward pass keeps from the forward (jax.vjp's residuals), from abstract shapes.

  Backend-independent, so it shows what `remat_policy` saves where XLA's compiled figure cannot:
  XLA:CPU drops remat's CSE guards, so its memory analysis is the same for every policy.
  """
  def backward(p, b):
    return jax.vjp(lambda p: model.loss_fn(p, b, jax.random.PRNGKey(0))[0], p)[1]

  params = cases.abstract_params(model.module)
  kept = jax.tree_util.tree_leaves(jax.eval_shape(backward, params, batch))
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in kept)


def described_gpus(target_config: str, num_devices: int = 1) -> List[Any]:
  """The devices of one host of `num_devices` GPUs described by an XLA GpuTargetConfig.

  Nothing need be attached: XLA:GPU compiles for the description (jax's deviceless AOT path), so
  its memory analysis is that of the card, remat included, which XLA:CPU's is not.
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  with open(target_config, encoding="utf-8") as f:
    text = f.read()
  try:
    topology = topologies.get_topology_desc("flip_t5x", "cuda", target_config=text,
                                            topology=f"1x1x{num_devices}")
  except NotImplementedError as e:
    raise RuntimeError(
        "--target_config compiles with jax's CUDA plugin, which this Python lacks; install it "
        f"(no GPU needed), e.g. in a separate venv: pip install 'jax[cuda13]=={jax.__version__}'"
    ) from e
  return list(topology.devices)


def for_devices(module: network.FlipTwoTower, devices: Optional[Sequence[Any]]
                ) -> network.FlipTwoTower:
  """The module with its backend's formulations chosen for `devices` (None: attached).

  The network chooses them for this host's backend, which is not the target's when compiling for
  described GPUs.
  """
  if devices is None or module.platform is not None:
    return module
  return module.clone(platform=devices[0].platform)


# XLA:GPU without a device cannot autotune, and its Triton GEMM tiling then fails on some small
# shapes ("Couldn't find output tile sizes"); cuBLAS GEMMs take their place for the analysis.
_DEVICELESS_GPU_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def memory_only(module: network.FlipTwoTower, optimizer_def: Any, ratios: Sequence[float],
                batch_size: int, devices: Optional[Sequence[Any]] = None,
                report: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
  """XLA's memory analysis of the train step per ratio, compiled from abstract shapes.

  With it, `saved_activation_gib`: what the backward keeps (parameters it reads included).
  `devices` (e.g. `described_gpus`): compile for those instead of the attached devices.
  `report` gets one line per ratio as soon as it is compiled (a large model takes minutes).
  """
  partitioner = (partitioning.PjitPartitioner() if devices is None
                 else partitioning.LocalPjitPartitioner(devices=devices))
  target = partitioner.mesh.devices.flat[0]
  module = for_devices(module, devices)
  compile_options = (_DEVICELESS_GPU_OPTIONS if devices is not None and target.platform == "gpu"
                     else None)
  out: Dict[str, Any] = {"batch_size": batch_size, "memory_only": True,
                         "compiled_for": target.device_kind,
                         "compiled_for_devices": partitioner.mesh.devices.size}
  if target.platform == "cpu" and module.remat_policy != "none":
    out["note"] = ("XLA:CPU ignores remat (it drops the CSE guards): the compiled figures are "
                   "those of remat_policy='none'; saved_activation_gib shows the policy's effect")
  for r in ratios:
    model = models.FlipModel(module, optimizer_def=optimizer_def, mask_ratio=r)
    layout = train_state_lib.StateLayout(model, cases.optimizer_of(model), partitioner,
                                         model.input_shapes(batch_size))
    trainer = trainer_lib.FlipTrainer(model=model, partitioner=partitioner, layout=layout,
                                      rng=jax.random.PRNGKey(0))
    shapes = cases.synthetic_batch(module, 1)
    batch = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype,
                                     sharding=partitioner.data_sharding)
             for k, v in shapes.items()}
    t0 = time.perf_counter()
    lowered = trainer.lower_train_step(layout.abstract_with_shardings(), batch)
    compiled = lowered.compile(compile_options)
    compile_s = time.perf_counter() - t0
    out[str(r)] = {**memory_stats(compiled), **cost_stats(lowered, compiled),
                   "compile_s": compile_s,
                   "saved_activation_gib": saved_activation_bytes(model, batch) / 2**30}
    report(f"mask {r}: {out[str(r)]}")
  return out
