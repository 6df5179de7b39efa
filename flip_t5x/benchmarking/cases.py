"""What every benchmark measurement shares: synthetic inputs, the optimizer, the model summary,
the host environment, and the summary of a list of step times."""
from __future__ import annotations

import os
import platform
import statistics
from typing import Any, Dict, Sequence

import jax
import numpy as np

from flip_t5x import models
from flip_t5x import network
from flip_t5x.runtime import optimizers


def optimizer_of(model: models.FlipModel) -> Any:
  """The gin-bound optimizer, else FLIP's AdamW (b1 0.9, b2 0.95, wd 0.2)."""
  if model.optimizer_def is not None:
    return optimizers.unwrap(model.optimizer_def)
  return optimizers.unwrap(optimizers.adamw(1e-4))


def synthetic_batch(module: network.FlipTwoTower, batch_size: int, seed: int = 0
                    ) -> Dict[str, np.ndarray]:
  """Random normal images and random token ids of the model's shapes (the step's speed does not
  depend on the values)."""
  rng = np.random.default_rng(seed)
  shapes = models.FlipModel(module).input_shapes(batch_size)
  return {"images": rng.standard_normal(shapes["images"], np.float32),
          "texts": rng.integers(1, module.text.vocab_size, shapes["texts"], dtype=np.int32)}


def abstract_params(module: network.FlipTwoTower) -> Any:
  """The parameter tree's shapes and dtypes, without initialising it."""
  model = models.FlipModel(module)
  init = lambda rng: model.get_initial_variables(rng, model.input_shapes())["params"]
  return jax.eval_shape(init, jax.random.PRNGKey(0))


def model_summary(module: network.FlipTwoTower) -> Dict[str, Any]:
  """The model's hyper-parameters and parameter count, for the result's header."""
  cfg = network.config_dict(module)
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract_params(module)))
  return {"model": {k: v for k, v in cfg.items() if not callable(v)}, "params": params}


def environment() -> Dict[str, Any]:
  """Devices, versions and allocator: what a figure needs beside it to be compared with another."""
  devices = jax.devices()
  preload = os.environ.get("LD_PRELOAD", "")
  return {"device": devices[0].device_kind, "platform": devices[0].platform,
          "num_devices": len(devices), "host_cpus": os.cpu_count(),
          "jax": jax.__version__, "python": platform.python_version(),
          "allocator": "jemalloc" if "jemalloc" in preload else
                       ("tcmalloc" if "tcmalloc" in preload else "system"),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def timing_summary(seconds: Sequence[float]) -> Dict[str, float]:
  """Median, min, max and relative spread of step times (the median resists a busy machine)."""
  med = median(seconds)
  return {"step_time_median_s": med, "step_time_min_s": float(min(seconds)),
          "step_time_max_s": float(max(seconds)),
          "step_time_spread": float((max(seconds) - min(seconds)) / med) if med else 0.0,
          "samples": len(seconds)}
