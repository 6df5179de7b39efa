"""Device mesh, logical-axis rules and shardings, with t5x's `partitioning` vocabulary.

Gin files say `partitioning.PjitPartitioner(num_partitions=..., logical_axis_rules=
@partitioning.standard_logical_axis_rules())`. This module defines FLIP's partitioner,
`LocalPjitPartitioner`, built directly on `jax.sharding` (Mesh, NamedSharding, `jax.jit` with
in/out shardings), and `PartitionerMethods`, what flip_t5x's runtime needs of any partitioner. The
gin name `PjitPartitioner` is answered through `t5x_interop`: t5x's class extended by
`PartitionerMethods` (FLIP's `partition_states`, `xla_options`) under upstream t5x's programs, so
`t5x.train` gets what it expects, else `LocalPjitPartitioner`.

Mesh: all devices of all processes as a 2-D (`data`, `model`) mesh; `num_partitions` (or the
product of `model_parallel_submesh`) devices form the `model` axis.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from absl import logging
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import optax

from flip_t5x import xla_options as xla_options_lib
from flip_t5x.runtime import t5x_interop

PyTree = Any
LogicalAxisRules = Sequence[Tuple[str, Optional[str]]]
HardwareMesh = Tuple[int, ...]

DATA_AXIS = "data"
MODEL_AXIS = "model"

# FLIP's parameter axis names beyond t5x's: flattened patch pixels and the bias-free projection
# output are small, so they stay replicated.
FLIP_RULES = (("patch", None), ("proj", None))


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1,
                                additional_rules: Optional[LogicalAxisRules] = None
                                ) -> List[Tuple[str, Optional[str]]]:
  """t5x's standard logical-axis rules plus FLIP's `patch` and `proj` (both replicated)."""
  base = [("batch", DATA_AXIS), ("vocab", MODEL_AXIS), ("mlp", MODEL_AXIS),
          ("heads", MODEL_AXIS), ("kv", None), ("joined_kv", MODEL_AXIS)]
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims == (1, 1):
    rules = base + [("embed", None)]
  elif dims == (2, 1):
    rules = base + [("embed", MODEL_AXIS)]
  elif dims == (1, 2):
    rules = base + [("embed", DATA_AXIS)]
  elif dims == (2, 2):
    rules = base + [("embed", MODEL_AXIS), ("embed", DATA_AXIS)]
  else:
    raise ValueError(f"activation_partitioning_dims={activation_partitioning_dims}, "
                     f"parameter_partitioning_dims={parameter_partitioning_dims} is not supported")
  rules += [("relpos_buckets", None), ("abspos_buckets", None), ("length", None),
            ("layers", None), ("stack", None), ("mlp_activations", None)]
  rules += list(FLIP_RULES)
  if additional_rules:
    rules += list(additional_rules)
  return rules


def partition_state_spec(spec: PartitionSpec, shape: Sequence[int], data_size: int
                         ) -> PartitionSpec:
  """Adds `data` to the largest free dimension divisible by the data-axis size (ZeRO-1 style).

  FLIP's `partition_states`: optimizer moments are only read in the update, so splitting them over
  data replicas trades one all-gather of the update for 1/data of their memory.
  """
  if data_size <= 1 or not shape:
    return spec
  entries = list(spec) + [None] * (len(shape) - len(spec))
  used = {a for e in entries for a in ((e,) if isinstance(e, str) else (e or ()))}
  if DATA_AXIS in used:
    return spec
  best = None
  for i, (dim, entry) in enumerate(zip(shape, entries)):
    if entry is None and dim % data_size == 0 and (best is None or dim > shape[best]):
      best = i
  if best is None:
    return spec
  entries[best] = DATA_AXIS
  return PartitionSpec(*entries)


def _spec_fits(spec: PartitionSpec, shape: Sequence[int]) -> bool:
  """A parameter's spec applies to a state leaf of the same rank whose sharded dims are full."""
  return len(spec) <= len(shape) and all(e is None or shape[i] > 1 for i, e in enumerate(spec))


