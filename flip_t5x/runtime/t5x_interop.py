"""Upstream t5x, in one place: whether it is importable, and which class each t5x name means.

flip_t5x never needs t5x, but its gin files also drive upstream `t5x.train` / `t5x.eval`. They
import this project's modules under t5x's names (`from flip_t5x.runtime import partitioning,
utils, trainer`) and bind `partitioning.PjitPartitioner`, `utils.DatasetConfig`,
`utils.SaveCheckpointConfig`, `utils.RestoreCheckpointConfig`, `utils.CheckpointConfig` and
`trainer.Trainer`. Gin's dynamic registration resolves each selector as an attribute of the
imported module when it parses the file (`getattr(flip_t5x.runtime.utils, "DatasetConfig")`) and
registers whatever object it finds under that name; under upstream t5x that object must be t5x's
own class, which t5x.train builds, checks and calls. So those modules define only FLIP's classes,
under their own names (`LocalPjitPartitioner`, `FlipDatasetConfig`, ..., `FlipTrainer`), and
answer t5x's names through a module `__getattr__` that asks `gin_name` here.

Every other upstream-vs-ours decision is here too: the container of `model.optimizer_def`
(`optimizer_def`) and the trainer flip_t5x's own loop runs when gin hands it t5x's (`flip_class`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from flax import traverse_util
from jax.sharding import PartitionSpec
import numpy as np
import optax

from flip_t5x.runtime import optimizers
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import trainer
from flip_t5x.runtime import utils

try:  # not on PyPI: present only where a user installed it (scripts/check_t5x_parity.sh)
  from t5x import optimizers as t5x_optimizers  # pylint: disable=g-import-not-at-top
  from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
  from t5x import trainer as t5x_trainer  # pylint: disable=g-import-not-at-top
  from t5x import utils as t5x_utils  # pylint: disable=g-import-not-at-top
  T5X_AVAILABLE = True
except ImportError:  # the normal case on a PyPI-only install
  T5X_AVAILABLE = False


if T5X_AVAILABLE:

  class UpstreamPjitPartitioner(partitioning.PartitionerMethods,
                                t5x_partitioning.PjitPartitioner):
    """t5x's PjitPartitioner, plus FLIP's `partition_states` for the optimizer state (and the
    methods flip_t5x's own runtime calls)."""

    def __init__(self, *args, partition_states: bool = False, **kwargs):
      super().__init__(*args, **kwargs)
      self.partition_states = bool(partition_states)

    def get_mesh_axes(self, train_state):
      mesh_axes = super().get_mesh_axes(train_state)
      if not self.partition_states:
        return mesh_axes
      data_size = self.mesh.shape[partitioning.DATA_AXIS]
      flat_axes = traverse_util.flatten_dict(mesh_axes.state_dict(), keep_empty_nodes=True,
                                              sep="/")
      flat_state = traverse_util.flatten_dict(train_state.state_dict(), keep_empty_nodes=True,
                                               sep="/")
      for k, spec in flat_axes.items():
        if k.startswith("state/param_states") and isinstance(spec, PartitionSpec):
          leaf = flat_state[k]  # abstract (ShapeDtypeStruct) or concrete
          flat_axes[k] = partitioning.partition_state_spec(
              spec, tuple(getattr(leaf, "shape", np.shape(leaf))), data_size)
      return mesh_axes.restore_state(traverse_util.unflatten_dict(flat_axes, sep="/"))


# {module: {t5x's name: (FLIP's class, upstream t5x's class)}}; the latter read only with t5x.
_GIN_NAMES: Dict[str, Dict[str, Tuple[type, Callable[[], type]]]] = {
    partitioning.__name__: {
        "PjitPartitioner": (partitioning.LocalPjitPartitioner,
                            lambda: UpstreamPjitPartitioner)},
    utils.__name__: {
        "DatasetConfig": (utils.FlipDatasetConfig, lambda: t5x_utils.DatasetConfig),
        "SaveCheckpointConfig": (utils.FlipSaveCheckpointConfig,
                                 lambda: t5x_utils.SaveCheckpointConfig),
        "RestoreCheckpointConfig": (utils.FlipRestoreCheckpointConfig,
                                    lambda: t5x_utils.RestoreCheckpointConfig),
        "CheckpointConfig": (utils.FlipCheckpointConfig, lambda: t5x_utils.CheckpointConfig)},
    trainer.__name__: {
        "Trainer": (trainer.FlipTrainer, lambda: t5x_trainer.Trainer)},
}


def gin_name(module: str, name: str) -> type:
  """The class t5x's `name` in `module` means: upstream t5x's when importable, else FLIP's.

  Raises:
    AttributeError: `module` has no such name (what a module attribute lookup raises).
  """
  try:
    ours, upstream = _GIN_NAMES[module][name]
  except KeyError:
    raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
  return upstream() if T5X_AVAILABLE else ours


def flip_class(cls: Any) -> Any:
  """The class flip_t5x's own loop runs for a gin-bound class of t5x's vocabulary.

  Under upstream t5x, gin's `@trainer.Trainer` is t5x's Trainer (what `t5x.train` builds);
  `flip_t5x.train` runs its own step, `FlipTrainer`. Anything else is returned as given.
  """
  if T5X_AVAILABLE and isinstance(cls, type) and issubclass(cls, t5x_trainer.Trainer):
    return trainer.FlipTrainer
  return cls


def optimizer_def(tx: optax.GradientTransformation,
                  hyperparameters: optimizers.Hyperparameters) -> Any:
  """`model.optimizer_def` for `tx`: t5x's `OptaxWrapper` (what `t5x.train` expects) when
  upstream t5x is importable, else `optimizers.OptaxOptimizer`; either carries `hyperparameters`.
  """
  if not T5X_AVAILABLE:
    return optimizers.OptaxOptimizer(tx, hyperparameters)
  wrapper = t5x_optimizers.OptaxWrapper(tx)
  # Not t5x's `hyper_params`: t5x passes those into apply_gradient and replaces them.
  wrapper.hyperparameters = hyperparameters
  return wrapper
