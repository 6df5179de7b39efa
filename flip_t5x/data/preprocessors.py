"""tf.data preprocessing for FLIP: robust image decoding, augmentation, tokenisation, skip counting.

Records from `flip_t5x.data.sources` are dicts of raw bytes (`image`, `text`; zero-shot sources add
`label`). `image_text_preprocessor` turns them into task features `image` float32 [S, S, 3]
(ImageNet mean/std normalised) and `targets` int32 [<= L] (WordPiece ids), where S and L come from
the task feature lengths (`sequence_length["image"]`, `sequence_length["targets"]`).

Bad records never stop the stream. Each record gets a skip reason (see `SKIP_REASONS`): bytes that
are empty, not an image, a decompression bomb (header size above `max_image_pixels`), an empty or
non-UTF-8 caption are detected without raising; bytes that make a decoder raise are dropped by
`ignore_errors` and detected as gaps in the record index (an end marker after the last record
counts those at the end of a finite stream). Shard files that end in a read error are counted
once each as `damaged_file` by `flip_t5x.data.sources`. All are counted in tf.Variables, per
counter name ("train", "eval", ...), read with:

    from flip_t5x.data import preprocessors
    preprocessors.skipped_counts("train")  # {"empty_image": 0, "decode_error": 3, ...}
    preprocessors.kept_count("train")      # records that made it into the stream

The counters are cumulative over the process (restored with the input position by
`sources.restore_input_position`); they lag the training step by the prefetch depth. The trainer
writes them to its metrics, e.g. as `input/skipped/<reason>`.

Augmentation is deterministic for a given seed: per-record randomness uses stateless ops keyed by
seeds seqio derives from the dataset seed (`seqio.map_over_dataset(num_seeds=1)`).
"""
from __future__ import annotations

import functools
from typing import Dict, Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.data import vocabulary as vocabulary_lib

MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
DEFAULT_TEXT_LENGTH = 32
_TEXT_BATCH = 64  # records whose captions are tokenised in one call

SKIP_REASONS = ("ok", "empty_image", "unknown_format", "too_large", "decode_error",
                "empty_caption", "bad_utf8", "damaged_file")
(OK, EMPTY_IMAGE, UNKNOWN_FORMAT, TOO_LARGE, DECODE_ERROR, EMPTY_CAPTION, BAD_UTF8,
 DAMAGED_FILE) = range(len(SKIP_REASONS))
# Image container codes returned by `image_format`.
FMT_UNKNOWN, FMT_JPEG, FMT_PNG, FMT_GIF, FMT_WEBP, FMT_BMP = range(6)


@gin.configurable(module="flip_t5x.data.preprocessors")
def max_image_pixels(limit: int = 89_478_485) -> int:
  """Largest width*height decoded (PIL's default bomb limit); larger images are skipped."""
  return int(limit)


