"""Image transforms for the PyTorch model: FLIP's official eval crop in numpy, and a train crop.

`OfficialEvalCrop` is `flip_t5x.data.images.center_crop_image` (the centred square of the short
side, TF1's `resize_bicubic` without half-pixel centres or antialiasing, ImageNet mean/std) on a
PIL image or uint8 pixels, in numpy: TensorFlow is not fork-safe (a TF op in a forked process
hangs once the parent has run one), and PyTorch's DataLoader workers, CLIP_benchmark's included,
are forked. tests/test_torch_export.py holds it to the TensorFlow function. TF1's bicubic is
Keys' cubic with a = -0.75, its fractional offsets rounded to 1/1024 (the kernel's table) and the
taps clamped to the image, applied along the rows, then along the columns.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

_TABLE_SIZE = 1024  # TF's kTableSize
_KEYS_A = -0.75  # TF1 legacy bicubic's a


@functools.lru_cache(maxsize=1)
def _coefficients() -> np.ndarray:
  """TF's coefficient table [1025, 2]: (weight at distance t, at distance 1 + t), t = i / 1024."""
  a = _KEYS_A
  x = np.arange(_TABLE_SIZE + 1, dtype=np.float64) / _TABLE_SIZE
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  x1 = (x.astype(np.float32) + np.float32(1.0)).astype(np.float64)
  far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
  return np.stack([near, far], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """float32 [out_size, in_size]: TF1 `resize_bicubic` along one axis as a matrix."""
  table = _coefficients()
  scale = np.float32(in_size) / np.float32(out_size)
  loc = np.arange(out_size, dtype=np.float32) * scale
  floor = np.floor(loc)
  offset = np.rint((loc - floor) * np.float32(_TABLE_SIZE)).astype(np.int64)  # lrintf
  weights = np.stack([table[offset, 1], table[offset, 0], table[_TABLE_SIZE - offset, 0],
                      table[_TABLE_SIZE - offset, 1]], axis=1).astype(np.float64)
  taps = np.clip(floor.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.reshape(-1)), weights.reshape(-1))
  return matrix.astype(np.float32)


def center_crop_window(height: int, width: int, size: int, pad: int) -> Tuple[int, int, int]:
  """(top, left, side) of the official centred square (`images.center_crop_window`)."""
  short = np.float32(min(height, width))
  side = max(int(np.float32(size / (size + pad)) * short), 1)
  return ((height - side) + 1) // 2, ((width - side) + 1) // 2, side


def _rgb_pixels(image: Any) -> np.ndarray:
  """A PIL image or pixels [H, W] / [H, W, 1|3|4] -> uint8 RGB [H, W, 3]."""
  if type(image).__module__.startswith("PIL."):
    image = image.convert("RGB")
  x = np.asarray(image)
  if x.ndim == 2:
    x = x[:, :, None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4) or x.dtype != np.uint8:
    raise ValueError(f"expected a PIL image or uint8 pixels [H, W, 1|3|4], got {x.dtype} "
                     f"{x.shape}")
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[:, :, :3]


class OfficialEvalCrop:
  """PIL image (or uint8 pixels) -> float32 [3, size, size]: FLIP's eval preprocessing."""

  def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], pad: int = 0):
    self.image_size, self.pad = int(image_size), int(pad)
    # x * scale + offset = (x / 255 - mean) / std, as `images.normalize_image` computes it.
    self.scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    self.offset = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)

  def pixels(self, image: Any) -> np.ndarray:
    """float32 [size, size, 3] (HWC, as the JAX model takes them)."""
    x = _rgb_pixels(image)
    top, left, side = center_crop_window(x.shape[0], x.shape[1], self.image_size, self.pad)
    crop = x[top:top + side, left:left + side].astype(np.float32)
    m = resize_matrix(side, self.image_size)
    rows = np.einsum("ys,sxc->yxc", m, crop)  # along the rows first, as TF's kernel
    resized = np.einsum("xs,ysc->yxc", m, rows)
    return resized * self.scale + self.offset

  def __call__(self, image: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(self.pixels(image).transpose(2, 0, 1)))

  def __repr__(self) -> str:
    return (f"OfficialEvalCrop(image_size={self.image_size}, pad={self.pad}, "
            "resize=TF1 bicubic)")


def _to_rgb(image: Any) -> Any:
  return image.convert("RGB")


def image_transforms(preprocess_cfg: Dict[str, Any]) -> Tuple[Any, OfficialEvalCrop]:
  """(preprocess_train, preprocess_val) from an exported `preprocess_cfg`.

  Train: torchvision's RandomResizedCrop with FLIP's ranges (area 0.5-1, aspect 3/4-4/3, bicubic)
  and a horizontal flip, close to the official crop "v4" but not its TensorFlow code. Val: the
  official eval crop, exactly.
  """
  from flip_t5x.pytorch import compat  # pylint: disable=g-import-not-at-top
  transforms = compat.import_torchvision().transforms
  size, mean, std = preprocess_cfg["image_size"], preprocess_cfg["mean"], preprocess_cfg["std"]
  train = transforms.Compose([
      _to_rgb,
      transforms.RandomResizedCrop(size, scale=tuple(preprocess_cfg["train_area_range"]),
                                   ratio=tuple(preprocess_cfg["train_aspect_ratio_range"]),
                                   interpolation=transforms.InterpolationMode.BICUBIC),
      transforms.RandomHorizontalFlip(),
      transforms.ToTensor(),
      transforms.Normalize(mean, std)])
  return train, OfficialEvalCrop(size, mean, std, preprocess_cfg.get("eval_pad", 0))
