"""Checks of train()'s bindings before anything is set up: a typo costs seconds, not minutes.

Each error names the binding (and its macro) and exits the binary with status 2 (a
`gin_utils.GinConfigError`), before the model is built or the data is read.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import utils


class TrainConfigError(gin_utils.GinConfigError):
  """A gin value of the right name but unusable value/type; the message names the binding."""


def _check(cond: bool, binding: str, message: str) -> None:
  if not cond:
    raise TrainConfigError(f"{binding}: {message}")


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def refuse_t5x_only(actions: Any, use_hardware_rng: bool) -> None:
  """t5x machinery without a FLIP counterpart: trainer actions are an error, hardware rng a note."""
  _check(not actions, "train.actions", "t5x trainer actions are not supported by flip_t5x")
  if use_hardware_rng:
    logging.info("use_hardware_rng ignored: FLIP's masks come from threefry (mesh-invariant)")


def validate(model, train_dataset_cfg, checkpoint_cfg, partitioner, model_dir, total_steps,
              eval_period, eval_steps, stats_period, random_seed,
              infer_eval_dataset_cfg=None) -> None:
  """Type/value checks of the bindings, before anything is compiled."""
  _check(hasattr(model, "loss_fn") and hasattr(model, "module"), "train.model (MODEL)",
         f"expected a FlipModel, got {type(model).__name__}")
  _check(isinstance(model_dir, (str, os.PathLike)), "train.model_dir (MODEL_DIR)",
         f"expected a string path, got {model_dir!r} ({type(model_dir).__name__}); on the "
         "command line quote it: --gin.MODEL_DIR=\\\"/path\\\"")
  _check(_is_int(total_steps) and total_steps > 0, "train.total_steps (TRAIN_STEPS)",
         f"expected a positive int, got {total_steps!r} ({type(total_steps).__name__})")
  _check(train_dataset_cfg is not None, "train.train_dataset_cfg", "is required")
  bs = train_dataset_cfg.batch_size
  _check(_is_int(bs) and bs > 0, "train/utils.DatasetConfig.batch_size (BATCH_SIZE)",
         f"expected a positive int, got {bs!r} ({type(bs).__name__})")
  tfl = train_dataset_cfg.task_feature_lengths
  _check(isinstance(tfl, Mapping) and set(tfl) == {"image", "targets"},
         "train/utils.DatasetConfig.task_feature_lengths (TASK_FEATURE_LENGTHS)",
         f"expected {{'image': S, 'targets': L}}, got {tfl!r}")
  _check(all(_is_int(v) and v > 0 for v in tfl.values()),
         "TASK_FEATURE_LENGTHS", f"lengths must be positive ints, got {tfl!r}")
  for binding, cfg in (("train", train_dataset_cfg), ("infer_eval", infer_eval_dataset_cfg)):
    lengths = getattr(cfg, "task_feature_lengths", None)
    if cfg is None or (binding == "infer_eval" and lengths is None):  # None: the train lengths
      continue
    try:
      model.check_feature_lengths(lengths)
    except ValueError as e:
      raise TrainConfigError(f"{binding}/utils.DatasetConfig.task_feature_lengths: {e}") from None
  _check(isinstance(train_dataset_cfg.mixture_or_task_name, str) or hasattr(
      train_dataset_cfg.mixture_or_task_name, "get_dataset"),
         "train/utils.DatasetConfig.mixture_or_task_name (MIXTURE_OR_TASK_NAME)",
         f"expected a task name, got {train_dataset_cfg.mixture_or_task_name!r}")
  for name, v in (("eval_period (EVAL_PERIOD)", eval_period), ("eval_steps", eval_steps),
                  ("stats_period", stats_period)):
    _check(v is None or (_is_int(v) and v >= 0), f"train.{name}",
           f"expected a non-negative int or None, got {v!r}")
  _check(random_seed is None or _is_int(random_seed), "train.random_seed (RANDOM_SEED)",
         f"expected an int or None, got {random_seed!r}")
  _check(hasattr(partitioner, "mesh"), "train.partitioner",
         f"expected a partitioning.PjitPartitioner, got {type(partitioner).__name__}")
  try:
    data_size = partitioner.data_size
  except ValueError as e:
    raise TrainConfigError(f"partitioning.PjitPartitioner.num_partitions (NUM_PARTITIONS): "
                           f"{e}") from e
  _check(bs % data_size == 0, "train/utils.DatasetConfig.batch_size (BATCH_SIZE)",
         f"{bs} is not divisible by the {data_size} devices of the mesh's data axis "
         f"({jax.device_count()} devices / NUM_PARTITIONS)")
  save = getattr(checkpoint_cfg, "save", None)
  if save is not None:
    _check(save.period is None or (_is_int(save.period) and save.period > 0),
           "utils.SaveCheckpointConfig.period", f"expected a positive int, got {save.period!r}")
    _check(save.keep is None or (_is_int(save.keep) and save.keep > 0),
           "utils.SaveCheckpointConfig.keep", f"expected a positive int, got {save.keep!r}")
  _check_data(train_dataset_cfg)


def _tasks(cfg: Any) -> Sequence[seqio.Task]:
  """The seqio tasks a DatasetConfig reads (a mixture's sub-tasks)."""
  try:
    utils.import_module(getattr(cfg, "module", None))
  except ImportError as e:
    raise TrainConfigError(f"train/utils.DatasetConfig.module (MIXTURE_OR_TASK_MODULE): "
                           f"{e}") from e
  name = cfg.mixture_or_task_name
  try:
    found = seqio.get_mixture_or_task(name) if isinstance(name, str) else name
  except ValueError as e:
    raise TrainConfigError(f"MIXTURE_OR_TASK_NAME: {gin_utils.one_line(e)}") from e
  return list(found.tasks) if isinstance(found, seqio.Mixture) else [found]


def _check_data(cfg: Any) -> None:
  """The training data files and vocabulary files exist.

  Reading them starts after the model is set up (minutes for a large model); a typo'd pattern
  or path should cost seconds.
  """
  for task in _tasks(cfg):
    try:
      task.source.list_shards(cfg.split)  # Img2DatasetSource: raises naming an unmatched glob
      vocab_files = {k: getattr(f.vocabulary, "vocab_file", None)
                     for k, f in task.output_features.items()}
    except (ValueError, OSError, tf.errors.OpError) as e:
      raise TrainConfigError(f"data of task {task.name!r}: {gin_utils.one_line(e)}") from e
    for key, path in vocab_files.items():
      _check(path is None or tf.io.gfile.exists(path), "VOCAB_FILE",
             f"vocabulary file {path!r} (of task {task.name!r}'s {key!r}) does not exist")