@gin.configurable(module="flip_t5x.data.preprocessors")
def train_augmentation(area_range=(0.5, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                       flip: bool = True, resize_method: str = "bicubic",
                       crop_x_step: int = 1) -> dict:
  """FLIP's random-resized crop ("v4", timm's RandomResizedCrop) + flip settings.

  resize_method: `tf.image.resize` method from the crop to the output size; the official code
  resizes with TF2's bicubic (half-pixel centres, no antialiasing).
  crop_x_step: an opt-in speed option that moves the crop's left edge left to a multiple of this
  many pixels (area and aspect ratio unchanged). 16 is a JPEG MCU width: libjpeg then decodes the
  crop straight into the output instead of realigning every row (scripts/bench_input.py). 1 (the
  default, as the official code) keeps the sampled position.
  """
  if int(crop_x_step) < 1:
    raise ValueError(f"train_augmentation.crop_x_step must be >= 1, got {crop_x_step}")
  return dict(area_range=tuple(area_range), aspect_ratio_range=tuple(aspect_ratio_range),
              flip=flip, resize_method=resize_method, crop_x_step=int(crop_x_step))


@gin.configurable(module="flip_t5x.data.preprocessors")
def eval_crop(eval_pad: int = 0) -> int:
  """The official `eval_pad`: evaluation crops the centred square of side size / (size + pad) of
  the short side (0, FLIP's setting: the whole short side; 32 is the classic 224/256 crop)."""
  if int(eval_pad) < 0:
    raise ValueError(f"eval_crop.eval_pad must be >= 0, got {eval_pad}")
  return int(eval_pad)


# ------------------------------------------------------------------------------------------------
# Counters.
class SkipCounters:
  """Per-name skip counters (tf.Variables, so tf.data can update them and checkpoints save them)."""

  def __init__(self, name: str):
    with tf.init_scope():
      self.skipped = tf.Variable(tf.zeros([len(SKIP_REASONS)], tf.int64), trainable=False,
                                 name=f"skipped_{name}")
      self.kept = tf.Variable(tf.constant(0, tf.int64), trainable=False, name=f"kept_{name}")

  def trackables(self) -> dict:
    return {"skipped": self.skipped, "kept": self.kept}


_COUNTERS: Dict[str, SkipCounters] = {}


def counters(name: str = "train") -> SkipCounters:
  """The counter object for `name`, created on first use."""
  if name not in _COUNTERS:
    _COUNTERS[name] = SkipCounters(name)
  return _COUNTERS[name]


def skipped_counts(name: str = "train") -> Dict[str, int]:
  """{reason: number of records skipped} for the pipelines counting under `name`."""
  values = counters(name).skipped.numpy().tolist()
  return {r: int(v) for r, v in zip(SKIP_REASONS, values) if r != "ok"}


def kept_count(name: str = "train") -> int:
  """Number of records that passed all checks under `name`."""
  return int(counters(name).kept.numpy())


def reset_counts(name: Optional[str] = None) -> None:
  """Zeroes the counters of `name` (all names if None)."""
  for n in ([name] if name else list(_COUNTERS)):
    c = counters(n)
    c.skipped.assign(tf.zeros_like(c.skipped))
    c.kept.assign(0)


# ------------------------------------------------------------------------------------------------
# Image helpers.
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
  [3] vector over [H, W, 3] cost ~0.9 ms per 224-px image (a quarter of the whole pipeline,
  measured with scripts/bench_input.py); same-shape element-wise ops cost ~0.05 ms.
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


_CROP_ATTEMPTS = 10  # candidate (area, aspect) draws of the official crop "v4"
_FALLBACK_PAD = 32  # the official v4 crop falls back to the centred size / (size + 32) square


def crop_window(hw: tf.Tensor, seed: tf.Tensor, aug: Mapping, size: int) -> tf.Tensor:
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
  lo, hi = aug["area_range"]
  target_area = tf.random.stateless_uniform([_CROP_ATTEMPTS], area_seed, lo, hi) * area
  log_lo, log_hi = np.log(aug["aspect_ratio_range"][0]), np.log(aug["aspect_ratio_range"][1])
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
  left = window[1] // aug["crop_x_step"] * aug["crop_x_step"]
  return tf.tensor_scatter_nd_update(window, [[1]], [left])


def _decode_window(data: tf.Tensor, fmt: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """uint8 RGB pixels of `window` [top, left, height, width]; JPEG decodes only the window."""
  def jpeg():
    return tf.image.decode_and_crop_jpeg(data, window, channels=3)

  def other():
    image = _decode_any(data)
    return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

  return tf.cond(tf.equal(fmt, FMT_JPEG), jpeg, other)


def train_image(data: tf.Tensor, fmt: tf.Tensor, hw: tf.Tensor, size: int,
                seed: tf.Tensor) -> tf.Tensor:
  """Official crop "v4" (decoding only the crop for JPEG), resize, flip -> float32 [size, size, 3].

  No clipping after the bicubic resize, as the official code.
  """
  aug = train_augmentation()
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _decode_window(data, fmt, crop_window(hw, crop_seed, aug, size))
  image = tf.image.resize(image, [size, size], method=aug["resize_method"], antialias=False)
  if aug["flip"]:
    do_flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(do_flip, lambda: tf.image.flip_left_right(image), lambda: image)
  return normalize_image(image)


def eval_image(data: tf.Tensor, size: int) -> tf.Tensor:
  """The official `_decode_and_center_crop` -> float32 [size, size, 3], ImageNet normalised.

  The centred square of size / (size + eval_pad) of the short side (`eval_crop`), decoding only
  that window for JPEG, resized to `size` with TF1's bicubic (`resize_bicubic`: no half-pixel
  centres, no antialiasing), not clipped. Every evaluation path (flip_t5x.eval, the periodic
  zero-shot, the seqio tasks, FlipPredictor) goes through here.
  """
  pad = eval_crop()

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


# ------------------------------------------------------------------------------------------------
# Text helpers.
def caption_reason(text: tf.Tensor) -> tf.Tensor:
  """EMPTY_CAPTION / BAD_UTF8 / OK for a caption string."""
  valid_utf8 = tf.equal(
      tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                   replacement_char=0xFFFD), text)
  empty = tf.equal(tf.strings.length(tf.strings.strip(text)), 0)
  return tf.where(empty, EMPTY_CAPTION, tf.where(valid_utf8, OK, BAD_UTF8))


# ------------------------------------------------------------------------------------------------
# The preprocessor.
def _empty_record(spec: Mapping[str, tf.TensorSpec]) -> dict:
  """A record of empty strings and zeros with the structure of `spec`."""
  return {k: tf.fill(s.shape, b"") if s.dtype == tf.string else tf.zeros(s.shape, s.dtype)
          for k, s in spec.items()}


def _lengths(sequence_length: Optional[Mapping[str, int]]):
  sequence_length = sequence_length or {}
  return (int(sequence_length.get("image") or DEFAULT_IMAGE_SIZE),
          int(sequence_length.get("targets") or DEFAULT_TEXT_LENGTH))


def image_text_preprocessor(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]] = None,
    output_features: Optional[Mapping[str, seqio.Feature]] = None,
    *,
    train: bool = True,
    counter: str = "train",
) -> tf.data.Dataset:
  """Raw `{image, text[, label]}` bytes -> `{image, targets[, label]}`, skipping bad records.

  Args:
    dataset: records from `flip_t5x.data.sources`.
    sequence_length: task feature lengths; `image` is the side S, `targets` the text length L.
    output_features: the task's features; `targets` must carry the WordPiece vocabulary.
    train: the official crop "v4" + flip if True, else its centre crop (`eval_image`).
    counter: name of the skip counters this pipeline adds to (see `skipped_counts`).
  """
  size, length = _lengths(sequence_length)
  if output_features and "targets" in output_features:
    vocab = output_features["targets"].vocabulary
  else:
    vocab = vocabulary_lib.WordPieceVocabulary()
  limit = max_image_pixels()
  counts = counters(counter)

  # Plain graph code (no Python control flow on tensors): skipping autograph saves ~10 s of
  # tracing each time a dataset is built.
  @tf.autograph.experimental.do_not_convert
  def tokenize(batch):
    text = batch["text"]
    text_reason = caption_reason(text)
    safe_text = tf.where(tf.equal(text_reason, OK), text, tf.constant(b""))
    ids = vocab.encode_tf(safe_text)[:, :length]
    return dict(batch, _text_reason=text_reason, _targets=tf.cast(ids, tf.int32))

  @seqio.map_over_dataset(num_seeds=1)
  @tf.autograph.experimental.do_not_convert
  def convert(rec, seed):
    index = rec["_index"]
    data, text_reason = rec["image"], rec["_text_reason"]
    fmt = image_format(data)
    empty = tf.equal(tf.strings.length(data), 0)
    pre = tf.where(empty, EMPTY_IMAGE, tf.where(tf.equal(fmt, FMT_UNKNOWN), UNKNOWN_FORMAT,
                                                  text_reason))
    hw = tf.cond(tf.equal(pre, OK), lambda: image_header_size(data, fmt),
                 lambda: tf.ones([2], tf.int64))
    too_large = tf.logical_or(hw[0] * hw[1] > limit, tf.reduce_any(hw <= 0))
    reason = tf.where(tf.equal(pre, OK) & too_large, TOO_LARGE, pre)
    ok = tf.equal(reason, OK)
    if train:
      image = tf.cond(ok, lambda: train_image(data, fmt, hw, size, seed),
                      lambda: tf.zeros([size, size, 3], tf.float32))
    else:
      image = tf.cond(ok, lambda: eval_image(data, size),
                      lambda: tf.zeros([size, size, 3], tf.float32))
    image = tf.ensure_shape(image, [size, size, 3])
    out = {"image": image, "targets": rec["_targets"],
           "_reason": tf.cast(reason, tf.int64), "_index": index, "_end": rec["_end"]}
    if "label" in rec:
      out["label"] = tf.cast(rec["label"], tf.int32)
    return out

  @tf.autograph.experimental.do_not_convert
  def gap(last, ex):
    # Records a decoder raised on were dropped by ignore_errors: they show as gaps in the index.
    # The scan's state is part of the iterator, so a restored iterator continues it.
    return ex["_index"], dict(ex, _gap=ex["_index"] - last - 1)

  @tf.autograph.experimental.do_not_convert
  def count_and_keep(ex):
    reason, end = ex["_reason"], ex["_end"]  # the end marker counts only the gap before it
    ops = [
        counts.skipped.scatter_nd_add([[DECODE_ERROR]], [ex["_gap"]]),
        counts.skipped.scatter_nd_add([[reason]], [tf.cast((reason != OK) & ~end, tf.int64)]),
        counts.kept.assign_add(tf.cast((reason == OK) & ~end, tf.int64)),
    ]
    with tf.control_dependencies(ops):
      return tf.equal(reason, OK) & ~end

  @tf.autograph.experimental.do_not_convert
  def drop_private(ex):
    return {k: v for k, v in ex.items() if not k.startswith("_")}

  # An end marker after the last record (an empty image: never decoded) counts the records a
  # decoder raised on at the end of a finite stream.
  end = tf.data.Dataset.from_tensors(dict(_empty_record(dataset.element_spec), _end=True))
  dataset = dataset.map(lambda rec: dict(rec, _end=False)).concatenate(end)
  dataset = dataset.enumerate().map(lambda i, rec: dict(rec, _index=i))
  # Captions are checked and tokenised in batches: one tokenizer call per record costs ~0.1 ms,
  # more than copying the batch in and out (scripts/bench_input.py).
  dataset = dataset.batch(_TEXT_BATCH).map(tokenize).unbatch()
  dataset = convert(dataset)
  dataset = dataset.ignore_errors()
  dataset = dataset.scan(tf.constant(-1, tf.int64), gap)
  dataset = dataset.filter(count_and_keep)
  # The counters are external state: checkpoints of the iterator save them explicitly
  # (sources.save_input_position), so serialising the iterator may ignore them.
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return dataset.map(drop_private, num_parallel_calls=tf.data.AUTOTUNE).with_options(options)


train_preprocessor = functools.partial(image_text_preprocessor, train=True, counter="train")
eval_preprocessor = functools.partial(image_text_preprocessor, train=False, counter="eval")
