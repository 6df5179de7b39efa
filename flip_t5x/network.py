"""FLIP's two-tower network (flax linen).

A ViT image tower that drops a random subset of patches while training (FLIP's masking), a
transformer text tower, and the learnable `logit_scale`. Every parameter is created with
`param_with_axes`, so the `params_axes` collection that t5x partitioners read exists, and the main
activations carry logical-axis sharding constraints (`batch`, `length`, `embed`, `mlp`, `heads`).

The official model's switches (models_flip.py, configs/default.py) are `FlipTwoTower` fields with
the released models' values as defaults: dropout, attention dropout and drop-path per tower (0),
image pooling ('mean') and text pooling ('first'), a learnable temperature, bias-free projections,
no [CLS] token on the text. Dropout and drop-path draw from the 'dropout' rng collection and run
only when `deterministic=False` (FlipModel.loss_fn with a dropout_rng).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint
Array = jax.Array
Initializer = Callable[..., Array]

# Initialisers from the FLIP / MAE recipe (see the facts sheet).
normal_002 = nn.initializers.normal(stddev=0.02)
xavier_uniform = nn.initializers.xavier_uniform()
# q, k and v are separate matrices: xavier-uniform with scale 0.5 on fan-avg of the joint matrix.
qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")

REMAT_POLICIES = ("none", "minimal", "full")
DENSE_OUTPUT = "dense_output"  # what remat_policy='minimal' keeps (a jax.ad_checkpoint name)
MASKING_METHODS = ("gather", "onehot")
IMAGE_POOLINGS = ("mean", "cls")  # official clr.img_avg_token True / False
TEXT_POOLINGS = ("first", "mean")  # official clr.txt_avg_token False / True
# `jax.nn.dot_product_attention`'s `implementation`: None and 'xla' are XLA's attention on every
# backend; 'cudnn' is cuDNN's fused (flash) attention, on NVIDIA GPUs only.
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")


def _dtype(name: Any) -> jnp.dtype:
  return jnp.dtype(name)


# --- Backward-pass layout. The functions below change no value, only the HLO of the
# gradient: measured on XLA:CPU with flip_t5x.benchmark (docs/DESIGN.md, "Backward-pass layout").


def _as_matrices(x: Array, kernel: Array, in_axes: int) -> Tuple[Array, Array]:
  """x as [tokens, in] and the kernel as [in, out]: the plain matmul every dense layer is."""
  tokens = int(np.prod(x.shape[:x.ndim - in_axes]))
  fan_in = int(np.prod(kernel.shape[:in_axes]))
  return x.reshape(tokens, fan_in), kernel.reshape(fan_in, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_dot(x: Array, kernel: Array, in_axes: int) -> Array:
  """x's trailing `in_axes` axes contracted with the kernel's leading ones.

  Computed, with its VJP, as 2-D matmuls over all tokens at once. The kernel gradient then
  contracts the tokens axis of two matrices, which CPU matmul kernels read in place (a transpose
  flag). Contracting [batch, length] of 3-D operands instead makes XLA:CPU copy one operand
  transposed first: a strided copy per dense layer, ~5% of a CPU step.
  """
  x2, k2 = _as_matrices(x, kernel, in_axes)
  return (x2 @ k2).reshape(x.shape[:x.ndim - in_axes] + kernel.shape[in_axes:])


def _dense_dot_fwd(x, kernel, in_axes):
  return dense_dot(x, kernel, in_axes), (x, kernel)


def _dense_dot_bwd(in_axes, res, g):
  x, kernel = res
  x2, k2 = _as_matrices(x, kernel, in_axes)
  g2 = g.reshape(x2.shape[0], k2.shape[1])
  dx = jax.lax.dot_general(g2, k2, (((1,), (1,)), ((), ())))
  dk = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))
  return dx.reshape(x.shape), dk.reshape(kernel.shape)


dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


@jax.custom_vjp
def materialize_grad(x: Array) -> Array:
  """Identity whose cotangent is computed once, into its own buffer.

  The residual stream's cotangent is a sum of every later block's contribution. XLA:CPU fuses
  that elementwise sum into each consumer instead of storing it, so block l re-adds the terms of
  all blocks after it: quadratic in depth (83-operand fusions at depth 4, ~1/4 of a masked CPU
  step). `optimization_barrier` does not stop it (XLA:CPU drops barriers before fusion); a
  conditional is a fusion boundary, so the cotangent passes through one whose branches both
  return it unchanged (they differ in form only, so XLA cannot merge them away).
  """
  return x


def _materialize_grad_fwd(x):
  return x, None


def _materialize_grad_bwd(_, g):
  keep = jnp.isfinite(g[(0,) * g.ndim])  # one element: no resharding of a batch-sharded g
  same = lambda t: t
  same_nan_passthrough = lambda t: jnp.where(jnp.isnan(t), jnp.nan, t)
  return (jax.lax.cond(keep, same, same_nan_passthrough, g),)


materialize_grad.defvjp(_materialize_grad_fwd, _materialize_grad_bwd)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715  # tanh(sqrt(2/pi) (x + 0.044715 x^3)), as jax.nn.gelu


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
  """tanh-approximate GELU (`jax.nn.gelu(x, approximate=True)`) that keeps only x for its VJP.

  Autodiff of the formula keeps the tanh as well: one more [tokens, mlp_dim] activation per
  block held from forward to backward (the depth-4 B/16 benchmark step peaks at 3.16 -> 2.84
  GiB), written and read once more. The VJP recomputes the tanh from x, in float32.
  """
  return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
  return gelu_tanh(x), x


def _gelu_tanh_bwd(x, g):
  x32 = x.astype(jnp.float32)
  x2 = x32 * x32
  t = jnp.tanh(_SQRT_2_OVER_PI * x32 * (1.0 + _GELU_CUBIC * x2))
  dt = _SQRT_2_OVER_PI * (1.0 + 3 * _GELU_CUBIC * x2)  # d/dx of tanh's argument
  return ((g.astype(jnp.float32) * (0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * dt)
           ).astype(g.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
  """(x - mean) / std * scale + bias over the last axis, in float32.

  The VJP is the closed form, dx = (g' - mean(g') - x^ mean(g' x^)) / std with g' = g * scale,
  from x and the per-token statistics: autodiff of the formula keeps x - mean as well and
  spreads the backward over more passes (XLA:CPU, benchmark step: 10 -> 6 fusions per LayerNorm).
  """
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + epsilon)
  return (x32 - mean) * rstd * scale + bias, (x, mean, rstd, scale)


def _layer_norm_bwd(epsilon, res, g):
  del epsilon
  x, mean, rstd, scale = res
  g32 = g.astype(jnp.float32)
  x_hat = (x.astype(jnp.float32) - mean) * rstd
  gs = g32 * scale
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
               - x_hat * jnp.mean(gs * x_hat, axis=-1, keepdims=True))
  tokens = tuple(range(g.ndim - 1))
  return dx.astype(x.dtype), jnp.sum(g32 * x_hat, axis=tokens), jnp.sum(g32, axis=tokens)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def attention_core(q: Array, k: Array, v: Array) -> Array:
  """softmax(q k^T / sqrt(d)) v over [batch, length, heads, head_dim]; softmax in float32.

  The same maths as `jax.nn.dot_product_attention`'s XLA path, computed heads-major: q, k and v
  are transposed once to [batch, heads, length, head_dim], so every per-head matmul (forward and
  VJP) reads operands whose batch axes lead and whose matrices are contiguous. XLA:CPU otherwise
  gathers the strided per-head slices inside each batched matmul (~40 vs ~90 GFLOP/s per core)
  and copies the [length, length] probabilities transposed for dk and dv.
  """
  return _attention_fwd(q, k, v)[0]


def _heads_major(x: Array) -> Array:
  """[batch, length, heads, head_dim] <-> [batch, heads, length, head_dim]."""
  return jnp.swapaxes(x, 1, 2)


def _attention_fwd(q, k, v):
  qs = _heads_major(q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype))
  kh, vh = _heads_major(k), _heads_major(v)
  logits = jnp.einsum("bntd,bnsd->bnts", qs, kh)
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  return _heads_major(jnp.einsum("bnts,bnsd->bntd", p, vh)), (qs, kh, vh, p)


def _attention_bwd(res, do):
  qs, kh, vh, p = res
  doh = _heads_major(do)
  dp = jnp.einsum("bntd,bnsd->bnts", doh, vh).astype(jnp.float32)
  p32 = p.astype(jnp.float32)
  ds = (p32 * (dp - jnp.sum(dp * p32, axis=-1, keepdims=True))).astype(qs.dtype)
  dq = jnp.einsum("bnts,bnsd->bntd", ds, kh) * jnp.asarray(qs.shape[-1] ** -0.5, qs.dtype)
  dk = jnp.einsum("bnts,bntd->bnsd", ds, qs)
  dv = jnp.einsum("bnts,bntd->bnsd", p, doh)
  return _heads_major(dq), _heads_major(dk), _heads_major(dv)


attention_core.defvjp(_attention_fwd, _attention_bwd)


def even_length_attention(q: Array, k: Array, v: Array, implementation: Optional[str]) -> Array:
  """`jax.nn.dot_product_attention` with an odd length padded by one token nothing attends to.

  jax 0.10's cuDNN attention refuses odd lengths when differentiated ("Unsupported sequence
  length"), and FLIP's image lengths are odd at mask 0 and 0.5 (the class token plus 196 or 98
  patches). The padded key is masked out through the sequence lengths and the padded query
  dropped, so the values are those of the unpadded attention.
  """
  length = q.shape[1]
  if length % 2 == 0:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  pad = ((0, 0), (0, 1), (0, 0), (0, 0))
  q, k, v = (jnp.pad(t, pad) for t in (q, k, v))
  lengths = jnp.full((q.shape[0],), length, jnp.int32)
  out = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths,
                                     key_value_seq_lengths=lengths, implementation=implementation)
  return out[:, :length]


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


def check_rate(name: str, rate: float) -> None:
  """Dropout-style rates live in [0, 1): a clear error instead of NaNs or a silent no-op."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {rate}")


