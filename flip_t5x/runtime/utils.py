"""Dataset and checkpoint configuration with t5x's `utils` names, and the input pipeline.

Gin files bind `train/utils.DatasetConfig`, `utils.CheckpointConfig`, `utils.SaveCheckpointConfig`
and `utils.RestoreCheckpointConfig`, and name `utils.get_dataset`. This module defines FLIP's
dataclasses with t5x's field names (the subset that applies): `FlipDatasetConfig`,
`FlipCheckpointConfig`, ..., and the input pipeline, `get_flip_dataset` (and `upstream_get_dataset`,
the same pipeline with t5x's signature, for t5x.train); the gin names are answered through
`t5x_interop`: t5x's own classes under upstream t5x's programs, else these.

Input pipeline: seqio builds each process's shard of the task with the model's feature converter
and batches it; batches become global `jax.Array`s sharded over `data`
(`jax.make_array_from_process_local_data`), and the next one is transferred while a step runs.
The dataset is deterministic for a seed, so resuming skips the batches already consumed.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
from clu.data import dataset_iterator
import jax
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.runtime import t5x_interop

PyTree = Any


# t5x's spelling of "parameters only": every optimizer-state entry (`state/step`,
# `state/param_states/...`) of the checkpoint is dropped; with `fallback_to_scratch = True` t5x
# initialises them afresh (step 0, new moments), which is what flip_t5x.train always does.
PARAMS_ONLY_ASSIGNMENT_MAP = (("state/.*", None),)


def is_params_only_assignment_map(assignment_map: Sequence[Tuple[str, Optional[str]]]) -> bool:
  """Whether `assignment_map` only drops optimizer-state entries (keeps every parameter)."""
  try:
    return all(repl is None and re.fullmatch(pattern, "target/x") is None
               and re.fullmatch(pattern, "state/step") is not None
               for pattern, repl in assignment_map)
  except (TypeError, ValueError, re.error):
    return False


@dataclasses.dataclass
class FlipDatasetConfig:
  """A seqio task/mixture, split and batch (t5x's `utils.DatasetConfig` fields)."""

  mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture]
  task_feature_lengths: Optional[Mapping[str, int]]
  split: str
  batch_size: int  # global batch size
  shuffle: bool
  seed: Optional[int]
  use_cached: bool = False
  pack: bool = False
  use_custom_packing_ops: bool = False
  module: Optional[str] = None
  use_memory_cache: bool = True
  trim_output_features: bool = True


@dataclasses.dataclass
class FlipSaveCheckpointConfig:
  """When and how to save (t5x's names; `dtype` must be float32: FLIP trains in float32)."""

  dtype: str = "float32"
  period: Optional[int] = None
  checkpoint_steps: Optional[Sequence[int]] = None
  keep: Optional[int] = None
  keep_dataset_checkpoints: Optional[int] = None
  save_dataset: bool = False
  # FLIP: write checkpoints in the background while training continues.
  use_async: bool = True

  def __post_init__(self):
    if self.dtype not in (None, "float32"):
      raise ValueError(f"SaveCheckpointConfig.dtype must be 'float32', got {self.dtype!r}")


@dataclasses.dataclass
class FlipRestoreCheckpointConfig:
  """Where to initialise from (t5x's names). `path` = INITIAL_CHECKPOINT_PATH(s).

  mode 'specific': `path` is a checkpoint_<step> directory; 'latest': a MODEL_DIR. Parameters only
  are taken (the optimizer and step start fresh), as unmasked tuning needs. In t5x that is said
  with `assignment_map = PARAMS_ONLY_ASSIGNMENT_MAP` (drop the checkpoint's optimizer state) and
  `fallback_to_scratch = True` (initialise it instead); gin files bind both so upstream t5x.train
  does the same. Other assignment maps are not supported here.
  """

  path: Union[str, Sequence[str], None]
  mode: str = "latest"
  assignment_map: Optional[Sequence[Tuple[str, Optional[str]]]] = None
  strict: bool = True
  fallback_to_scratch: bool = False
  dtype: Optional[str] = None
  restore_dataset: bool = False

  def __post_init__(self):
    if self.mode not in ("specific", "latest"):
      raise ValueError(f"RestoreCheckpointConfig.mode must be 'specific' or 'latest', got "
                       f"{self.mode!r}")
    if self.assignment_map and not is_params_only_assignment_map(self.assignment_map):
      raise ValueError(
          "RestoreCheckpointConfig.assignment_map: flip_t5x restores parameters only and "
          f"supports only maps that drop optimizer state, e.g. {PARAMS_ONLY_ASSIGNMENT_MAP}; "
          f"got {self.assignment_map!r}")
    if self.dtype not in (None, "float32"):
      raise ValueError(f"RestoreCheckpointConfig.dtype must be 'float32', got {self.dtype!r}")


@dataclasses.dataclass
class FlipCheckpointConfig:
  save: Optional[FlipSaveCheckpointConfig] = None
  restore: Optional[FlipRestoreCheckpointConfig] = None


def import_module(module: Optional[str]) -> None:
  if module:
    importlib.import_module(module)


