"""The one jitted encoder of a FlipModel's parameters, and the one padded batcher it runs on.

Both towers run unmasked and jitted at a fixed batch size: the last batch is zero-padded and the
padding rows dropped, so each tower compiles once whatever the number of inputs.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import numpy as np

from flip_t5x import models
from flip_t5x import xla_options as xla_options_lib
from flip_t5x.evaluation import EvalError

PyTree = Any


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """`x` with zero rows appended up to `rows`."""
  if x.shape[0] == rows:
    return x
  pad = np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


def map_padded(fn: Callable[[PyTree, Any], jax.Array], params: PyTree, x: np.ndarray,
               batch_size: int, width: int,
               sharding: Optional[jax.sharding.Sharding] = None) -> np.ndarray:
  """float32 [N, width]: fn(params, batch) over fixed-size batches of `x`, the last one padded."""
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  out = []
  for start in range(0, x.shape[0], batch_size):
    chunk = x[start:start + batch_size]
    batch = pad_rows(chunk, batch_size)
    if sharding is not None:
      batch = jax.device_put(batch, sharding)
    out.append(np.asarray(jax.device_get(fn(params, batch)), np.float32)[:chunk.shape[0]])
  return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def data_sharding(mesh: Optional[jax.sharding.Mesh], data_axis: Any,
                  batch_size: int) -> Optional[jax.sharding.Sharding]:
  """Shards the batch dimension over `data_axis` of `mesh` (None: leave placement to jit)."""
  if mesh is None:
    return None
  axes = tuple(data_axis) if isinstance(data_axis, (tuple, list)) else (data_axis,)
  n = int(np.prod([mesh.shape[a] for a in axes]))
  if batch_size % n:
    raise EvalError(f"eval batch size {batch_size} is not divisible by the {n} shards of mesh "
                     f"axis {data_axis!r}")
  spec = jax.sharding.PartitionSpec(axes if len(axes) > 1 else axes[0])
  return jax.sharding.NamedSharding(mesh, spec)


class Encoder:
  """A FlipModel's image and text towers, jitted once, unmasked and deterministic.

  `image_fn(params, images)` / `text_fn(params, texts)` embed one batch (placed as the inputs
  are: shard them to shard the work); `encode_images` / `encode_texts` embed any number of rows.
  Embeddings are L2-normalised [N, embed_dim]. Both compile with `xla_options` (the partitioner's,
  where there is one: the options the train and eval steps compile with).
  """

  def __init__(self, model: models.FlipModel, xla_options: xla_options_lib.XlaOptions):
    options = xla_options_lib.compiler_options(None, xla_options)
    self.embed_dim = int(model.module.embed_dim)
    self.image_fn = jax.jit(lambda params, images: model.encode_images(params, images),
                            compiler_options=options)
    self.text_fn = jax.jit(lambda params, texts: model.encode_texts(params, texts),
                           compiler_options=options)

  def encode_images(self, params: PyTree, images: np.ndarray, batch_size: int,
                    sharding: Optional[jax.sharding.Sharding] = None) -> np.ndarray:
    """float32 [N, S, S, 3] preprocessed images -> [N, embed_dim]."""
    return map_padded(self.image_fn, params, images, batch_size, self.embed_dim, sharding)

  def encode_texts(self, params: PyTree, texts: np.ndarray, batch_size: int,
                   sharding: Optional[jax.sharding.Sharding] = None) -> np.ndarray:
    """int32 [N, L] token ids -> [N, embed_dim]."""
    return map_padded(self.text_fn, params, np.asarray(texts, np.int32), batch_size,
                      self.embed_dim, sharding)


def encoder_for(model: models.FlipModel,
                xla_options: Optional[xla_options_lib.XlaOptions] = None) -> Encoder:
  """The model's Encoder under `xla_options` (None: `XlaOptions()`), cached so that periodic evals
  and repeated predictors compile once."""
  return _cached_encoder(model, xla_options or xla_options_lib.XlaOptions())


@functools.lru_cache(maxsize=8)
def _cached_encoder(model: models.FlipModel, xla_options: xla_options_lib.XlaOptions) -> Encoder:
  return Encoder(model, xla_options)
