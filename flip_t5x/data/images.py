"""Image bytes -> pixels for FLIP: container detection, header size, the official crops.

Pure TensorFlow ops that take their settings as arguments (`TrainAugmentation`, the eval pad):
the magic-byte format check and header size that let the preprocessor skip bad or oversized
images without decoding them, the official train crop "v4" (timm's RandomResizedCrop, stateless so
a seeded run repeats) and the official centred eval crop, both decoding only the window for JPEG,
and ImageNet mean/std normalisation.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import numpy as np
import tensorflow as tf

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
# Image container codes returned by `image_format`.
FMT_UNKNOWN, FMT_JPEG, FMT_PNG, FMT_GIF, FMT_WEBP, FMT_BMP = range(6)


def _head_string(data: tf.Tensor, n: int) -> tf.Tensor:
  """The first n bytes as a string, zero padded (never raises, even for short strings)."""
  head = tf.strings.join([tf.strings.substr(data, 0, n), tf.constant(b"\0" * n)])
  return tf.strings.substr(head, 0, n)


def _head(data: tf.Tensor, n: int = 32) -> tf.Tensor:
  """The first n bytes, zero padded, as uint8 [n]."""
  return tf.io.decode_raw(_head_string(data, n), tf.uint8)


_MAGIC = ((FMT_BMP, ((0, b"BM"),)), (FMT_WEBP, ((0, b"RIFF"), (8, b"WEBP"))),
          (FMT_GIF, ((0, b"GIF8"),)), (FMT_PNG, ((0, b"\x89PNG"),)),
          (FMT_JPEG, ((0, b"\xff\xd8\xff"),)))


def image_format(data: tf.Tensor) -> tf.Tensor:
  """Container format code (FMT_*) from the magic bytes (string compares: few ops per record)."""
  head = _head_string(data, 12)
  fmt = tf.constant(FMT_UNKNOWN)
  for code, parts in _MAGIC:
    match = [tf.equal(tf.strings.substr(head, pos, len(magic)), magic) for pos, magic in parts]
    fmt = tf.where(tf.reduce_all(tf.stack(match)), code, fmt)
  return fmt


def _le(b, *idx):
  """Little-endian unsigned integer from bytes b[idx[0]], b[idx[1]], ..."""
  total = tf.constant(0, tf.int64)
  for k, i in enumerate(idx):
    total += tf.cast(b[i], tf.int64) * (1 << (8 * k))
  return total


def _be(b, *idx):
  return _le(b, *reversed(idx))


def image_header_size(data: tf.Tensor, fmt: tf.Tensor) -> tf.Tensor:
  """(height, width) int64 from the header, without decoding pixels.

  JPEG uses `extract_jpeg_shape` (which raises on garbage: such records are dropped as
  decode errors); the others are read from fixed header offsets. Each format's arithmetic lives
  in its own branch so a record runs only its own (dozens of small ops fewer per JPEG).
  """
  def png():
    h = _head(data, 24)
    return tf.stack([_be(h, 20, 21, 22, 23), _be(h, 16, 17, 18, 19)])

  def gif():
    h = _head(data, 10)
    return tf.stack([_le(h, 8, 9), _le(h, 6, 7)])

  def bmp():
    h = _head(data, 26)
    height = _le(h, 22, 23, 24, 25)
    height = tf.abs(tf.where(height >= (1 << 31), height - (1 << 32), height))  # top-down: < 0
    return tf.stack([height, _le(h, 18, 19, 20, 21)])

  def webp():
    h = _head(data, 30)
    chunk = tf.strings.substr(data, 12, 4)
    vp8x = tf.stack([_le(h, 27, 28, 29) + 1, _le(h, 24, 25, 26) + 1])
    vp8 = tf.stack([_le(h, 28, 29) % (1 << 14), _le(h, 26, 27) % (1 << 14)])
    bits = _le(h, 21, 22, 23, 24)
    vp8l = tf.stack([(bits // (1 << 14)) % (1 << 14) + 1, bits % (1 << 14) + 1])
    return tf.where(tf.equal(chunk, b"VP8X"), vp8x, tf.where(tf.equal(chunk, b"VP8L"), vp8l, vp8))

  return tf.switch_case(fmt, [
      lambda: tf.zeros([2], tf.int64),
      lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
      png, gif, webp, bmp])


def _decode_any(data: tf.Tensor) -> tf.Tensor:
  """Any supported container (GIF: first frame; grey/RGBA/CMYK/16-bit) -> uint8 RGB [H, W, 3]."""
  image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
  image.set_shape([None, None, 3])
  return image


@functools.lru_cache(maxsize=None)
def _normalization_planes(height: int, width: int) -> tuple:
  """Per-pixel (scale, offset) arrays [H, W, 3] with x * scale + offset = (x / 255 - mean) / std."""
  scale = 1.0 / (255.0 * np.asarray(STDDEV_RGB))
  offset = -np.asarray(MEAN_RGB) / np.asarray(STDDEV_RGB)
  return (np.broadcast_to(scale, (height, width, 3)).astype(np.float32),
          np.broadcast_to(offset, (height, width, 3)).astype(np.float32))


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """uint8/float [0, 255] RGB -> float32 ImageNet mean/std normalised.

  With a static shape it multiplies and adds full-size constants: TF's CPU kernels broadcasting a
  [3] vector over [H, W, 3] are far slower than same-shape element-wise ops (docs/performance.md,
  Measurements).
  """
  image = tf.cast(image, tf.float32)
  if image.shape.is_fully_defined():
    scale, offset = _normalization_planes(*image.shape.as_list()[:2])
    return image * tf.constant(scale) + tf.constant(offset)
  return (image / 255.0 - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def center_crop_window(hw: tf.Tensor, size: int, pad: int) -> tf.Tensor:
  """[top, left, side, side] (int32) of the official centred square: side = size / (size + pad)
  of the short side, truncated (float32 arithmetic, as the official code); at least 1 pixel."""
  hw = tf.cast(hw, tf.int32)
  short = tf.cast(tf.reduce_min(hw), tf.float32)
  side = tf.maximum(tf.cast(tf.constant(size / (size + pad), tf.float32) * short, tf.int32), 1)
  top = ((hw[0] - side) + 1) // 2
  left = ((hw[1] - side) + 1) // 2
  return tf.stack([top, left, side, side])


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
  """FLIP's random-resized crop ("v4", timm's RandomResizedCrop) + flip settings.

  resize_method: `tf.image.resize` method from the crop to the output size; the official code
  resizes with TF2's bicubic (half-pixel centres, no antialiasing).
  crop_x_step: an opt-in speed option that moves the crop's left edge left to a multiple of this
  many pixels (area and aspect ratio unchanged). 16 is a JPEG MCU width: libjpeg then decodes the
  crop straight into the output instead of realigning every row (scripts/bench_input.py). 1 (the
  default, as the official code) keeps the sampled position.
  """

  area_range: Tuple[float, float] = (0.5, 1.0)
  aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  resize_method: str = "bicubic"
  crop_x_step: int = 1

  def __post_init__(self):
    if int(self.crop_x_step) < 1:
      raise ValueError(f"crop_x_step must be >= 1, got {self.crop_x_step}")
    object.__setattr__(self, "area_range", tuple(self.area_range))
    object.__setattr__(self, "aspect_ratio_range", tuple(self.aspect_ratio_range))
    object.__setattr__(self, "crop_x_step", int(self.crop_x_step))


_CROP_ATTEMPTS = 10  # candidate (area, aspect) draws of the official crop "v4"
_FALLBACK_PAD = 32  # the official v4 crop falls back to the centred size / (size + 32) square


def crop_window(hw: tf.Tensor, seed: tf.Tensor, aug: TrainAugmentation, size: int
                ) -> tf.Tensor:
  """The official random-resized-crop "v4" window [top, left, height, width] (int32).

  Ten (area, aspect) draws (area fraction uniform in `area_range`, aspect log-uniform in
  `aspect_ratio_range`, w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect))); the first
  that fits gets a uniform offset; if none fits, the centred square of size / (size + 32) of the
  short side. Stateless, keyed by `seed`, where the official code uses stateful ops.
  """
  hw = tf.cast(hw, tf.int32)
  area_seed, aspect_seed, top_seed, left_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  area = tf.cast(hw[0] * hw[1], tf.float32)
  lo, hi = aug.area_range
  target_area = tf.random.stateless_uniform([_CROP_ATTEMPTS], area_seed, lo, hi) * area
  log_lo, log_hi = np.log(aug.aspect_ratio_range[0]), np.log(aug.aspect_ratio_range[1])
  aspect = tf.exp(tf.random.stateless_uniform([_CROP_ATTEMPTS], aspect_seed, log_lo, log_hi))
  widths = tf.maximum(tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32), 1)
  heights = tf.maximum(tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32), 1)
  fits = (widths <= hw[1]) & (heights <= hw[0])
  first = tf.reduce_min(tf.where(fits, tf.range(_CROP_ATTEMPTS), _CROP_ATTEMPTS))
  pick = tf.minimum(first, _CROP_ATTEMPTS - 1)
  h, w = heights[pick], widths[pick]

  def offset(room, offset_seed):  # uniform in [0, room]; room >= 0 when the draw fits
    return tf.random.stateless_uniform([], offset_seed, 0, tf.maximum(room, 0) + 1, tf.int32)

  random_window = tf.stack([offset(hw[0] - h, top_seed), offset(hw[1] - w, left_seed), h, w])
  window = tf.where(first < _CROP_ATTEMPTS, random_window,
                    center_crop_window(hw, size, _FALLBACK_PAD))
  left = window[1] // aug.crop_x_step * aug.crop_x_step
  return tf.tensor_scatter_nd_update(window, [[1]], [left])


def _decode_window(data: tf.Tensor, fmt: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """uint8 RGB pixels of `window` [top, left, height, width]; JPEG decodes only the window."""
  def jpeg():
    return tf.image.decode_and_crop_jpeg(data, window, channels=3)

  def other():
    image = _decode_any(data)
    return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

  return tf.cond(tf.equal(fmt, FMT_JPEG), jpeg, other)


def train_image(data: tf.Tensor, fmt: tf.Tensor, hw: tf.Tensor, size: int, seed: tf.Tensor,
                aug: TrainAugmentation) -> tf.Tensor:
  """Official crop "v4" (decoding only the crop for JPEG), resize, flip -> float32 [size, size, 3].

  No clipping after the bicubic resize, as the official code.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _decode_window(data, fmt, crop_window(hw, crop_seed, aug, size))
  image = tf.image.resize(image, [size, size], method=aug.resize_method, antialias=False)
  if aug.flip:
    do_flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(do_flip, lambda: tf.image.flip_left_right(image), lambda: image)
  return normalize_image(image)


def center_crop_image(data: tf.Tensor, size: int, pad: int) -> tf.Tensor:
  """The official `_decode_and_center_crop` -> float32 [size, size, 3], ImageNet normalised.

  The centred square of size / (size + pad) of the short side, decoding only that window for
  JPEG, resized to `size` with TF1's bicubic (`resize_bicubic`: no half-pixel centres, no
  antialiasing), not clipped.
  """
  def jpeg():
    window = center_crop_window(tf.image.extract_jpeg_shape(data)[:2], size, pad)
    return tf.image.decode_and_crop_jpeg(data, window, channels=3)

  def other():
    image = _decode_any(data)
    top, left, side, _ = tf.unstack(center_crop_window(tf.shape(image)[:2], size, pad))
    return image[top:top + side, left:left + side]

  image = tf.cond(tf.equal(image_format(data), FMT_JPEG), jpeg, other)
  image = tf.compat.v1.image.resize_bicubic(image[None], [size, size])[0]
  return normalize_image(tf.ensure_shape(image, [size, size, 3]))
