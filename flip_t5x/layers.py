"""Transformer layers (flax linen): dense, LayerNorm, attention, MLP, encoder block and encoder.

Every parameter is created with `param_with_axes`, so the `params_axes` collection that t5x
partitioners read exists, and the main activations carry logical-axis sharding constraints
(`batch`, `length`, `embed`, `mlp`, `heads`, `kv`). The maths goes through the `Backend` the
network chose (one frozen value, passed down): its dense, GELU, LayerNorm and attention
formulations and the residual stream between blocks. Dropout and drop-path draw from the
'dropout' rng collection and run only when `deterministic=False`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Tuple

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from flip_t5x import backends

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint
Array = jax.Array
Initializer = Callable[..., Array]

# The official models_flip.py's initialisers (MAE's): normal(0.02) embeddings, xavier kernels.
normal_002 = nn.initializers.normal(stddev=0.02)
xavier_uniform = nn.initializers.xavier_uniform()
# q, k and v are separate matrices: xavier-uniform with scale 0.5 on fan-avg of the joint matrix.
qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")

REMAT_POLICIES = ("none", "minimal", "full")
DENSE_OUTPUT = "dense_output"  # what remat_policy='minimal' keeps (a jax.ad_checkpoint name)


def check_rate(name: str, rate: float) -> None:
  """Dropout-style rates live in [0, 1): a clear error instead of NaNs or a silent no-op."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {rate}")


def dropout_attention(q: Array, k: Array, v: Array, rate: float, rng: Array) -> Array:
  """Attention whose probabilities are dropped per key, the same keys for every query.

  FLIP's t5x attention dropout (its query axis broadcast, kept weights scaled by 1 / (1 - rate));
  the official code raises NotImplementedError before using it. Plain autodiff: only ablations
  train with it.
  """
  qs = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("btnd,bsnd->bnts", qs, k)
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  b, n, _, s = p.shape
  keep = jax.random.bernoulli(rng, 1.0 - rate, (b, n, 1, s))
  p = jnp.where(keep, p / jnp.asarray(1.0 - rate, p.dtype), jnp.zeros_like(p))
  return jnp.einsum("bnts,bsnd->btnd", p, v)


class DenseGeneral(nn.Module):
  """A dense layer over (possibly several) trailing/leading axes with named parameter axes."""

  features: Tuple[int, ...]
  kernel_axes: Tuple[str, ...]
  in_axes: int = 1  # how many trailing input axes are contracted
  use_bias: bool = True
  kernel_init: Initializer = xavier_uniform
  dtype: Any = jnp.float32
  backend: backends.Backend = backends.Backend()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.in_axes:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    fan_in = int(np.prod(in_shape))
    fan_out = int(np.prod(self.features))

    def init(key, shape, dtype):
      # Initialise as the equivalent 2-D matrix so fan-in/fan-out are those of the dense map.
      flat = self.kernel_init(key, (fan_in, fan_out), dtype)
      return flat.reshape(shape)

    kernel = param_with_axes("kernel", init, kernel_shape, jnp.float32, axes=self.kernel_axes)
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    y = self.backend.dense(x, kernel, self.in_axes)
    if self.use_bias:
      bias = param_with_axes("bias", nn.initializers.zeros, tuple(self.features), jnp.float32,
                             axes=self.kernel_axes[-len(self.features):])
      y = y + bias.astype(self.dtype)
    return checkpoint_name(y, DENSE_OUTPUT)


class LayerNorm(nn.Module):
  """LayerNorm with named `embed` parameters, computed in float32 for stability."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  backend: backends.Backend = backends.Backend()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = param_with_axes("scale", nn.initializers.ones, (features,), jnp.float32,
                            axes=("embed",))
    bias = param_with_axes("bias", nn.initializers.zeros, (features,), jnp.float32, axes=("embed",))
    return self.backend.layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Bidirectional multi-head self-attention without any mask (FLIP uses none in either tower)."""

  num_heads: int
  dtype: Any = jnp.float32
  backend: backends.Backend = backends.Backend()
  dropout_rate: float = 0.0  # on the attention probabilities (`dropout_attention`)
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    proj = functools.partial(DenseGeneral, features=(self.num_heads, head_dim),
                             kernel_axes=("embed", "heads", "kv"), kernel_init=qkv_init,
                             dtype=self.dtype, backend=self.backend)
    q = proj(name="query")(x)
    k = proj(name="key")(x)
    v = proj(name="value")(x)
    q = with_sharding_constraint(q, ("batch", "length", "heads", "kv"))
    if self.dropout_rate > 0.0 and not self.deterministic:
      out = dropout_attention(q, k, v, self.dropout_rate, self.make_rng("dropout"))
    else:
      out = self.backend.attention(q, k, v)
    out = with_sharding_constraint(out, ("batch", "length", "heads", "kv"))
    return DenseGeneral(features=(width,), kernel_axes=("heads", "kv", "embed"), in_axes=2,
                        dtype=self.dtype, backend=self.backend, name="out")(out)