class DenseGeneral(nn.Module):
  """A dense layer over (possibly several) trailing/leading axes with named parameter axes."""

  features: Tuple[int, ...]
  kernel_axes: Tuple[str, ...]
  in_axes: int = 1  # how many trailing input axes are contracted
  use_bias: bool = True
  kernel_init: Initializer = xavier_uniform
  dtype: Any = jnp.float32

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
    y = dense_dot(x, kernel, self.in_axes)
    if self.use_bias:
      bias = param_with_axes("bias", nn.initializers.zeros, tuple(self.features), jnp.float32,
                             axes=self.kernel_axes[-len(self.features):])
      y = y + bias.astype(self.dtype)
    return checkpoint_name(y, DENSE_OUTPUT)


class LayerNorm(nn.Module):
  """LayerNorm with named `embed` parameters, computed in float32 for stability."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = param_with_axes("scale", nn.initializers.ones, (features,), jnp.float32, axes=("embed",))
    bias = param_with_axes("bias", nn.initializers.zeros, (features,), jnp.float32, axes=("embed",))
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Bidirectional multi-head self-attention without any mask (FLIP uses none in either tower)."""

  num_heads: int
  dtype: Any = jnp.float32
  cpu_backward: bool = False  # `attention_core` instead of jax.nn.dot_product_attention
  attention_implementation: Optional[str] = None  # jax.nn.dot_product_attention's
  dropout_rate: float = 0.0  # on the attention probabilities (`dropout_attention`)
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    proj = functools.partial(DenseGeneral, features=(self.num_heads, head_dim),
                             kernel_axes=("embed", "heads", "kv"), kernel_init=qkv_init,
                             dtype=self.dtype)
    q = proj(name="query")(x)
    k = proj(name="key")(x)
    v = proj(name="value")(x)
    q = with_sharding_constraint(q, ("batch", "length", "heads", "kv"))
    if self.dropout_rate > 0.0 and not self.deterministic:
      out = dropout_attention(q, k, v, self.dropout_rate, self.make_rng("dropout"))
    elif self.cpu_backward:
      out = attention_core(q, k, v)
    elif self.attention_implementation == "cudnn":
      out = even_length_attention(q, k, v, implementation="cudnn")
    else:
      out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_implementation)
    out = with_sharding_constraint(out, ("batch", "length", "heads", "kv"))
    return DenseGeneral(features=(width,), kernel_axes=("heads", "kv", "embed"), in_axes=2,
                        dtype=self.dtype, name="out")(out)


