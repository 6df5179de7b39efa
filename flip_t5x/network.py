"""FLIP's two-tower network (flax linen): patch embedding, masking, the towers, `FlipTwoTower`.

A ViT image tower that drops a random subset of patches while training (FLIP's masking), a
transformer text tower, and the learnable `logit_scale`; the transformer layers are
`flip_t5x.layers`. Each tower's sizes and the official model's switches (models_flip.py,
configs/default.py) live in one frozen config per tower (`ImageTowerConfig`, `TextTowerConfig`),
bound in gin like any configurable; their defaults are ViT-B/16's sizes and the released models'
switches: dropout, attention dropout and drop-path 0, image pooling 'mean', text pooling
'first', no [CLS] token on the text. `FlipTwoTower` adds what both towers share (embedding
width, dtype, remat, the backend's formulations), the temperature and the projection bias.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import backends
from flip_t5x import layers

param_with_axes = layers.param_with_axes
with_sharding_constraint = layers.with_sharding_constraint
Array = jax.Array

MASKING_METHODS = ("gather", "onehot")
IMAGE_POOLINGS = ("mean", "cls")  # official clr.img_avg_token True / False
TEXT_POOLINGS = ("first", "mean")  # official clr.txt_avg_token False / True
_RATES = ("dropout_rate", "attention_dropout_rate", "droppath_rate")


def _check_tower(tower: str, config: Any, poolings: Tuple[str, ...]) -> None:
  """Rates in [0, 1) and a known pooling; errors name the switch as `<tower>_<field>`."""
  for rate in _RATES:
    layers.check_rate(f"{tower}_{rate}", getattr(config, rate))
  if config.pooling not in poolings:
    raise ValueError(f"{tower}_pooling must be one of {poolings}, got {config.pooling!r}")


@dataclasses.dataclass(frozen=True)
class ImageTowerConfig:
  """The ViT image tower: sizes (defaults ViT-B/16 at 224 px) and the official switches."""

  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  pooling: str = "mean"  # IMAGE_POOLINGS: all tokens' mean (CLS included) or the CLS token
  dropout_rate: float = 0.0  # model_img.transformer.dropout_rate
  attention_dropout_rate: float = 0.0  # model_img.transformer.attention_dropout_rate
  droppath_rate: float = 0.0  # model_img.transformer.droppath_rate (the last block's)

  def __post_init__(self):
    _check_tower("image", self, IMAGE_POOLINGS)
    if self.image_size <= 0 or self.patch_size <= 0 or self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} (IMAGE_SIZE) is not a positive multiple of "
                       f"the patch size {self.patch_size} (network.ImageTowerConfig.patch_size)")


@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
  """The text tower: sizes (defaults FLIP's B/16 text tower) and the official switches."""

  vocab_size: int = 30523
  max_length: int = 32
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_ratio: int = 4
  pooling: str = "first"  # TEXT_POOLINGS: position 0, or the mean of every position (padding too)
  # aug.txt.cls_token: this id (BERT's [CLS] is 101) first in every text; None: none.
  cls_token_id: Optional[int] = None
  dropout_rate: float = 0.0  # model_txt.transformer.*
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0

  def __post_init__(self):
    _check_tower("text", self, TEXT_POOLINGS)
    if self.cls_token_id is not None and not 0 <= self.cls_token_id < self.vocab_size:
      raise ValueError(f"text_cls_token_id {self.cls_token_id} is not an id of the "
                       f"vocabulary (vocab_size {self.vocab_size})")


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
  backend: backends.Backend = backends.Backend()

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
    x = layers.DenseGeneral(features=(self.width,), kernel_axes=("patch", "embed"),
                            dtype=self.dtype, backend=self.backend, name="embedding")(x)
    return x + pos, ids_keep


def _encoder(config: Any, tower: nn.Module, deterministic: bool) -> layers.Encoder:
  """A tower's transformer encoder, from its config and the choices the towers share."""
  return layers.Encoder(
      config.depth, config.num_heads, config.width * config.mlp_ratio,
      dtype=jnp.dtype(tower.dtype), remat_policy=tower.remat_policy, backend=tower.backend,
      dropout_rate=config.dropout_rate, attention_dropout_rate=config.attention_dropout_rate,
      droppath_rate=config.droppath_rate, deterministic=deterministic, name="encoder")


def _project(tower: nn.Module, pooled: Array) -> Array:
  """The bias-free (by default) projection to the joint space, L2-normalised."""
  z = layers.DenseGeneral(features=(tower.embed_dim,), kernel_axes=("embed", "proj"),
                          use_bias=tower.projection_bias, dtype=jnp.float32,
                          backend=tower.backend, name="projection")(pooled)
  return l2_normalize(z)


class ImageTower(nn.Module):
  """ViT image encoder with FLIP masking; returns L2-normalised embeddings [batch, embed_dim]."""

  config: ImageTowerConfig = ImageTowerConfig()
  embed_dim: int = 512
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  masking_method: str = "gather"
  backend: backends.Backend = backends.Backend()
  projection_bias: bool = False

  @nn.compact
  def __call__(self, images: Array, mask_ratio: float = 0.0, rng: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    c, dtype = self.config, jnp.dtype(self.dtype)
    b, h, w = images.shape[:3]
    if (h, w) != (c.image_size, c.image_size):
      # Sin-cos positions exist for any grid, so another size would run, on a model never
      # trained on that grid: refuse it (the eval pipeline gets the size from IMAGE_SIZE).
      raise ValueError(f"images are {h}x{w} px; this image tower takes {c.image_size}x"
                       f"{c.image_size} (IMAGE_SIZE, network.ImageTowerConfig.image_size): "
                       f"set TASK_FEATURE_LENGTHS['image'] = {c.image_size}")
    x, _ = PatchEmbed(c.patch_size, c.width, dtype=dtype, masking_method=self.masking_method,
                      backend=self.backend, name="patch_embed")(images, mask_ratio, rng)
    cls = param_with_axes("cls", layers.normal_002, (c.width,), jnp.float32, axes=("embed",))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, c.width)), x], axis=1)
    x = with_sharding_constraint(x, ("batch", "length", "embed"))
    x = _encoder(c, self, deterministic)(x)
    if c.pooling == "mean":
      pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    else:
      pooled = x[:, 0].astype(jnp.float32)
    return _project(self, pooled)