class MlpBlock(nn.Module):
  """Transformer MLP: dense (4x width), GELU, dropout, dense, dropout (FLIP's MlpBlock)."""

  mlp_dim: int
  dtype: Any = jnp.float32
  backend: backends.Backend = backends.Backend()
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    dense = functools.partial(DenseGeneral, dtype=self.dtype, backend=self.backend)
    h = dense(features=(self.mlp_dim,), kernel_axes=("embed", "mlp"), name="wi")(x)
    # tanh-approximate GELU, as FLIP's release (flax's default): imported weights match exactly.
    h = self.backend.gelu(h)
    h = nn.Dropout(self.dropout_rate)(h, self.deterministic)
    h = with_sharding_constraint(h, ("batch", "length", "mlp"))
    y = dense(features=(width,), kernel_axes=("mlp", "embed"), name="wo")(h)
    return nn.Dropout(self.dropout_rate)(y, self.deterministic)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block; dropout and drop-path as FLIP's Encoder1DBlock (off there).

  Drop-path drops a whole residual branch per example (scaled by 1 / (1 - rate) where kept).
  """

  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  backend: backends.Backend = backends.Backend()
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    drop_path = functools.partial(nn.Dropout, self.droppath_rate, broadcast_dims=(1, 2))
    norm = functools.partial(LayerNorm, dtype=self.dtype, backend=self.backend)
    y = norm(name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(self.num_heads, dtype=self.dtype, backend=self.backend,
                           dropout_rate=self.attention_dropout_rate,
                           deterministic=self.deterministic, name="attention")(y)
    y = nn.Dropout(self.dropout_rate)(y, self.deterministic)
    x = x + drop_path(name="droppath_attention")(y, self.deterministic)
    y = norm(name="pre_mlp_layer_norm")(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, backend=self.backend,
                 dropout_rate=self.dropout_rate, deterministic=self.deterministic, name="mlp")(y)
    x = x + drop_path(name="droppath_mlp")(y, self.deterministic)
    return with_sharding_constraint(x, ("batch", "length", "embed"))


def _remat_block(policy: str):
  """EncoderBlock wrapped for the chosen activation-checkpointing policy.

  'minimal' keeps the dense layers' outputs (`DENSE_OUTPUT`) and recomputes the rest, attention
  scores included; 'full' keeps only each block's input. (jax's `checkpoint_dots` would keep the
  attention's batched matmuls, and with `cpu_backward` none of the dense layers: `dense_dot` is a
  custom_vjp, which dot policies do not see; names mean the same on every backend.) The blocks
  are unrolled, not scanned, so the recomputation is guarded against CSE (`prevent_cse`, jax's
  default): without it XLA merges the recomputation back into the forward pass and the policy
  saves nothing. XLA:CPU drops those guards before CSE, so remat changes no memory there; it does
  on GPU and TPU.
  """
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {policy!r}")
  if policy == "none":
    return EncoderBlock
  jax_policy = (jax.checkpoint_policies.save_only_these_names(DENSE_OUTPUT) if policy == "minimal"
                else jax.checkpoint_policies.nothing_saveable)
  return nn_partitioning.remat(EncoderBlock, policy=jax_policy)


class Encoder(nn.Module):
  """A stack of pre-LN blocks followed by a final LayerNorm.

  Drop-path grows linearly with depth, 0 in the first block to `droppath_rate` in the last
  (FLIP's Encoder).
  """

  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  backend: backends.Backend = backends.Backend()
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    block = _remat_block(self.remat_policy)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, dtype=self.dtype, backend=self.backend,
                dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=self.droppath_rate * i / max(self.depth - 1, 1),
                deterministic=self.deterministic, name=f"block_{i}")(self.backend.residual(x))
    return LayerNorm(dtype=self.dtype, backend=self.backend, name="encoder_norm")(
        self.backend.residual(x))
