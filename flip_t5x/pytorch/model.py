"""FLIP's two towers as a plain PyTorch module, with OpenCLIP's `CLIP` interface.

`FlipCLIP.encode_image` / `encode_text` / `logit_scale` / `forward` behave as OpenCLIP's (features
unnormalised unless `normalize=True`; `forward` returns normalised features and
`logit_scale.exp()`), on FLIP's network (`flip_t5x.network`) as trained in JAX:

- image tower: patches -> dense (a stride-p conv here) + fixed 2-D sin-cos positions, a class token
  without a position, pre-LN blocks, final LayerNorm, then the mean of every token, the class token
  included ('mean', the release), or the class token alone ('cls'); bias-free projection;
- text tower: ids padded with 0 (or cut) to `max_length` first, as the JAX tower does (no padding
  mask: position 0 attends to every pad), an optional [CLS] id in front, learned positions,
  bidirectional blocks (no causal mask), final LayerNorm, position 0 ('first') or the mean;
- blocks: LayerNorm epsilon 1e-6 computed in float32, tanh-approximated GELU, attention without a
  mask; `logit_scale` holds the log of the scale FLIP uses (already clipped to [0, ln 100]).

OpenCLIP's own modules cannot build this (docs/pytorch.md says why), so this file does; the
weights come from `flip_t5x.pytorch.convert`. Nothing here imports JAX or TensorFlow.
"""
from __future__ import annotations

import collections
from typing import Any, Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

IMAGE_POOLINGS = ("mean", "cls")
TEXT_POOLINGS = ("first", "mean")


