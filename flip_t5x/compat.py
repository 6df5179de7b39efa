"""The one place that papers over library drift, so the rest of the code imports cleanly.

- jestimator 0.3.3 (the PyPI release) imports `PartitionSpec` from `jax.experimental.pjit`, which
  current jax no longer exports; `import_amos()` restores that alias before importing it.
- Upstream t5x is optional (it is not on PyPI): `T5X_AVAILABLE` tells whether `t5x.models` imports,
  and `BaseModel` is t5x's when it does.
"""
from __future__ import annotations

import abc
import types
from typing import Any

import jax


def import_amos() -> types.ModuleType:
  """Returns `jestimator.amos` after making its old `PartitionSpec` import resolve."""
  import jax.experimental.pjit as pjit_module  # pylint: disable=g-import-not-at-top
  if not hasattr(pjit_module, "PartitionSpec"):
    pjit_module.PartitionSpec = jax.sharding.PartitionSpec
  from jestimator import amos  # pylint: disable=g-import-not-at-top
  from jestimator import amos_helper  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  return amos


class _LocalBaseModel(abc.ABC):
  """t5x.models.BaseModel's interface, used when upstream t5x is not installed."""

  FEATURE_CONVERTER_CLS: Any

  def __init__(self, optimizer_def: Any):
    self.optimizer_def = optimizer_def

  @abc.abstractmethod
  def loss_fn(self, params, batch, dropout_rng):
    ...

  def eval_fn(self, params, batch):
    return self.loss_fn(params=params, batch=batch, dropout_rng=None)

  def predict_batch(self, params, batch, rng=None):
    return self.predict_batch_with_aux(params, batch, rng=rng)[0]

  @abc.abstractmethod
  def predict_batch_with_aux(self, params, batch, rng=None):
    ...

  @abc.abstractmethod
  def score_batch(self, params, batch, return_intermediates=False):
    ...

  @abc.abstractmethod
  def get_initial_variables(self, rng, input_shapes, input_types=None):
    ...


try:
  from t5x import models as _t5x_models  # pylint: disable=g-import-not-at-top
  BaseModel = _t5x_models.BaseModel
  T5X_AVAILABLE = True
except ImportError:  # the normal case on a PyPI-only install
  BaseModel = _LocalBaseModel
  T5X_AVAILABLE = False
