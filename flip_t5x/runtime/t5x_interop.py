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

t5x's classes answer only under upstream t5x's own programs: flip_t5x's binaries call
`use_flip_classes()` before parsing gin files, so `python -m flip_t5x.train` builds the same
FlipTrainer, with the same `trainer.Trainer.*` bindings and the same metrics, whether or not t5x is
installed. Every other upstream-vs-ours decision is here too: the container of
`model.optimizer_def` (`optimizer_def`) and the input pipeline t5x.train reads (`get_dataset`,
gin's `utils.get_dataset`: FLIP's, whose data position a flip_t5x.train checkpoint carries).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
from clu.data import dataset_iterator
from flax import traverse_util
from jax.sharding import PartitionSpec
import numpy as np
import optax
import seqio
import tensorflow as tf

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


class _ResumingDatasetIterator(dataset_iterator.TfDatasetIterator):
  """t5x.train's iterator over FLIP's input pipeline (`dataset_at(skip)` builds it).

  A checkpoint's data position restores only into the graph that wrote it. One that does not fit
  (e.g. written by another version of the pipeline) is not fatal, as in flip_t5x.train: the
  stream is rebuilt skipping the checkpoint's `step` batches, with a warning.
  """

  def __init__(self, dataset_at: Callable[[int], tf.data.Dataset]):
    super().__init__(dataset_at(0), checkpoint=True)
    self._dataset_at = dataset_at

  def restore(self, filename: Any) -> None:
    try:
      super().restore(filename)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
            tf.errors.FailedPreconditionError, AssertionError) as e:
      found = re.findall(r"checkpoint_(\d+)", str(filename))
      skip = int(found[-1]) if found else 0
      logging.warning(
          "the data position in %s does not fit this input pipeline (%s); skipping %d batches "
          "to resume the data stream instead", filename, str(e).strip().splitlines()[0], skip)
      self._dataset = self._dataset_at(skip)
      self.reset()


def upstream_get_dataset(cfg: Any, shard_id: int, num_shards: int,
                         feature_converter_cls: Callable[..., seqio.FeatureConverter],
                         num_epochs: Optional[int] = None,
                         continue_from_last_checkpoint: bool = False) -> Any:
  """t5x.train's `get_dataset_fn` (t5x's signature): flip_t5x.train's input pipeline.

  Both runtimes read the same tf.data graph, so a data position either one saved restores into the
  other; one that does not fit skips batches (`_ResumingDatasetIterator`).
  """
  if continue_from_last_checkpoint:
    raise ValueError("continue_from_last_checkpoint: not supported by this get_dataset_fn")
  if cfg.batch_size % num_shards:
    raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {num_shards} data "
                     "shards")
  return _ResumingDatasetIterator(lambda skip: utils.get_flip_dataset(
      cfg, shard_id, num_shards, feature_converter_cls, cfg.batch_size // num_shards,
      num_epochs=num_epochs, skip_batches=skip))


# {module: {t5x's name: (FLIP's, upstream t5x's)}}; the latter read only under t5x's programs.
_GIN_NAMES: Dict[str, Dict[str, Tuple[Any, Callable[[], Any]]]] = {
    partitioning.__name__: {
        "PjitPartitioner": (partitioning.LocalPjitPartitioner,
                            lambda: UpstreamPjitPartitioner)},
    utils.__name__: {
        "DatasetConfig": (utils.FlipDatasetConfig, lambda: t5x_utils.DatasetConfig),
        "SaveCheckpointConfig": (utils.FlipSaveCheckpointConfig,
                                 lambda: t5x_utils.SaveCheckpointConfig),
        "RestoreCheckpointConfig": (utils.FlipRestoreCheckpointConfig,
                                    lambda: t5x_utils.RestoreCheckpointConfig),
        "CheckpointConfig": (utils.FlipCheckpointConfig, lambda: t5x_utils.CheckpointConfig),
        "get_dataset": (utils.get_flip_dataset, lambda: upstream_get_dataset)},
    trainer.__name__: {
        "Trainer": (trainer.FlipTrainer, lambda: t5x_trainer.Trainer)},
}


_flip_classes = False  # set by flip_t5x's binaries (use_flip_classes)


def use_flip_classes() -> None:
  """This program is flip_t5x's: t5x's gin names mean FLIP's classes even where t5x imports.

  flip_t5x's binaries parse gin files through `gin_utils.parse_gin_flags`, which calls it first:
  they configure and run the same objects (trainer and its bindings, partitioner, configs,
  optimizer container, input pipeline) with or without t5x.
  """
  global _flip_classes
  _flip_classes = True


def upstream_classes() -> bool:
  """Whether t5x's gin names mean upstream t5x's classes: t5x imports and this is its program."""
  return T5X_AVAILABLE and not _flip_classes


def gin_name(module: str, name: str) -> Any:
  """What t5x's `name` in `module` means: upstream t5x's under its programs, else FLIP's.

  Raises:
    AttributeError: `module` has no such name (what a module attribute lookup raises).
  """
  try:
    ours, upstream = _GIN_NAMES[module][name]
  except KeyError:
    raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
  return upstream() if upstream_classes() else ours


def optimizer_def(tx: optax.GradientTransformation,
                  hyperparameters: optimizers.Hyperparameters) -> Any:
  """`model.optimizer_def` for `tx`: t5x's `OptaxWrapper` (what `t5x.train` expects) under t5x's
  programs, else `optimizers.OptaxOptimizer`; either carries `hyperparameters`.
  """
  if not upstream_classes():
    return optimizers.OptaxOptimizer(tx, hyperparameters)
  wrapper = t5x_optimizers.OptaxWrapper(tx)
  # Not t5x's `hyper_params`: t5x passes those into apply_gradient and replaces them.
  wrapper.hyperparameters = hyperparameters
  return wrapper