def _mesh_shape(num_devices: int, num_partitions: Optional[int],
                model_parallel_submesh: Optional[HardwareMesh]) -> Tuple[int, int]:
  if model_parallel_submesh is not None:
    if num_partitions is not None and num_partitions != math.prod(model_parallel_submesh):
      raise ValueError("give either num_partitions or model_parallel_submesh, not both")
    num_partitions = math.prod(model_parallel_submesh)
  num_partitions = num_partitions or 1
  if num_devices % num_partitions:
    raise ValueError(f"num_partitions={num_partitions} does not divide the {num_devices} devices")
  return num_devices // num_partitions, num_partitions


def _create_mesh_devices(data: int, model: int, devices: Sequence[Any]) -> np.ndarray:
  """Devices as a [data, model] array: model-parallel groups stay within a process/slice."""
  if jax.process_count() > 1 and devices[0].platform != "cpu":
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    per_process = data // jax.process_count()
    if per_process >= 1 and data % jax.process_count() == 0:
      return mesh_utils.create_hybrid_device_mesh((per_process, model), (jax.process_count(), 1),
                                                  devices)
  if devices[0].platform in ("tpu", "gpu", "cuda", "rocm"):
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    try:
      return mesh_utils.create_device_mesh((data, model), devices)
    except (ValueError, NotImplementedError, AssertionError) as e:
      logging.warning("topology-aware mesh unavailable (%s); using device order", e)
  # Devices are ordered by process, so each process owns a contiguous block of data rows.
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  return np.asarray(ordered, dtype=object).reshape(data, model)


