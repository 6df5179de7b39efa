"""Analytic FLOP counts of FLIP's towers (matmuls only, 2 FLOPs per multiply-add), and the
device's measured matmul peak they are compared with.

Model FLOPs, the convention for utilisation figures: a training step is 3x the forward pass
(forward + backward), whatever recomputation remat adds.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp

from flip_t5x import network
from flip_t5x import xla_options as xla_options_lib


def encoder_flops(tokens: int, width: int, depth: int, mlp_ratio: int) -> float:
  """Forward FLOPs of `depth` pre-LN blocks over `tokens` tokens of one example."""
  dense = 2 * tokens * width * width * 4 + 2 * tokens * width * (width * mlp_ratio) * 2
  attention = 2 * tokens * tokens * width * 2  # q.k and attention-weighted values
  return float(depth * (dense + attention))


def image_tower_flops(m: network.FlipTwoTower, mask_ratio: float) -> float:
  c = m.image
  num_patches = (c.image_size // c.patch_size) ** 2
  kept = network.num_kept_patches(num_patches, mask_ratio) if mask_ratio > 0 else num_patches
  patch_dim = c.patch_size * c.patch_size * 3
  return (2.0 * kept * patch_dim * c.width
          + encoder_flops(kept + 1, c.width, c.depth, c.mlp_ratio)
          + 2.0 * c.width * m.embed_dim)


def text_tower_flops(m: network.FlipTwoTower) -> float:
  c = m.text
  return (encoder_flops(c.max_length, c.width, c.depth, c.mlp_ratio)
          + 2.0 * c.width * m.embed_dim)


def flops_per_example(m: network.FlipTwoTower, mask_ratio: float,
                      batch_size: int = 0) -> Dict[str, float]:
  """Forward, train (3x forward) and eval FLOPs per example; the logits add 2*B*E per example."""
  logits = 2.0 * batch_size * m.embed_dim
  forward = image_tower_flops(m, mask_ratio) + text_tower_flops(m) + logits
  eval_forward = image_tower_flops(m, 0.0) + text_tower_flops(m) + logits
  return {
      "image_tower_forward": image_tower_flops(m, mask_ratio),
      "text_tower_forward": text_tower_flops(m),
      "train": 3.0 * forward,
      "eval": eval_forward,
  }


class MatmulPeak:
  """A large square matmul in the activation dtype: the device's achievable matmul FLOP/s.

  Compiled with `xla_options` (None: `XlaOptions()`): those the steps compile with give the peak
  of the matmul library they use.
  """

  def __init__(self, dtype: Any = jnp.float32, size: Optional[int] = None,
               xla_options: Optional[xla_options_lib.XlaOptions] = None):
    if not size:
      size = 2048 if jax.devices()[0].platform == "cpu" else 8192
    self.size = size
    self.reps = 10 if jax.devices()[0].platform == "cpu" else 50
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    self.a = jax.random.normal(k1, (size, size), jnp.float32).astype(dtype)
    self.b = jax.random.normal(k2, (size, size), jnp.float32).astype(dtype)
    options = xla_options_lib.compiler_options(None, xla_options or xla_options_lib.XlaOptions())
    self.fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=a.dtype),
                      compiler_options=options)
    jax.block_until_ready(self.fn(self.a, self.b))

  def measure(self) -> float:
    """FLOP/s of the fastest of `reps` matmuls, each timed alone.

    On the CPU, matmuls dispatched back to back run concurrently and share the cores, and the
    first one after idling is slow, so a group's time understates the peak (docs/performance.md).
    """
    fastest = math.inf
    for _ in range(self.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(self.fn(self.a, self.b))
      fastest = min(fastest, time.perf_counter() - t0)
    return 2.0 * self.size**3 / fastest