class LayerNorm(nn.LayerNorm):
  """LayerNorm computed in float32 whatever the input dtype (as flip_t5x.layers.LayerNorm)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                     self.eps)
    return y.to(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention without a mask; q, k and v in one `in_proj`."""

  def __init__(self, width: int, num_heads: int):
    super().__init__()
    if width % num_heads:
      raise ValueError(f"width {width} is not a multiple of num_heads {num_heads}")
    self.num_heads = num_heads
    self.in_proj = nn.Linear(width, 3 * width)
    self.out_proj = nn.Linear(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, w = x.shape
    qkv = self.in_proj(x).view(b, n, 3, self.num_heads, w // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b, heads, n, head_dim]
    out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
    return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: int, eps: float):
    super().__init__()
    self.ln_1 = LayerNorm(width, eps=eps)
    self.attn = Attention(width, num_heads)
    self.ln_2 = LayerNorm(width, eps=eps)
    self.mlp = nn.Sequential(collections.OrderedDict(
        c_fc=nn.Linear(width, width * mlp_ratio), gelu=nn.GELU(approximate="tanh"),
        c_proj=nn.Linear(width * mlp_ratio, width)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


def _blocks(width: int, depth: int, num_heads: int, mlp_ratio: int, eps: float) -> nn.ModuleList:
  return nn.ModuleList([Block(width, num_heads, mlp_ratio, eps) for _ in range(depth)])


def _pool_and_project(x: torch.Tensor, mean: bool, proj: nn.Linear) -> torch.Tensor:
  """Pools in float32 (as the JAX towers), then projects in the projection's dtype."""
  pooled = x.float().mean(dim=1) if mean else x[:, 0].float()
  return proj(pooled.to(proj.weight.dtype))


class VisionTower(nn.Module):
  """The ViT image tower; takes [N, 3, image_size, image_size] normalised images."""

  def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
               mlp_ratio: int, pooling: str, embed_dim: int, projection_bias: bool, eps: float):
    super().__init__()
    if pooling not in IMAGE_POOLINGS:
      raise ValueError(f"image pooling must be one of {IMAGE_POOLINGS}, got {pooling!r}")
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    self.image_size, self.patch_size, self.pooling = image_size, patch_size, pooling
    grid = image_size // patch_size
    self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
    self.class_embedding = nn.Parameter(torch.zeros(width))
    # Fixed 2-D sin-cos table (written by the exporter from flip_t5x.network): not trained.
    self.register_buffer("positional_embedding", torch.zeros(grid * grid, width))
    self.blocks = _blocks(width, depth, num_heads, mlp_ratio, eps)
    self.ln_post = LayerNorm(width, eps=eps)
    self.proj = nn.Linear(width, embed_dim, bias=projection_bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    s = self.image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
      # Sin-cos positions exist for any grid, so another size would run, on a model never
      # trained on that grid: refuse it, as the JAX tower does.
      raise ValueError(f"images are {tuple(images.shape)}; this image tower takes [N, 3, {s}, "
                       f"{s}] (the exported image_size; preprocess_val makes them)")
    x = self.conv1(images).flatten(2).transpose(1, 2)  # [N, grid^2, width]
    x = x + self.positional_embedding.to(x.dtype)
    cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in self.blocks:
      x = block(x)
    return _pool_and_project(self.ln_post(x), self.pooling == "mean", self.proj)


def pad_or_truncate(ids: torch.Tensor, length: int) -> torch.Tensor:
  """[N, n] ids -> [N, length]: zero-padded on the right, or cut after `length`."""
  n = ids.shape[1]
  if n >= length:
    return ids[:, :length]
  return F.pad(ids, (0, length - n))


class TextTower(nn.Module):
  """The text tower; takes [N, n] WordPiece ids (n padded or cut to max_length)."""

  def __init__(self, vocab_size: int, max_length: int, width: int, depth: int, num_heads: int,
               mlp_ratio: int, pooling: str, cls_token_id: Optional[int], embed_dim: int,
               projection_bias: bool, eps: float):
    super().__init__()
    if pooling not in TEXT_POOLINGS:
      raise ValueError(f"text pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
    self.max_length, self.pooling, self.cls_token_id = max_length, pooling, cls_token_id
    self.token_embedding = nn.Embedding(vocab_size, width)
    self.positional_embedding = nn.Parameter(torch.zeros(max_length, width))
    self.blocks = _blocks(width, depth, num_heads, mlp_ratio, eps)
    self.ln_final = LayerNorm(width, eps=eps)
    self.text_projection = nn.Linear(width, embed_dim, bias=projection_bias)

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    if ids.ndim != 2:
      raise ValueError(f"text ids must be [N, length], got shape {tuple(ids.shape)}")
    ids = pad_or_truncate(ids.long(), self.max_length)
    if self.cls_token_id is not None:  # [CLS] first, the last token dropped (FLIP's pipeline)
      cls = torch.full_like(ids[:, :1], self.cls_token_id)
      ids = torch.cat([cls, ids[:, :-1]], dim=1)
    x = self.token_embedding(ids) + self.positional_embedding
    for block in self.blocks:
      x = block(x)
    return _pool_and_project(self.ln_final(x), self.pooling == "mean", self.text_projection)


class FlipCLIP(nn.Module):
  """FLIP with OpenCLIP's `CLIP` interface (`encode_image`, `encode_text`, `logit_scale`)."""

  def __init__(self, embed_dim: int, vision_cfg: Dict[str, Any], text_cfg: Dict[str, Any],
               projection_bias: bool = False, layer_norm_epsilon: float = 1e-6,
               output_dict: bool = False):
    super().__init__()
    shared = dict(embed_dim=embed_dim, projection_bias=projection_bias, eps=layer_norm_epsilon)
    self.visual = VisionTower(**vision_cfg, **shared)
    self.text = TextTower(**text_cfg, **shared)
    self.logit_scale = nn.Parameter(torch.zeros([]))  # log of the scale (FLIP's, clipped)
    self.output_dict = output_dict
    self.context_length = self.text.max_length
    self.vocab_size = self.text.token_embedding.num_embeddings

  def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    features = self.visual(image)
    return F.normalize(features, dim=-1) if normalize else features

  def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    features = self.text(text)
    return F.normalize(features, dim=-1) if normalize else features

  def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
    image_features = self.encode_image(image, normalize=True) if image is not None else None
    text_features = self.encode_text(text, normalize=True) if text is not None else None
    if self.output_dict:
      return {"image_features": image_features, "text_features": text_features,
              "logit_scale": self.logit_scale.exp()}
    return image_features, text_features, self.logit_scale.exp()