class MlpBlock(nn.Module):
  """Transformer MLP: dense (4x width), GELU, dropout, dense, dropout (FLIP's MlpBlock)."""

  mlp_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    h = DenseGeneral(features=(self.mlp_dim,), kernel_axes=("embed", "mlp"), dtype=self.dtype,
                     name="wi")(x)
    # tanh-approximate GELU, as FLIP's release (flax's default): imported weights match exactly.
    h = gelu_tanh(h)
    h = nn.Dropout(self.dropout_rate)(h, self.deterministic)
    h = with_sharding_constraint(h, ("batch", "length", "mlp"))
    y = DenseGeneral(features=(width,), kernel_axes=("mlp", "embed"), dtype=self.dtype,
                     name="wo")(h)
    return nn.Dropout(self.dropout_rate)(y, self.deterministic)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm transformer block; dropout and drop-path as FLIP's Encoder1DBlock (off there).

  Drop-path drops a whole residual branch per example (scaled by 1 / (1 - rate) where kept).
  """

  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  cpu_backward: bool = False
  attention_implementation: Optional[str] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    drop_path = functools.partial(nn.Dropout, self.droppath_rate, broadcast_dims=(1, 2))
    y = LayerNorm(dtype=self.dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(self.num_heads, dtype=self.dtype, cpu_backward=self.cpu_backward,
                           attention_implementation=self.attention_implementation,
                           dropout_rate=self.attention_dropout_rate,
                           deterministic=self.deterministic, name="attention")(y)
    y = nn.Dropout(self.dropout_rate)(y, self.deterministic)
    x = x + drop_path(name="droppath_attention")(y, self.deterministic)
    y = LayerNorm(dtype=self.dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
                 deterministic=self.deterministic, name="mlp")(y)
    x = x + drop_path(name="droppath_mlp")(y, self.deterministic)
    return with_sharding_constraint(x, ("batch", "length", "embed"))


def _remat_block(policy: str):
  """EncoderBlock wrapped for the chosen activation-checkpointing policy.

  'minimal' keeps the dense layers' outputs (`DENSE_OUTPUT`) and recomputes the rest, attention
  scores included; 'full' keeps only each block's input. (jax's `checkpoint_dots` would keep the
  attention's batched matmuls and none of the dense layers: `dense_dot` is a custom_vjp, which
  dot policies do not see.) The blocks are unrolled, not scanned, so the recomputation is guarded
  against CSE (`prevent_cse`, jax's default): without it XLA merges the recomputation back into
  the forward pass and the policy saves nothing. XLA:CPU drops those guards before CSE, so
  remat changes no memory there; it does on GPU and TPU.
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
  cpu_backward: bool = False
  attention_implementation: Optional[str] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    block = _remat_block(self.remat_policy)
    barrier = materialize_grad if self.cpu_backward else (lambda t: t)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, dtype=self.dtype, cpu_backward=self.cpu_backward,
                attention_implementation=self.attention_implementation,
                dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=self.droppath_rate * i / max(self.depth - 1, 1),
                deterministic=self.deterministic, name=f"block_{i}")(barrier(x))
    return LayerNorm(dtype=self.dtype, name="encoder_norm")(barrier(x))