class PartitionerMethods:
  """What flip_t5x's runtime needs of a partitioner beyond t5x's interface (`mesh`,
  `logical_axis_rules`, `partition`, `get_data_layout`): shardings and the parameter/optimizer
  specs. Shared by the local partitioner and the t5x subclass, so flip_t5x.train/eval also run
  where upstream t5x is installed.

  FLIP's constructor arguments, taken here from those of the class it extends: partition_states —
  shard optimizer state over `data` as well (FLIP's L and H recipes); xla_options — the XLA
  options the partitioned functions and the evaluation's encoders compile with (t5x's own
  `partition` compiles with XLA's defaults).
  """

  def __init__(self, *args, partition_states: bool = False,
               xla_options: Optional[xla_options_lib.XlaOptions] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.partition_states = bool(partition_states)
    self.xla_options = xla_options if xla_options is not None else xla_options_lib.XlaOptions()

  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  def sharding(self, spec: Optional[PartitionSpec]) -> NamedSharding:
    return NamedSharding(self.mesh, spec if spec is not None else PartitionSpec())

  @property
  def data_sharding(self) -> NamedSharding:
    """Batches: leading dimension over `data`, everything else replicated."""
    return self.sharding(PartitionSpec(DATA_AXIS))

  # --------------------------------------------------------------- params
  def logical_to_mesh_axes(self, logical_axes: Optional[Sequence[str]]) -> PartitionSpec:
    if logical_axes is None:
      return PartitionSpec()
    return flax_partitioning.logical_to_mesh_axes(tuple(logical_axes),
                                                  tuple(self.logical_axis_rules))

  def params_mesh_axes(self, params_axes: PyTree, params: PyTree) -> PyTree:
    """PartitionSpecs for `params` from the model's `params_axes` collection (flax AxisMetadata).

    Every parameter must have axis names: a parameter created without them would be silently
    replicated, which on a large model is an out-of-memory error far from its cause.
    """
    names = flax_partitioning.get_axis_names(params_axes)
    flat_params = flax_traverse_flatten(params)
    flat_names = flax_traverse_flatten(names)
    missing = sorted("/".join(k) for k in flat_params if k not in flat_names)
    if missing:
      raise ValueError(f"parameters without logical axis names (params_axes): {missing}")
    specs = {}
    for k, leaf in flat_params.items():
      axes = flat_names[k]
      if len(axes) != len(leaf.shape):
        raise ValueError(f"parameter {'/'.join(k)} has shape {leaf.shape} but axes {axes}")
      try:
        specs[k] = self.logical_to_mesh_axes(axes)
      except ValueError as e:
        raise ValueError(f"cannot map logical axes {axes} of {'/'.join(k)}: {e}") from e
    return flax_traverse_unflatten(specs)

  def opt_state_mesh_axes(self, tx: optax.GradientTransformation, opt_state: PyTree,
                          params_specs: PyTree) -> PyTree:
    """Optimizer-state specs: moments follow their parameter (plus `data` if partition_states)."""
    data_size = self.data_size

    def param_like(leaf, spec):
      if self.partition_states:
        return partition_state_spec(spec, leaf.shape, data_size)
      return spec

    def non_param(leaf):
      shape = getattr(leaf, "shape", ())
      if self.partition_states and shape:
        return partition_state_spec(PartitionSpec(), shape, data_size)
      return PartitionSpec()

    try:
      return optax.tree_map_params(tx, param_like, opt_state, params_specs,
                                   transform_non_params=non_param,
                                   is_leaf=lambda x: isinstance(x, PartitionSpec))
    except (AttributeError, TypeError):
      # Optimizers whose init reads shapes (jestimator's Amos) defeat optax's placeholder trick:
      # match state leaves to parameters by key-path suffix and shape instead.
      return self._opt_state_specs_by_path(opt_state, params_specs, param_like, non_param)

  @staticmethod
  def _opt_state_specs_by_path(opt_state, params_specs, param_like, non_param):
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    params = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(params_specs, is_leaf=is_spec)[0]:
      params[tuple(str(getattr(k, "key", k)) for k in path)] = spec

    def leaf_spec(path, leaf):
      keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      shape = tuple(getattr(leaf, "shape", ()))
      for n in range(len(keys), 0, -1):
        spec = params.get(keys[-n:])
        if spec is not None and _spec_fits(spec, shape):
          return param_like(leaf, spec)
      return non_param(leaf)

    return jax.tree_util.tree_map_with_path(leaf_spec, opt_state)

  def get_mesh_axes(self, train_state: Any) -> Any:
    """t5x's `get_mesh_axes` (only where this extends t5x's partitioner), with the optimizer
    state's specs sharded over `data` when `partition_states`."""
    mesh_axes = super().get_mesh_axes(train_state)
    if not self.partition_states:
      return mesh_axes
    flat_axes = traverse_util.flatten_dict(mesh_axes.state_dict(), keep_empty_nodes=True, sep="/")
    flat_state = traverse_util.flatten_dict(train_state.state_dict(), keep_empty_nodes=True,
                                             sep="/")
    for k, spec in flat_axes.items():
      if k.startswith("state/param_states") and isinstance(spec, PartitionSpec):
        leaf = flat_state[k]  # abstract (ShapeDtypeStruct) or concrete
        flat_axes[k] = partition_state_spec(spec, tuple(getattr(leaf, "shape", np.shape(leaf))),
                                            self.data_size)
    return mesh_axes.restore_state(traverse_util.unflatten_dict(flat_axes, sep="/"))


class LocalPjitPartitioner(PartitionerMethods):
  """Partitions FLIP's state and steps over a (`data`, `model`) device mesh.

  Args (t5x's names): num_partitions — size of the `model` axis; model_parallel_submesh — a
  hardware submesh whose product is the `model` axis size; params_on_devices — kept for t5x
  compatibility (parameters always live on devices here); backend — jax backend to take devices
  from; logical_axis_rules — (logical name, mesh axis) pairs. FLIP's own: partition_states and
  xla_options (`PartitionerMethods`); devices — the devices of the mesh instead of
  `jax.devices(backend)`, e.g. a described topology's, to compile for hardware that is not
  attached (`flip_t5x.benchmark --memory_only --target_config`).
  """

  def __init__(self, num_partitions: Optional[int] = None,
               model_parallel_submesh: Optional[HardwareMesh] = None,
               params_on_devices: bool = True, backend: Optional[str] = None,
               ici_mesh_shape: Optional[HardwareMesh] = None,
               dcn_mesh_shape: Optional[HardwareMesh] = None,
               logical_axis_rules: Optional[LogicalAxisRules] = None,
               use_cpu_pjit: Optional[bool] = False,
               partition_states: bool = False,
               xla_options: Optional[xla_options_lib.XlaOptions] = None,
               devices: Optional[Sequence[Any]] = None):
    super().__init__(partition_states=partition_states, xla_options=xla_options)
    if not params_on_devices:
      raise ValueError("params_on_devices=False is not supported by flip_t5x's partitioner")
    if ici_mesh_shape is not None or dcn_mesh_shape is not None:
      raise ValueError("ici_mesh_shape/dcn_mesh_shape are not supported; use num_partitions")
    del use_cpu_pjit
    self._num_partitions = num_partitions
    self._model_parallel_submesh = model_parallel_submesh
    self._backend = backend
    self._devices = list(devices) if devices is not None else None
    self._logical_axis_rules = tuple(
        logical_axis_rules if logical_axis_rules is not None else standard_logical_axis_rules())
    self._mesh = None

  # ------------------------------------------------------------------ mesh
  @property
  def mesh(self) -> Mesh:
    if self._mesh is None:
      devices = self._devices if self._devices is not None else jax.devices(self._backend)
      data, model = _mesh_shape(len(devices), self._num_partitions, self._model_parallel_submesh)
      self._mesh = Mesh(_create_mesh_devices(data, model, devices), (DATA_AXIS, MODEL_AXIS))
      logging.info("device mesh: %d (data) x %d (model) over %d process(es)", data, model,
                   jax.process_count())
    return self._mesh

  @property
  def logical_axis_rules(self) -> Tuple[Tuple[str, Optional[str]], ...]:
    return self._logical_axis_rules

  def get_data_layout(self, batch_size: int) -> "DataLayout":
    """This process's share of a global batch: (per-process batch, shard id, shard count).

    Processes whose devices hold the same rows of the batch (model parallelism across processes)
    read the same shard.
    """
    if batch_size % self.data_size:
      raise ValueError(f"batch size {batch_size} is not divisible by the data-axis size "
                       f"{self.data_size}")
    devices = self.mesh.devices  # [data, model]
    rows = sorted({i for i in range(devices.shape[0]) for d in devices[i]
                   if d.process_index == jax.process_index()})
    groups = sorted({tuple(sorted({i for i in range(devices.shape[0]) for d in devices[i]
                                   if d.process_index == p}))
                     for p in range(jax.process_count())})
    for g in groups:
      if g != tuple(range(g[0], g[0] + len(g))):
        raise ValueError(f"process data rows {g} are not contiguous in the mesh")
    num_shards = len(groups)
    shard_id = groups.index(tuple(rows))
    return DataLayout(batch_size=batch_size // num_shards, shard_id=shard_id,
                      num_shards=num_shards, is_first_host_in_replica_set=True)

  # ----------------------------------------------------------------- jit
  def partition(self, fn: Callable[..., Any], in_axis_resources: Any, out_axis_resources: Any,
                static_argnums: Union[int, Sequence[int]] = (),
                donate_argnums: Union[int, Sequence[int]] = ()) -> Callable[..., Any]:
    """`jax.jit` with NamedShardings built from PartitionSpec pytrees (t5x's `partition`)."""
    to_sharding = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda s: self.sharding(s), tree,
        is_leaf=lambda x: x is None or isinstance(x, PartitionSpec))
    options = xla_options_lib.compiler_options(self.mesh.devices.flat[0].platform,
                                               self.xla_options)
    return jax.jit(fn, in_shardings=to_sharding(in_axis_resources),
                   out_shardings=to_sharding(out_axis_resources),
                   static_argnums=static_argnums, donate_argnums=donate_argnums,
                   compiler_options=options)


class DataLayout:
  """Per-process share of the global batch (t5x's `DataLayout` fields)."""

  def __init__(self, batch_size: int, shard_id: int, num_shards: int,
               is_first_host_in_replica_set: bool):
    self.batch_size = batch_size
    self.shard_id = shard_id
    self.num_shards = num_shards
    self.is_first_host_in_replica_set = is_first_host_in_replica_set

  def __repr__(self):
    return (f"DataLayout(batch_size={self.batch_size}, shard_id={self.shard_id}, "
            f"num_shards={self.num_shards})")


def flax_traverse_flatten(tree: PyTree) -> dict:
  return traverse_util.flatten_dict(dict(tree))


def flax_traverse_unflatten(flat: dict) -> dict:
  return traverse_util.unflatten_dict(flat)


# `PjitPartitioner`, the name gin files use: t5x's class extended by PartitionerMethods under t5x's
# programs, else LocalPjitPartitioner.
__getattr__ = t5x_interop.t5x_names(__name__, {"PjitPartitioner": LocalPjitPartitioner},
                                    extensions={"PjitPartitioner": PartitionerMethods})
