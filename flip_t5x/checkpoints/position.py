"""The input position: each shard's tf.data iterator (and FLIP's skip counters) in a checkpoint.

t5x's `dataset` item: `train_ds-<shard>-of-<count>.{index,data-*}` holds
`tf.train.Checkpoint(ds=iterator)` (t5x's key and names; with several processes under
`process_<i>-of-<n>/`, as t5x), and `flip_counters-<shard>-of-<count>.*` beside it FLIP's
skipped-record counters, a file t5x never opens. The iterator state holds the record shuffle
buffer (compressed images), the pass count, the file shuffle's generator state and the batches
tf.data has prefetched; a tf.data iterator restores only into an identical graph.

Earlier flip_t5x releases wrote one `input_position/input_position-<i>-of-<n>` checkpoint per
process (iterator and counters together); `restore_legacy_input_position` still reads it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Sequence

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

from flip_t5x.checkpoints import layout
from flip_t5x.data import preprocessors

TRAIN_DS_PREFIX = "train_ds"
FLIP_COUNTERS_PREFIX = "flip_counters"


class PositionFiles(NamedTuple):
  """The checkpoint prefixes of one shard's saved position."""

  iterator: str
  counters: str


def _shard_name(prefix: str, shard_id: int, num_shards: int) -> str:
  return f"{prefix}-{shard_id:03}-of-{num_shards:03}"


def _tf_iterator(iterator: Any) -> tf.data.Iterator:
  """`iterator`, refused unless it is a tf.data iterator (`iter(dataset)`).

  t5x's `ds` key holds that iterator's state; a `tf.data.NumpyIterator` (`as_numpy_iterator()`)
  saves under another key, which t5x does not read.
  """
  if not isinstance(iterator, tf.data.Iterator):
    raise TypeError(f"the input position needs a tf.data iterator (iter(dataset)), got "
                    f"{type(iterator).__name__}")
  return iterator


def position_files(directory: str, shard_id: int = 0, num_shards: int = 1) -> PositionFiles:
  directory = os.fspath(directory)
  return PositionFiles(os.path.join(directory, _shard_name(TRAIN_DS_PREFIX, shard_id, num_shards)),
                       os.path.join(directory,
                                    _shard_name(FLIP_COUNTERS_PREFIX, shard_id, num_shards)))


def save_input_position(iterator: Any, directory: str, shard_id: int = 0, num_shards: int = 1,
                        counter_names: Sequence[str] = ("train",)) -> PositionFiles:
  """Writes this shard's tf.data iterator state and skip counters into `directory`.

  `iterator`: a tf.data iterator (`iter(ds)`), positioned after the batches consumed.
  """
  iterator = _tf_iterator(iterator)
  files = position_files(directory, shard_id, num_shards)
  tf.io.gfile.makedirs(os.fspath(directory))
  tf.train.Checkpoint(ds=iterator).write(files.iterator)
  tf.train.Checkpoint(**preprocessors.counter_variables(counter_names)).write(files.counters)
  return files


def restore_input_position(iterator: Any, directory: str, shard_id: int = 0, num_shards: int = 1,
                           counter_names: Sequence[str] = ("train",)) -> bool:
  """Restores what `save_input_position` wrote into the unused `iterator`; False if absent.

  Raises:
    InputPositionError: the saved position is another pipeline's (another tf.data graph).
  """
  iterator = _tf_iterator(iterator)
  files = position_files(directory, shard_id, num_shards)
  if not tf.io.gfile.exists(files.iterator + ".index"):
    return False
  try:
    tf.train.Checkpoint(ds=iterator).read(files.iterator).assert_consumed()
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise layout.InputPositionError(
        f"the tf.data position in {files.iterator} does not fit this run's input pipeline (a "
        f"tf.data iterator restores only into an identical graph): "
        f"{str(e).splitlines()[0][:200]}") from None
  if tf.io.gfile.exists(files.counters + ".index"):
    counters = preprocessors.counter_variables(counter_names)
    tf.train.Checkpoint(**counters).read(files.counters).assert_consumed()
  else:
    logging.info("%s has no FLIP skip counters (written by t5x?): they restart at 0", directory)
  return True


def legacy_prefix(step_dir: epath.Path, process_index: int, process_count: int) -> str:
  """Where an earlier flip_t5x release kept this process's position in a `flip_items` step."""
  return os.fspath(step_dir / layout.INPUT_POSITION /
                   f"input_position-{process_index:05d}-of-{process_count:05d}")


def restore_legacy_input_position(iterator: Any, step_dir: epath.Path,
                                  counter_names: Sequence[str] = ("train",)) -> bool:
  """Restores an earlier flip_t5x release's position (`flip_items` layout); False if absent."""
  iterator = _tf_iterator(iterator)
  prefix = legacy_prefix(step_dir, jax.process_index(), jax.process_count())
  if not tf.io.gfile.exists(prefix + ".index"):
    return False
  counters = preprocessors.counter_variables(counter_names)
  tf.train.Checkpoint(iterator=iterator, **counters).read(prefix).assert_consumed()
  return True


def process_dir(item_dir: epath.Path) -> epath.Path:
  """This process's part of the `dataset` item (t5x's `process_<i>-of-<n>` with several)."""
  if jax.process_count() > 1:
    return item_dir / f"process_{jax.process_index()}-of-{jax.process_count()}"
  return item_dir


def has_position(item_dir: epath.Path) -> bool:
  """Whether a `dataset` item holds an iterator for this process."""
  item = process_dir(item_dir)
  return item.is_dir() and any(p.name.startswith(TRAIN_DS_PREFIX) for p in item.iterdir())


class DatasetHandler(ocp.CheckpointHandler):
  """t5x's `dataset` item as an orbax handler: this shard's position, saved inside the step.

  Synchronous: the iterator state is captured inside `CheckpointManager.save`, before the train
  loop pulls the next batch; orbax's atomic rename covers it with the rest of the step.
  """

  def __init__(self, shard_id: int = 0, num_shards: int = 1,
               counter_names: Sequence[str] = ("train",)):
    self._shard = (shard_id, num_shards)
    self._counter_names = tuple(counter_names)

  def save(self, directory: epath.Path, args: "DatasetSave") -> None:
    if args.iterator is not None:
      save_input_position(args.iterator, process_dir(directory), *self._shard,
                          counter_names=self._counter_names)

  def restore(self, directory: epath.Path, args: "DatasetRestore") -> Any:
    directory = process_dir(directory)
    if not restore_input_position(args.iterator, directory, *self._shard,
                                  counter_names=self._counter_names):
      name = _shard_name(TRAIN_DS_PREFIX, *self._shard)
      raise layout.InputPositionError(f"{directory} has no {name} (was the run saved with "
                                      "another number of input shards?)")
    return args.iterator


@ocp.args.register_with_handler(DatasetHandler, for_save=True)
@dataclasses.dataclass
class DatasetSave(ocp.args.CheckpointArgs):
  iterator: Any = None


@ocp.args.register_with_handler(DatasetHandler, for_restore=True)
@dataclasses.dataclass
class DatasetRestore(ocp.args.CheckpointArgs):
  iterator: Any = None