def sincos_pos_embed_2d(grid_h: int, grid_w: int, width: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding (MAE/FLIP), shape [grid_h * grid_w, width]."""
  if width % 4:
    raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}")
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
  gy, gx = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                       indexing="ij")

  def emb_1d(pos):
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  # MAE's order: the first half encodes the column (w), the second half the row (h).
  return np.concatenate([emb_1d(gx), emb_1d(gy)], axis=1).astype(np.float32)


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
  """How many patches survive masking: int(L * (1 - mask_ratio)), as FLIP computes it."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  return max(1, int(num_patches * (1.0 - mask_ratio)))


def random_masking(x: Array, rng: Array, mask_ratio: float, method: str = "gather"
                   ) -> Tuple[Array, Array]:
  """Keeps a random subset of tokens per example: returns (kept tokens, kept indices).

  `x` is [batch, length, width]. For every example, uniform noise of length L is drawn and the
  tokens with the `keep` smallest noise values are kept (FLIP/MAE's argsort recipe; `top_k` on the
  negated noise gives the same subset without sorting all of L). `method` chooses how the subset is
  read: "gather" (take_along_axis) or "onehot" (an einsum against a one-hot matrix, MXU-friendly).
  """
  batch, length, _ = x.shape
  keep = num_kept_patches(length, mask_ratio)
  noise = jax.random.uniform(rng, (batch, length))
  _, ids_keep = jax.lax.top_k(-noise, keep)
  if method == "gather":
    kept = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  elif method == "onehot":
    onehot = jax.nn.one_hot(ids_keep, length, dtype=x.dtype)
    kept = jnp.einsum("bkl,bld->bkd", onehot, x)
  else:
    raise ValueError(f"masking method must be one of {MASKING_METHODS}, got {method!r}")
  return kept, ids_keep


class PatchEmbed(nn.Module):
  """Patchify, drop a random subset of patches (training), embed, add fixed sin-cos positions.

  Returns (tokens [batch, kept, width], kept patch indices or None when nothing is masked).
  """

  patch_size: int = 16
  width: int = 768
  dtype: Any = jnp.float32
  masking_method: str = "gather"

  @nn.compact
  def __call__(self, images: Array, mask_ratio: float = 0.0, rng: Optional[Array] = None
               ) -> Tuple[Array, Optional[Array]]:
    b, h, w, c = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not a multiple of patch {p}")
    gh, gw = h // p, w // p
    # Patchify as a reshape + dense (same maths as a stride-p conv, cheaper to shard).
    x = images.astype(self.dtype).reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, gh * gw, p * p * c)
    pos = jnp.broadcast_to(jnp.asarray(sincos_pos_embed_2d(gh, gw, self.width), self.dtype),
                           (b, gh * gw, self.width))
    ids_keep = None
    if mask_ratio > 0.0:
      if rng is None:
        raise ValueError("mask_ratio > 0 needs an rng (t5x passes it as dropout_rng)")
      # Masking commutes with the per-patch embedding, so drop raw patches first and embed only
      # the kept ones; each kept patch still gets the position embedding of where it came from.
      x, ids_keep = random_masking(x, rng, mask_ratio, self.masking_method)
      pos = jnp.take_along_axis(pos, ids_keep[:, :, None], axis=1)
    x = DenseGeneral(features=(self.width,), kernel_axes=("patch", "embed"), dtype=self.dtype,
                     name="embedding")(x)
    return x + pos, ids_keep