class TextTower(nn.Module):
  """Transformer text encoder; position-0 pooling, returns L2-normalised [batch, embed_dim].

  Ids are padded with 0 (or truncated) to `max_length` first, as the official pipeline's
  `pad_model_inputs`: the tower has no padding mask, so position 0 attends to every pad and the
  embedding would otherwise depend on how far a pipeline padded. With `cls_token_id` set, that id
  goes first and the last token is dropped, as FLIP's pipeline with aug.txt.cls_token (the caption
  truncated to max_len - 1 behind [CLS]).
  """

  config: TextTowerConfig = TextTowerConfig()
  embed_dim: int = 512
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  backend: backends.Backend = backends.Backend()
  projection_bias: bool = False

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool = True) -> Array:
    c, dtype = self.config, jnp.dtype(self.dtype)
    tokens = pad_or_truncate(tokens, c.max_length)
    batch, length = tokens.shape
    if c.cls_token_id is not None:
      cls = jnp.full((batch, 1), c.cls_token_id, tokens.dtype)
      tokens = jnp.concatenate([cls, tokens[:, :length - 1]], axis=1)
    embedding = param_with_axes("token_embedding", layers.normal_002, (c.vocab_size, c.width),
                                jnp.float32, axes=("vocab", "embed"))
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    pos = param_with_axes("pos_embedding", layers.normal_002, (c.max_length, c.width), jnp.float32,
                          axes=("length", "embed"))
    x = x + pos[None, :length].astype(dtype)
    x = with_sharding_constraint(x, ("batch", "length", "embed"))
    x = _encoder(c, self, deterministic)(x)
    if c.pooling == "first":
      pooled = x[:, 0].astype(jnp.float32)
    else:
      pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    return _project(self, pooled)


def pad_or_truncate(tokens: Array, length: int) -> Array:
  """[batch, n] ids -> [batch, length]: zero-padded on the right, or cut after `length`."""
  n = tokens.shape[1]
  if n == length:
    return tokens
  if n > length:
    return tokens[:, :length]
  return jnp.pad(tokens, ((0, 0), (0, length - n)))


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

  image: ImageTowerConfig = ImageTowerConfig()
  text: TextTowerConfig = TextTowerConfig()
  embed_dim: int = 512
  dtype: str = "float32"
  remat_policy: str = "none"
  masking_method: str = "gather"
  # The backend's formulations (`backends.choose`), picked for `platform` (None:
  # jax.default_backend(); the benchmark's deviceless GPU compile sets 'gpu'): cpu_backward None
  # is on on the CPU; attention_implementation None / 'xla' / 'cudnn' where it is off. Attention
  # dropout, while it runs, computes the attention itself.
  cpu_backward: Optional[bool] = None
  attention_implementation: Optional[str] = None
  platform: Optional[str] = None
  # The official switches both towers share (configs/default.py clr.*).
  projection_bias: bool = False  # clr.proj_out_bias (both projections)
  learn_temperature: bool = True  # clr.tau_learnable: the `logit_scale` parameter
  fixed_temperature: float = 0.01  # clr.tau: the temperature when it is not learned

  def setup(self):
    if self.remat_policy not in layers.REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {layers.REMAT_POLICIES}, "
                       f"got {self.remat_policy!r}")
    backend = backends.choose(self.cpu_backward, self.attention_implementation, self.platform)
    if not self.learn_temperature and not self.fixed_temperature > 0.0:
      raise ValueError(f"fixed_temperature must be > 0, got {self.fixed_temperature}")
    shared = dict(embed_dim=self.embed_dim, dtype=self.dtype, remat_policy=self.remat_policy,
                  backend=backend, projection_bias=self.projection_bias)
    self.image_tower = ImageTower(self.image, masking_method=self.masking_method, **shared)
    self.text_tower = TextTower(self.text, **shared)
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
  """The module's hyper-parameters as a plain dict, tower configs nested (logs, model_info)."""
  return {f.name: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
          for f in dataclasses.fields(module) if f.name not in ("parent", "name")
          for v in [getattr(module, f.name)]}
