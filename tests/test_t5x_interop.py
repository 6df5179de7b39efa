"""t5x_interop without t5x: what flip_t5x's programs configure, and the input t5x.train reads.

Upstream t5x is never installed here (scripts/check_t5x_parity.sh runs the real thing). What is
tested is the part that runs either way: flip_t5x's programs configure FLIP's classes even where
t5x imports (`T5X_AVAILABLE` forced on: a wrong decision would reach for t5x's modules and fail
the parse), and t5x.train's `get_dataset_fn` reads flip_t5x.train's own pipeline, so a data
position either runtime saved restores into the other's, and one that does not fit skips batches.
"""
from __future__ import annotations

import inspect
import logging
import os

import gin
import jax
import numpy as np
import pytest
import tensorflow as tf

from flip_t5x import train_state
from flip_t5x.checkpoints import position
from flip_t5x.data import feature_converters
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import t5x_interop
from flip_t5x.runtime import train_loop
from flip_t5x.runtime import trainer
from flip_t5x.runtime import utils
import test_train_helpers as h


def test_flip_programs_configure_flip_classes_where_t5x_imports(monkeypatch,
                                                                 clean_gin_and_counters):
  monkeypatch.setattr(t5x_interop, "T5X_AVAILABLE", True)
  monkeypatch.setattr(t5x_interop, "_flip_classes", False)
  assert t5x_interop.upstream_classes()  # what upstream t5x.train's own parse gets
  train_loop.register_train_for_gin()
  gin_utils.parse_gin_flags([h.ROOT], [a.split("=", 1)[1] for a in h.BASE_ARGS[:2]],
                            [a[len("--gin."):] for a in h.BASE_ARGS[2:]]
                            + ["MODEL_DIR='/unused'", "TRAIN_STEPS=4"])
  assert not t5x_interop.upstream_classes()

  def bound(name):
    return gin.query_parameter(f"train_script.train.{name}").scoped_configurable_fn

  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  assert isinstance(model.optimizer_def, optimizers.OptaxOptimizer)
  partitioner = bound("partitioner")()
  assert isinstance(partitioner, partitioning.LocalPjitPartitioner)
  assert isinstance(bound("train_dataset_cfg")(), utils.FlipDatasetConfig)
  assert inspect.unwrap(bound("get_dataset_fn")) is utils.get_flip_dataset
  layout = train_state.StateLayout(model, trainer.unwrap_optimizer(model), partitioner,
                                   {"images": (8, h.IMAGE, h.IMAGE, 3), "texts": (8, h.TEXT)})
  step_trainer = bound("trainer_cls")(model=model, partitioner=partitioner, layout=layout,
                                      rng=jax.random.PRNGKey(0))
  # The trainer.Trainer.* bindings reach it: the schedule (warmup 2 to 0.05 x 8 / 256, cosine
  # to 0 at step 4) that gives the `learning_rate` metric.
  assert isinstance(step_trainer, trainer.FlipTrainer)
  np.testing.assert_allclose([float(step_trainer.learning_rate_fn(s)) for s in range(5)],
                             [0.0, 0.00078125, 0.0015625, 0.00078125, 0.0], rtol=1e-6)


def test_t5x_names_answer_only_their_names():
  assert partitioning.PjitPartitioner is partitioning.LocalPjitPartitioner
  assert utils.get_dataset is utils.get_flip_dataset
  assert trainer.Trainer is trainer.FlipTrainer
  assert not hasattr(utils, "Trainer") and not hasattr(trainer, "DatasetConfig")
  with pytest.raises(ValueError, match="replacements and extensions must name"):
    t5x_interop.t5x_names("flip_t5x.runtime.utils", {"DatasetConfig": utils.FlipDatasetConfig},
                          replacements={"get_dataset": utils.upstream_get_dataset})


def _dataset_cfg() -> utils.FlipDatasetConfig:
  return utils.FlipDatasetConfig(
      mixture_or_task_name=h.TASK, task_feature_lengths={"image": h.IMAGE, "targets": h.TEXT},
      split="train", batch_size=4, shuffle=True, seed=5, use_cached=False, pack=False)


def _flip_batches(cfg, skip=0):
  return iter(utils.get_flip_dataset(cfg, 0, 1, feature_converters.ImageTextFeatureConverter,
                                     cfg.batch_size, skip_batches=skip, seed=cfg.seed))


def test_t5x_train_restores_a_flip_t5x_data_position(tmp_path):
  cfg = _dataset_cfg()
  expected = [b["texts"] for b, _ in zip(_flip_batches(cfg), range(4))]
  # flip_t5x.train's save after 2 steps: its pipeline's iterator, t5x's file names.
  saved = _flip_batches(cfg)
  next(saved), next(saved)
  item = tmp_path / "checkpoint_2" / "dataset"
  files = position.save_input_position(saved, str(item))
  upstream = utils.upstream_get_dataset(cfg, 0, 1,
                                              feature_converters.ImageTextFeatureConverter)
  upstream.restore(files.iterator)
  np.testing.assert_array_equal(next(upstream)["texts"], expected[2])
  np.testing.assert_array_equal(next(upstream)["texts"], expected[3])


def test_t5x_train_skips_batches_when_the_position_does_not_fit(tmp_path, caplog):
  cfg = _dataset_cfg()
  expected = [b["texts"] for b, _ in zip(_flip_batches(cfg), range(5))]
  other = iter(tf.data.Dataset.range(10).batch(2))  # another graph's position
  next(other)
  item = tmp_path / "checkpoint_3" / "dataset"
  files = position.save_input_position(other, str(item))
  upstream = utils.upstream_get_dataset(cfg, 0, 1,
                                              feature_converters.ImageTextFeatureConverter)
  with caplog.at_level(logging.WARNING):
    upstream.restore(files.iterator)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and r.module == "utils"]
  assert len(warnings) == 1 and "skipping 3 batches" in warnings[0], warnings
  assert os.fspath(files.iterator) in warnings[0]
  np.testing.assert_array_equal(next(upstream)["texts"], expected[3])
  np.testing.assert_array_equal(next(upstream)["texts"], expected[4])


def test_t5x_get_dataset_refuses_what_t5x_refuses():
  cfg = _dataset_cfg()
  with pytest.raises(ValueError, match="not divisible by the 3 data shards"):
    utils.upstream_get_dataset(cfg, 0, 3, feature_converters.ImageTextFeatureConverter)
  with pytest.raises(ValueError, match="continue_from_last_checkpoint"):
    utils.upstream_get_dataset(cfg, 0, 1, feature_converters.ImageTextFeatureConverter,
                                     continue_from_last_checkpoint=True)