class ImageTower(nn.Module):
  """ViT image encoder with FLIP masking; returns L2-normalised embeddings [batch, embed_dim]."""

  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  embed_dim: int = 512
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  masking_method: str = "gather"
  cpu_backward: bool = False
  attention_implementation: Optional[str] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  pooling: str = "mean"  # IMAGE_POOLINGS: all tokens' mean (the CLS token's included) or the CLS token
  projection_bias: bool = False

  @nn.compact
  def __call__(self, images: Array, mask_ratio: float = 0.0, rng: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    dtype = _dtype(self.dtype)
    b = images.shape[0]
    x, _ = PatchEmbed(self.patch_size, self.width, dtype=dtype, masking_method=self.masking_method,
                      name="patch_embed")(images, mask_ratio, rng)
    cls = param_with_axes("cls", normal_002, (self.width,), jnp.float32, axes=("embed",))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, self.width)), x], axis=1)
    x = with_sharding_constraint(x, ("batch", "length", "embed"))
    x = Encoder(self.depth, self.num_heads, self.width * self.mlp_ratio, dtype=dtype,
                remat_policy=self.remat_policy, cpu_backward=self.cpu_backward,
                attention_implementation=self.attention_implementation,
                dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=self.droppath_rate, deterministic=deterministic, name="encoder")(x)
    if self.pooling == "mean":
      pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    else:
      pooled = x[:, 0].astype(jnp.float32)
    z = DenseGeneral(features=(self.embed_dim,), kernel_axes=("embed", "proj"),
                     use_bias=self.projection_bias, dtype=jnp.float32, name="projection")(pooled)
    return l2_normalize(z)


