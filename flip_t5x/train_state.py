"""The train state (step, params, optax state), created already sharded.

`jax.eval_shape` gives the state's structure without allocating it; the partitioner turns the
model's `params_axes` into shardings; one `jax.jit(init, out_shardings=...)` then materialises
every array directly in its shards, so no device ever holds a full unsharded copy.
"""
from __future__ import annotations

from typing import Any, Mapping, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """What a checkpoint holds for resuming: step, params and optimizer state."""

  step: jax.Array
  params: PyTree
  opt_state: PyTree

  def as_dict(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def init_params_fn(model: Any, input_shapes: Mapping[str, Tuple[int, ...]]):
  def init(rng):
    return model.get_initial_variables(rng, input_shapes)["params"]
  return init


def abstract_params_and_axes(model: Any, input_shapes: Mapping[str, Tuple[int, ...]]
                             ) -> Tuple[PyTree, PyTree]:
  """(params ShapeDtypeStructs, params_axes) without allocating anything."""
  variables = jax.eval_shape(lambda r: model.get_initial_variables(r, input_shapes),
                             jax.random.PRNGKey(0))
  if "params_axes" not in variables:
    raise ValueError("the model's get_initial_variables returned no `params_axes`: every "
                     "parameter needs logical axis names to be partitioned")
  return variables["params"], variables["params_axes"]


def params_specs(model: Any, partitioner: Any,
                 input_shapes: Mapping[str, Tuple[int, ...]]) -> Tuple[PyTree, PyTree]:
  """(abstract params, PartitionSpecs of params)."""
  abstract, axes = abstract_params_and_axes(model, input_shapes)
  return abstract, partitioner.params_mesh_axes(axes, abstract)


class StateLayout:
  """Abstract train state, its PartitionSpecs and NamedShardings, for one model/optimizer/mesh."""

  def __init__(self, model: Any, tx: optax.GradientTransformation, partitioner: Any,
               input_shapes: Mapping[str, Tuple[int, ...]]):
    self.model = model
    self.tx = tx
    self.partitioner = partitioner
    self.input_shapes = dict(input_shapes)
    abstract_params, p_specs = params_specs(model, partitioner, input_shapes)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    o_specs = partitioner.opt_state_mesh_axes(tx, abstract_opt, p_specs)
    self.abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                               opt_state=abstract_opt)
    self.specs = TrainState(step=jax.sharding.PartitionSpec(), params=p_specs, opt_state=o_specs)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    self.shardings = jax.tree_util.tree_map(partitioner.sharding, self.specs, is_leaf=is_spec)

  @property
  def params_shardings(self) -> PyTree:
    return self.shardings.params

  def abstract_with_shardings(self) -> TrainState:
    """ShapeDtypeStructs carrying their target sharding (what orbax restores into)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        self.abstract, self.shardings)

  def initialize(self, rng: jax.Array) -> TrainState:
    """Fresh parameters and optimizer state, created in their shards."""
    init_params = init_params_fn(self.model, self.input_shapes)

    def init(rng):
      params = init_params(rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params))

    with self.partitioner.mesh:
      return jax.jit(init, out_shardings=self.shardings)(rng)

  def from_params(self, params: PyTree, step: int = 0) -> TrainState:
    """A state with the given (already sharded) params and a fresh optimizer state."""
    init_opt = jax.jit(self.tx.init, out_shardings=self.shardings.opt_state)
    with self.partitioner.mesh:
      opt_state = init_opt(params)
    step_arr = jax.device_put(jnp.asarray(step, jnp.int32), self.shardings.step)
    return TrainState(step=step_arr, params=params, opt_state=opt_state)