def get_flip_dataset(cfg: Any, shard_id: int, num_shards: int,
                     feature_converter_cls: Callable[..., seqio.FeatureConverter],
                     per_process_batch_size: int, num_epochs: Optional[int] = None,
                     skip_batches: int = 0, seed: Optional[int] = None) -> tf.data.Dataset:
  """One process's batched dataset of model features.

  `seed` overrides `cfg.seed` (the train loop stores the seed it drew in the checkpoint), and
  `skip_batches` resumes mid-stream: same seed + same skip = the batches an uninterrupted run
  would see next.
  """
  import_module(getattr(cfg, "module", None))
  if getattr(cfg, "pack", False):
    feature_converter_cls(pack=True)  # raises the converter's explanation
  converter = feature_converter_cls(pack=False)
  ds = seqio.get_dataset(
      mixture_or_task_name=cfg.mixture_or_task_name,
      task_feature_lengths=cfg.task_feature_lengths,
      dataset_split=cfg.split,
      shuffle=cfg.shuffle,
      num_epochs=num_epochs,
      feature_converter=converter,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
      use_cached=cfg.use_cached,
      seed=cfg.seed if seed is None else seed,
      trim_output_features=getattr(cfg, "trim_output_features", True))
  ds = ds.batch(per_process_batch_size, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(tf.data.AUTOTUNE)


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
  return _ResumingDatasetIterator(lambda skip: get_flip_dataset(
      cfg, shard_id, num_shards, feature_converter_cls, cfg.batch_size // num_shards,
      num_epochs=num_epochs, skip_batches=skip))


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding,
                 global_batch_size: int) -> Mapping[str, jax.Array]:
  """This process's rows -> global arrays sharded over `data`."""
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(sharding, v,
                                                    (global_batch_size,) + v.shape[1:])
  return out


class DeviceIterator:
  """Global sharded batches from a tf.data dataset, `prefetch` batches ahead on device.

  Device transfers are asynchronous, so putting batch n+1 on device before step n's result is
  needed overlaps input transfer with compute.

  Checkpoints need the tf.data iterator exactly after the batches consumed, but prefetching runs
  ahead. `hold_at(step)` names the steps whose position will be saved: the iterator stops pulling
  once it has pulled the batches up to such a step, until `synced_iterator()` hands the
  positioned tf.data iterator out (a one-batch prefetch bubble per checkpoint). `start_step`
  numbers the batches: the first one pulled is for step `start_step`.
  """

  def __init__(self, ds: tf.data.Dataset, sharding: jax.sharding.Sharding,
               global_batch_size: int, prefetch: int = 1, *,
               hold_at: Optional[Callable[[int], bool]] = None, start_step: int = 0):
    self._it = iter(ds)  # tf.data's own iterator: `global_batch` reads its tensors as numpy
    self._sharding = sharding
    self._global_batch_size = global_batch_size
    self._prefetch = max(0, prefetch)
    self._queue = collections.deque()
    self._hold_at = hold_at or (lambda step: False)
    self._pulled = start_step   # step after the last batch pulled from tf.data
    self._released = start_step

  def _held(self) -> bool:
    """Pulled up to a save step whose position has not been taken yet."""
    return self._pulled != self._released and self._hold_at(self._pulled)

  def _fill(self) -> None:
    while len(self._queue) <= self._prefetch:
      if self._held():
        return
      try:
        local = next(self._it)
      except StopIteration:
        return
      self._pulled += 1
      self._queue.append(global_batch(local, self._sharding, self._global_batch_size))

  def synced_iterator(self) -> Any:
    """The tf.data iterator, positioned after exactly the batches consumed so far.

    Raises:
      RuntimeError: if batches were pulled beyond that (the step was not a `hold_at` step).
    """
    if self._queue:
      raise RuntimeError(f"input position is {len(self._queue)} batch(es) ahead of the consumer; "
                         "only steps named by hold_at can be saved")
    self._released = self._pulled
    return self._it

  def __iter__(self) -> Iterator[Mapping[str, jax.Array]]:
    return self

  def __next__(self) -> Mapping[str, jax.Array]:
    self._fill()
    if not self._queue:
      if self._held():
        raise RuntimeError(f"input held after step {self._pulled} for a checkpoint, but its "
                           "position was never taken (synced_iterator)")
      raise StopIteration
    batch = self._queue.popleft()
    self._fill()
    return batch


# t5x's names gin files use: t5x's own classes under t5x's programs (`get_dataset`: FLIP's input
# pipeline with t5x's signature, whose data position a flip_t5x.train checkpoint carries), else
# FLIP's.
__getattr__ = t5x_interop.t5x_names(
    __name__, {"DatasetConfig": FlipDatasetConfig, "SaveCheckpointConfig": FlipSaveCheckpointConfig,
               "RestoreCheckpointConfig": FlipRestoreCheckpointConfig,
               "CheckpointConfig": FlipCheckpointConfig, "get_dataset": get_flip_dataset},
    replacements={"get_dataset": upstream_get_dataset})