class TextTower(nn.Module):
  """Transformer text encoder; position-0 pooling, returns L2-normalised [batch, embed_dim].

  With `cls_token_id` set, that id goes first and the last token is dropped, as FLIP's pipeline
  with aug.txt.cls_token (the caption truncated to max_len - 1 behind [CLS]).
  """

  vocab_size: int = 30523
  max_length: int = 32
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_ratio: int = 4
  embed_dim: int = 512
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  cpu_backward: bool = False
  attention_implementation: Optional[str] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  pooling: str = "first"  # TEXT_POOLINGS: position 0, or the mean of every position (padding too)
  projection_bias: bool = False
  cls_token_id: Optional[int] = None

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool = True) -> Array:
    dtype = _dtype(self.dtype)
    batch, length = tokens.shape
    if length > self.max_length:
      raise ValueError(f"text length {length} exceeds the text tower's max_length {self.max_length}")
    if self.cls_token_id is not None:
      cls = jnp.full((batch, 1), self.cls_token_id, tokens.dtype)
      tokens = jnp.concatenate([cls, tokens[:, :length - 1]], axis=1)
    embedding = param_with_axes("token_embedding", normal_002, (self.vocab_size, self.width),
                                jnp.float32, axes=("vocab", "embed"))
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    pos = param_with_axes("pos_embedding", normal_002, (self.max_length, self.width), jnp.float32,
                          axes=("length", "embed"))
    x = x + pos[None, :length].astype(dtype)
    x = with_sharding_constraint(x, ("batch", "length", "embed"))
    x = Encoder(self.depth, self.num_heads, self.width * self.mlp_ratio, dtype=dtype,
                remat_policy=self.remat_policy, cpu_backward=self.cpu_backward,
                attention_implementation=self.attention_implementation,
                dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                droppath_rate=self.droppath_rate, deterministic=deterministic, name="encoder")(x)
    if self.pooling == "first":
      pooled = x[:, 0].astype(jnp.float32)
    else:
      pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    z = DenseGeneral(features=(self.embed_dim,), kernel_axes=("embed", "proj"),
                     use_bias=self.projection_bias, dtype=jnp.float32, name="projection")(pooled)
    return l2_normalize(z)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps**2))


LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class FlipTwoTower(nn.Module):
  """Image and text towers plus `logit_scale`; either tower can run alone.

  `__call__(images, texts, mask_ratio, rng, deterministic)` returns (z_img, z_txt, scale) with
  the scale already clipped to [0, ln 100] and exponentiated (1 / fixed_temperature when the
  temperature is not learned). `encode_image` / `encode_text` run one tower. Dropout and
  drop-path run only with deterministic=False, drawing from the 'dropout' rng collection.
  """

  image_size: int = 224
  patch_size: int = 16
  image_width: int = 768
  image_depth: int = 12
  image_heads: int = 12
  text_width: int = 512
  text_depth: int = 12
  text_heads: int = 8
  vocab_size: int = 30523
  text_length: int = 32
  embed_dim: int = 512
  mlp_ratio: int = 4
  dtype: str = "float32"
  remat_policy: str = "none"
  masking_method: str = "gather"
  # Backward-pass formulations for XLA:CPU (`materialize_grad` on the residual stream between
  # blocks, `attention_core`); None: on where jax.default_backend() is the CPU.
  cpu_backward: Optional[bool] = None
  # `jax.nn.dot_product_attention(implementation=...)` where cpu_backward is off: None / 'xla'
  # (XLA's attention) or 'cudnn' (cuDNN flash attention; NVIDIA GPUs, bfloat16/float16).
  # Attention dropout, while it runs, computes the attention itself (`dropout_attention`).
  attention_implementation: Optional[str] = None
  # The official switches (configs/default.py); defaults are the released models' values.
  image_dropout_rate: float = 0.0  # model_img.transformer.dropout_rate
  image_attention_dropout_rate: float = 0.0  # model_img.transformer.attention_dropout_rate
  image_droppath_rate: float = 0.0  # model_img.transformer.droppath_rate (last block's)
  text_dropout_rate: float = 0.0  # model_txt.transformer.*
  text_attention_dropout_rate: float = 0.0
  text_droppath_rate: float = 0.0
  image_pooling: str = "mean"  # IMAGE_POOLINGS; clr.img_avg_token
  text_pooling: str = "first"  # TEXT_POOLINGS; clr.txt_avg_token
  projection_bias: bool = False  # clr.proj_out_bias (both projections)
  learn_temperature: bool = True  # clr.tau_learnable: the `logit_scale` parameter
  fixed_temperature: float = 0.01  # clr.tau: the temperature when it is not learned
  # aug.txt.cls_token: this id (BERT's [CLS] is 101) first in every text; None: none.
  text_cls_token_id: Optional[int] = None

  def _check_switches(self) -> None:
    for name in ("image_dropout_rate", "image_attention_dropout_rate", "image_droppath_rate",
                 "text_dropout_rate", "text_attention_dropout_rate", "text_droppath_rate"):
      check_rate(name, getattr(self, name))
    if self.image_pooling not in IMAGE_POOLINGS:
      raise ValueError(f"image_pooling must be one of {IMAGE_POOLINGS}, got {self.image_pooling!r}")
    if self.text_pooling not in TEXT_POOLINGS:
      raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
    if not self.learn_temperature and not self.fixed_temperature > 0.0:
      raise ValueError(f"fixed_temperature must be > 0, got {self.fixed_temperature}")
    if self.text_cls_token_id is not None and not 0 <= self.text_cls_token_id < self.vocab_size:
      raise ValueError(f"text_cls_token_id {self.text_cls_token_id} is not an id of the "
                       f"vocabulary (vocab_size {self.vocab_size})")

  def setup(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                       f"got {self.attention_implementation!r}")
    self._check_switches()
    cpu_backward = self.cpu_backward
    if cpu_backward is None:
      cpu_backward = jax.default_backend() == "cpu"
    if cpu_backward and self.attention_implementation == "cudnn":
      raise ValueError(
          "attention_implementation='cudnn' runs on NVIDIA GPUs only, but cpu_backward is on "
          f"(backend {jax.default_backend()!r}); leave attention_implementation unset on the CPU")
    self.image_tower = ImageTower(
        image_size=self.image_size, patch_size=self.patch_size, width=self.image_width,
        depth=self.image_depth, num_heads=self.image_heads, mlp_ratio=self.mlp_ratio,
        embed_dim=self.embed_dim, dtype=self.dtype, remat_policy=self.remat_policy,
        masking_method=self.masking_method, cpu_backward=cpu_backward,
        attention_implementation=self.attention_implementation,
        dropout_rate=self.image_dropout_rate,
        attention_dropout_rate=self.image_attention_dropout_rate,
        droppath_rate=self.image_droppath_rate, pooling=self.image_pooling,
        projection_bias=self.projection_bias)
    self.text_tower = TextTower(
        vocab_size=self.vocab_size, max_length=self.text_length, width=self.text_width,
        depth=self.text_depth, num_heads=self.text_heads, mlp_ratio=self.mlp_ratio,
        embed_dim=self.embed_dim, dtype=self.dtype, remat_policy=self.remat_policy,
        cpu_backward=cpu_backward, attention_implementation=self.attention_implementation,
        dropout_rate=self.text_dropout_rate, attention_dropout_rate=self.text_attention_dropout_rate,
        droppath_rate=self.text_droppath_rate, pooling=self.text_pooling,
        projection_bias=self.projection_bias, cls_token_id=self.text_cls_token_id)
    if self.learn_temperature:
      self.logit_scale = param_with_axes(
          "logit_scale", nn.initializers.constant(LOGIT_SCALE_INIT), (), jnp.float32, axes=())

  def encode_image(self, images: Array, mask_ratio: float = 0.0,
                   rng: Optional[Array] = None, deterministic: bool = True) -> Array:
    return self.image_tower(images, mask_ratio=mask_ratio, rng=rng, deterministic=deterministic)

  def encode_text(self, texts: Array, deterministic: bool = True) -> Array:
    return self.text_tower(texts, deterministic=deterministic)

  def scale(self) -> Array:
    """The temperature's inverse used in the logits: exp(clip(logit_scale, 0, ln 100)).

    With learn_temperature off, 1 / fixed_temperature and no parameter (as the official code).
    """
    if not self.learn_temperature:
      return jnp.asarray(1.0 / self.fixed_temperature, jnp.float32)
    return jnp.exp(jnp.clip(self.logit_scale, 0.0, LOGIT_SCALE_MAX))

  def __call__(self, images: Array, texts: Array, mask_ratio: float = 0.0,
               rng: Optional[Array] = None, deterministic: bool = True
               ) -> Tuple[Array, Array, Array]:
    return (self.encode_image(images, mask_ratio, rng, deterministic),
            self.encode_text(texts, deterministic), self.scale())


def config_dict(module: FlipTwoTower) -> dict:
  """The module's hyper-parameters as a plain dict (for logs and model_info)."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in ("parent", "name")}
