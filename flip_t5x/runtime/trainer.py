"""The partitioned train step (and the unmasked eval step) of a `FlipModel`.

Gin files bind `trainer_cls = @trainer.Trainer` and `trainer.Trainer.num_microbatches` /
`learning_rate_fn`; that name is answered through `t5x_interop`: t5x's class under upstream t5x's
programs (`t5x.train`), else `FlipTrainer`, so flip_t5x.train runs this class with those bindings
whether or not t5x is installed. `FlipTrainer` takes t5x's names for what gin binds; the rest of
its constructor is its own, since only flip_t5x's train loop (never t5x.train) builds one. What
users see while a run goes (throughput, writers, the progress line) is `monitoring`'s.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Optional

from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import optax

from flip_t5x import train_state as train_state_lib
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import t5x_interop

PyTree = Any


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/inf; the run stopped before checkpointing that step."""


class FlipTrainer:
  """Owns the jitted, partitioned train step of a `FlipModel`.

  Args:
    model: the `FlipModel`.
    partitioner: compiles the steps (`partition`) over its mesh and logical-axis rules.
    layout: the train state's structure and specs; its `tx` is the optimizer.
    rng: the masking and dropout seed: the step's rng is `fold_in(rng, step)`, so the same seed
      gives the same masks whatever the mesh or how often the run was interrupted.
    learning_rate_fn, num_microbatches, weight_metrics_computer: t5x's `trainer.Trainer`
      parameters, which gin files bind: the schedule reported as the `learning_rate` metric;
      None or 1 (FLIP's loss needs the whole batch); ignored.
  """

  def __init__(self, model: Any, partitioner: Any, layout: train_state_lib.StateLayout,
               rng: jax.Array, learning_rate_fn: Optional[Callable[[Any], Any]] = None,
               num_microbatches: Optional[int] = None, weight_metrics_computer: Any = None):
    del weight_metrics_computer
    if num_microbatches not in (None, 1):
      raise ValueError("num_microbatches > 1 splits the batch and so the contrastive loss's "
                       "negatives: FLIP needs Trainer.num_microbatches = None")
    self.model = model
    self.partitioner = partitioner
    self.layout = layout
    self.tx = layout.tx
    self.learning_rate_fn = learning_rate_fn
    self._rng = rng
    batch_spec = {"images": jax.sharding.PartitionSpec("data"),
                  "texts": jax.sharding.PartitionSpec("data")}
    self._step_fn = partitioner.partition(
        self._train_step, in_axis_resources=(self.layout.specs, batch_spec),
        out_axis_resources=(self.layout.specs, None), donate_argnums=(0,))
    self._eval_fn = partitioner.partition(
        self._eval_step, in_axis_resources=(self.layout.specs.params, batch_spec),
        out_axis_resources=None)

  def _contexts(self) -> contextlib.ExitStack:
    """The mesh and logical-axis rules active while tracing (flax's activation constraints)."""
    stack = contextlib.ExitStack()
    stack.enter_context(self.partitioner.mesh)
    stack.enter_context(flax_partitioning.axis_rules(self.partitioner.logical_axis_rules))
    return stack

  def _train_step(self, state: train_state_lib.TrainState, batch: Mapping[str, jax.Array]):
    dropout_rng = jax.random.fold_in(self._rng, state.step)

    def loss_fn(params):
      return self.model.loss_fn(params, batch, dropout_rng)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    scalars = {k: m.compute() for k, m in metrics.items()}
    scalars["loss"] = loss
    scalars["grad_norm"] = global_norm(grads)
    scalars["param_norm"] = global_norm(params)
    if self.learning_rate_fn is not None:
      scalars["learning_rate"] = jnp.asarray(self.learning_rate_fn(state.step), jnp.float32)
    new_state = train_state_lib.TrainState(step=state.step + 1, params=params,
                                           opt_state=opt_state)
    return new_state, scalars

  def _eval_step(self, params: PyTree, batch: Mapping[str, jax.Array]):
    loss, metrics = self.model.eval_fn(params, batch)
    scalars = {k: m.compute() for k, m in metrics.items()}
    scalars["loss"] = loss
    return scalars

  def train_step(self, state: train_state_lib.TrainState, batch: Mapping[str, jax.Array]):
    """One update; `state` is donated. Returns (new state, device scalars)."""
    with self._contexts():
      return self._step_fn(state, batch)

  def eval_step(self, params: PyTree, batch: Mapping[str, jax.Array]) -> Mapping[str, jax.Array]:
    with self._contexts():
      return self._eval_fn(params, batch)

  def lower_train_step(self, state, batch):
    with self._contexts():
      return self._step_fn.lower(state, batch)


def global_norm(tree: PyTree) -> jax.Array:
  """The L2 norm over all leaves (as `optax.tree.norm`), squaring through |x| * |x|.

  optax's x * x is the same HLO as AdamW's g ** 2: XLA merges the two, and XLA:CPU then stores g**2
  of every parameter in a buffer of its own for the norm's reduction and the moment update to read
  (one more write and read per gradient; measured in docs/performance.md).
  """
  return jnp.sqrt(sum(jnp.sum(jnp.abs(x) * jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))


def unwrap_optimizer(model: Any) -> optax.GradientTransformation:
  return optimizers.unwrap(model.optimizer_def)


# `Trainer`, the name gin files use: t5x's class under t5x's programs, else FlipTrainer.
__getattr__ = t5x_interop.t5x_names(__name__, {"Trainer": FlipTrainer})
