"""flip_t5x parameters (JAX) -> the PyTorch model's config and state dict; the export directory.

The JAX side of the export: reads a `network.FlipTwoTower` and its parameters (as
`checkpoints.load_params` / `FlipPredictor` give them) and names every array as
`flip_t5x.pytorch.model.FlipCLIP` does, transposed to PyTorch's layouts; an array this mapping
does not place is an error, so a network change cannot export silently incomplete.
`write_export` writes the directory `flip_t5x.pytorch.create_model_and_transforms` reads:
`flip_config.json`, `model.safetensors` (float32) and `vocab.txt`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Sequence

import flax
import numpy as np

from flip_t5x import layers
from flip_t5x import network
from flip_t5x.data import images
from flip_t5x.pytorch import factory
from flip_t5x.pytorch import model as model_lib

_TOWER_FIELDS = {
    "image": ("image_size", "patch_size", "width", "depth", "num_heads", "mlp_ratio", "pooling"),
    "text": ("vocab_size", "max_length", "width", "depth", "num_heads", "mlp_ratio", "pooling",
             "cls_token_id"),
}


def model_config(module: network.FlipTwoTower) -> Dict[str, Any]:
  """`FlipCLIP(**model_cfg)` of a JAX module (its dropout, dtype and remat are training-only)."""
  def tower(name):
    config = getattr(module, name)
    return {field: getattr(config, field) for field in _TOWER_FIELDS[name]}
  return {"embed_dim": int(module.embed_dim), "vision_cfg": tower("image"),
          "text_cfg": tower("text"), "projection_bias": bool(module.projection_bias),
          "layer_norm_epsilon": layers.LayerNorm.epsilon}


def preprocess_config(image_size: int, eval_pad: int, augmentation: images.TrainAugmentation
                      ) -> Dict[str, Any]:
  """What `transforms.image_transforms` builds from: the eval crop's pad, the train crop's ranges,
  ImageNet mean/std."""
  return {"image_size": int(image_size), "mean": list(images.MEAN_RGB),
          "std": list(images.STDDEV_RGB), "eval_pad": int(eval_pad),
          "train_area_range": list(augmentation.area_range),
          "train_aspect_ratio_range": list(augmentation.aspect_ratio_range)}


def _linear(kernel: np.ndarray, in_axes: int = 1) -> np.ndarray:
  """A DenseGeneral kernel [in..., out...] -> a torch Linear weight [out, in]."""
  fan_in = int(np.prod(kernel.shape[:in_axes]))
  return kernel.reshape(fan_in, -1).T


class _Params:
  """The flat parameter dict; `take` hands each array out once, `check_all_taken` names the rest."""

  def __init__(self, params: Any):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    self._arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    self._taken = set()

  def take(self, name: str) -> np.ndarray:
    if name not in self._arrays:
      raise KeyError(f"the parameters have no {name!r}: not a flip_t5x FlipTwoTower?")
    self._taken.add(name)
    return self._arrays[name]

  def has(self, name: str) -> bool:
    return name in self._arrays

  def check_all_taken(self) -> None:
    left = sorted(set(self._arrays) - self._taken)
    if left:
      raise ValueError(f"the PyTorch export has no place for {len(left)} parameters: {left[:5]}")


def _encoder(p: _Params, jax_prefix: str, torch_prefix: str, depth: int, final_norm: str
             ) -> Dict[str, np.ndarray]:
  out = {}

  def norm(jax_name, torch_name):
    out[f"{torch_name}.weight"] = p.take(f"{jax_name}/scale")
    out[f"{torch_name}.bias"] = p.take(f"{jax_name}/bias")

  for i in range(depth):
    j, t = f"{jax_prefix}/encoder/block_{i}", f"{torch_prefix}.blocks.{i}"
    norm(f"{j}/pre_attention_layer_norm", f"{t}.ln_1")
    qkv = ("query", "key", "value")
    out[f"{t}.attn.in_proj.weight"] = np.concatenate(
        [_linear(p.take(f"{j}/attention/{n}/kernel")) for n in qkv])
    out[f"{t}.attn.in_proj.bias"] = np.concatenate(
        [p.take(f"{j}/attention/{n}/bias").reshape(-1) for n in qkv])
    out[f"{t}.attn.out_proj.weight"] = _linear(p.take(f"{j}/attention/out/kernel"), in_axes=2)
    out[f"{t}.attn.out_proj.bias"] = p.take(f"{j}/attention/out/bias")
    norm(f"{j}/pre_mlp_layer_norm", f"{t}.ln_2")
    for jax_name, torch_name in (("wi", "c_fc"), ("wo", "c_proj")):
      out[f"{t}.mlp.{torch_name}.weight"] = _linear(p.take(f"{j}/mlp/{jax_name}/kernel"))
      out[f"{t}.mlp.{torch_name}.bias"] = p.take(f"{j}/mlp/{jax_name}/bias")
  norm(f"{jax_prefix}/encoder/encoder_norm", f"{torch_prefix}.{final_norm}")
  return out


def _projection(p: _Params, jax_prefix: str, torch_name: str) -> Dict[str, np.ndarray]:
  out = {f"{torch_name}.weight": _linear(p.take(f"{jax_prefix}/projection/kernel"))}
  if p.has(f"{jax_prefix}/projection/bias"):
    out[f"{torch_name}.bias"] = p.take(f"{jax_prefix}/projection/bias")
  return out


def state_dict(module: network.FlipTwoTower, params: Any) -> Dict[str, np.ndarray]:
  """`FlipCLIP`'s state dict (float32 numpy arrays) from the JAX module's parameters."""
  p = _Params(params)
  image, text = module.image, module.text
  grid = image.image_size // image.patch_size
  patch = p.take("image_tower/patch_embed/embedding/kernel")  # [p * p * 3, width], (row, col, c)
  out = {
      "visual.conv1.weight": patch.reshape(image.patch_size, image.patch_size, 3, image.width
                                           ).transpose(3, 2, 0, 1),
      "visual.conv1.bias": p.take("image_tower/patch_embed/embedding/bias"),
      "visual.class_embedding": p.take("image_tower/cls"),
      "visual.positional_embedding": network.sincos_pos_embed_2d(grid, grid, image.width),
      "text.token_embedding.weight": p.take("text_tower/token_embedding"),
      "text.positional_embedding": p.take("text_tower/pos_embedding"),
  }
  out.update(_encoder(p, "image_tower", "visual", image.depth, "ln_post"))
  out.update(_encoder(p, "text_tower", "text", text.depth, "ln_final"))
  out.update(_projection(p, "image_tower", "visual.proj"))
  out.update(_projection(p, "text_tower", "text.text_projection"))
  # The scale FLIP multiplies the logits by (clipped, or 1 / fixed_temperature), as its log.
  if p.has("logit_scale"):
    p.take("logit_scale")
  scale = float(module.apply({"params": params}, method=network.FlipTwoTower.scale))
  out["logit_scale"] = np.asarray(math.log(scale), np.float32)
  p.check_all_taken()
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def torch_model(module: network.FlipTwoTower, params: Any):
  """The `FlipCLIP` of a JAX module and its parameters, in memory (eval mode, float32)."""
  import torch  # pylint: disable=g-import-not-at-top
  model = model_lib.FlipCLIP(**model_config(module))
  model.load_state_dict({k: torch.tensor(v) for k, v in state_dict(module, params).items()})
  return model.eval()


def write_export(output_dir: str, module: network.FlipTwoTower, params: Any, vocab_file: str,
                 preprocess_cfg: Mapping[str, Any], source: Optional[Mapping[str, Any]] = None
                 ) -> Sequence[str]:
  """Writes the export directory; returns the paths written."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  weights = state_dict(module, params)
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, name)
           for name in (factory.CONFIG_FILE, factory.WEIGHTS_FILE, factory.VOCAB_FILE)]
  safetensors_numpy.save_file(weights, paths[1], metadata={"format": "pt"})
  shutil.copyfile(vocab_file, paths[2])
  config = {"format": factory.FORMAT, "model_cfg": model_config(module),
            "preprocess_cfg": dict(preprocess_cfg),
            "tokenizer_cfg": {"vocab_file": factory.VOCAB_FILE, "lower_case": True,
                              "context_length": int(module.text.max_length)},
            "source": dict(source or {})}
  with open(paths[0], "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
  return paths
