"""Backend-specific formulations of the network's maths, and the one object that picks them.

Every function here computes what the plain formulation computes (tests check each against it);
they differ only in the program XLA compiles for the backward pass, or in what a backend's
attention kernel accepts. Why each exists, and what it was measured to save, is in
docs/performance.md ("Backward-pass layout").

`dense_dot`, `gelu_tanh`, `layer_norm`, `materialize_grad` (on the residual stream between
blocks) and `attention_core` run where `Backend.cpu_backward` is on: by default on the CPU, where
they were measured. `gelu_tanh` also runs on GPUs (`Backend.gelu_from_input`), where XLA:GPU
keeps the tanh of the plain formulation. Otherwise the layers run the plain formulations
(`lax.dot_general`, whose dots remat policies see; `jax.nn.gelu`; the LayerNorm formula) and
`jax.nn.dot_product_attention`, padded to an even length for cuDNN (`even_length_attention`).
`choose` builds the `Backend` once; the layers receive it as one value.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# `jax.nn.dot_product_attention`'s `implementation`: None and 'xla' are XLA's attention on every
# backend; 'cudnn' is cuDNN's fused (flash) attention, on NVIDIA GPUs only.
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")


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
  transposed first, a strided copy per dense layer.
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
  all blocks after it: quadratic in depth. `optimization_barrier` does not stop it (XLA:CPU
  drops barriers before fusion); a conditional is a fusion boundary, so the cotangent passes
  through one whose branches both return it unchanged (they differ in form only, so XLA cannot
  merge them away).
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
  block held from forward to backward, written and read once more. The VJP recomputes the tanh
  from x, in float32.
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
  spreads the backward over more XLA:CPU fusions.
  """
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_formula(x, scale, bias, epsilon):
  """The formula, with the per-token mean and 1/std that its closed-form VJP reads."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + epsilon)
  return (x32 - mean) * rstd * scale + bias, mean, rstd


def _layer_norm_fwd(x, scale, bias, epsilon):
  y, mean, rstd = _layer_norm_formula(x, scale, bias, epsilon)
  return y, (x, mean, rstd, scale)


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
  gathers the strided per-head slices inside each batched matmul and copies the [length, length]
  probabilities transposed for dk and dv.
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


@dataclasses.dataclass(frozen=True)
class Backend:
  """The formulations one backend runs: dense, GELU, LayerNorm, attention, the residual stream.

  `cpu_backward`: `dense_dot`, `gelu_tanh`, `layer_norm`, `attention_core` and `materialize_grad`
  (XLA:CPU's faster backward pass). Otherwise the plain formulations, and
  `jax.nn.dot_product_attention(implementation=attention_implementation)`: None / 'xla' (XLA's
  attention) or 'cudnn' (cuDNN flash attention; NVIDIA GPUs, bfloat16/float16).
  `gelu_from_input`: `gelu_tanh` even without cpu_backward (less memory on XLA:GPU).
  """

  cpu_backward: bool = False
  attention_implementation: Optional[str] = None
  gelu_from_input: bool = False

  def __post_init__(self):
    if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                       f"got {self.attention_implementation!r}")
    if self.cpu_backward and self.attention_implementation == "cudnn":
      raise ValueError(
          "attention_implementation='cudnn' runs on NVIDIA GPUs only, but cpu_backward is on "
          f"(backend {jax.default_backend()!r}); leave attention_implementation unset on the CPU")

  def dense(self, x: Array, kernel: Array, in_axes: int) -> Array:
    """x's trailing `in_axes` axes contracted with the kernel's leading ones."""
    if self.cpu_backward:
      return dense_dot(x, kernel, in_axes)
    contract = tuple(range(x.ndim - in_axes, x.ndim))
    return jax.lax.dot_general(x, kernel, ((contract, tuple(range(in_axes))), ((), ())))

  def gelu(self, x: Array) -> Array:
    """tanh-approximate GELU, as FLIP's release (flax's default)."""
    if self.cpu_backward or self.gelu_from_input:
      return gelu_tanh(x)
    return jax.nn.gelu(x, approximate=True)

  def layer_norm(self, x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """(x - mean) / std * scale + bias over the last axis, in float32."""
    if self.cpu_backward:
      return layer_norm(x, scale, bias, epsilon)
    return _layer_norm_formula(x, scale, bias, epsilon)[0]

  def attention(self, q: Array, k: Array, v: Array) -> Array:
    """softmax(q k^T / sqrt(d)) v over [batch, length, heads, head_dim]."""
    if self.cpu_backward:
      return attention_core(q, k, v)
    if self.attention_implementation == "cudnn":
      return even_length_attention(q, k, v, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, implementation=self.attention_implementation)

  def residual(self, x: Array) -> Array:
    """The residual stream entering a block (or the final LayerNorm)."""
    return materialize_grad(x) if self.cpu_backward else x


def choose(cpu_backward: Optional[bool] = None, attention_implementation: Optional[str] = None,
           platform: Optional[str] = None) -> Backend:
  """The `Backend` for these settings on `platform` (None: jax's default backend).

  cpu_backward None: on on the CPU. `gelu_tanh` runs on GPUs too, the one custom formulation
  measured to pay there (docs/performance.md, "Measurements").
  """
  platform = platform or jax.default_backend()
  if cpu_backward is None:
    cpu_backward = platform == "cpu"
  return Backend(bool(cpu_backward), attention_implementation, gelu_from_input=platform == "gpu")
