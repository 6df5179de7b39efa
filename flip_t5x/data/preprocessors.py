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
`flip_t5x.checkpoints.position`); they lag the training step by the prefetch depth. The trainer
writes them to its metrics, e.g. as `input/skipped/<reason>`.

The image ops (format check, header size, the official crops) live in `flip_t5x.data.images`; this
module takes their settings as arguments (`max_image_pixels`, `augmentation`, `eval_pad`), which
the tasks (`tasks.TaskConfig`) pass as gin binds them.
Augmentation is deterministic for a given seed: per-record randomness uses stateless ops keyed by
seeds seqio derives from the dataset seed (`seqio.map_over_dataset(num_seeds=1)`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from flip_t5x.data import images
from flip_t5x.data import vocabulary as vocabulary_lib

_TEXT_BATCH = 64  # records whose captions are tokenised in one call

SKIP_REASONS = ("ok", "empty_image", "unknown_format", "too_large", "decode_error",
                "empty_caption", "bad_utf8", "damaged_file")
(OK, EMPTY_IMAGE, UNKNOWN_FORMAT, TOO_LARGE, DECODE_ERROR, EMPTY_CAPTION, BAD_UTF8,
 DAMAGED_FILE) = range(len(SKIP_REASONS))


# Largest width*height decoded (PIL's default bomb limit); larger images are skipped.
MAX_IMAGE_PIXELS = 89_478_485


# ------------------------------------------------------------------------------------------------
# Counters.
class SkipCounters:
  """Per-name skip counters (tf.Variables, so tf.data can update them and checkpoints save them)."""

  def __init__(self, name: str):
    with tf.init_scope():
      self.skipped = tf.Variable(tf.zeros([len(SKIP_REASONS)], tf.int64), trainable=False,
                                 name=f"skipped_{name}")
      self.kept = tf.Variable(tf.constant(0, tf.int64), trainable=False, name=f"kept_{name}")


_COUNTERS: Dict[str, SkipCounters] = {}


def counters(name: str = "train") -> SkipCounters:
  """The counter object for `name`, created on first use."""
  if name not in _COUNTERS:
    _COUNTERS[name] = SkipCounters(name)
  return _COUNTERS[name]


def counter_variables(names: Sequence[str] = ("train",)) -> Dict[str, tf.Variable]:
  """The counters of `names` as checkpoint items: {"<name>_skipped": ..., "<name>_kept": ...}.

  `flip_t5x.checkpoints.position` saves and restores them with the input position.
  """
  out = {}
  for name in names:
    c = counters(name)
    out.update({f"{name}_skipped": c.skipped, f"{name}_kept": c.kept})
  return out


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


def eval_image(data: tf.Tensor, size: int, eval_pad: int = 0) -> tf.Tensor:
  """The official eval crop (`images.center_crop_image`): the centred square of side
  size / (size + eval_pad) of the short side.

  `eval_pad` is the official setting of that name: 0, FLIP's, crops the whole short side; 32 is the
  classic 224/256 crop. Every evaluation path (flip_t5x.eval, the periodic zero-shot, the seqio
  tasks, FlipPredictor) goes through here.
  """
  if int(eval_pad) < 0:
    raise ValueError(f"eval_pad must be >= 0, got {eval_pad}")
  return images.center_crop_image(data, size, int(eval_pad))


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


def image_size(sequence_length: Optional[Mapping[str, int]]) -> int:
  """The image side S of `sequence_length`, which a FLIP task cannot guess.

  Without it seqio's Evaluator (t5x.eval, TASK_FEATURE_LENGTHS = None) would get images of an
  arbitrary size that the model then refuses, or worse, scores at the wrong resolution.
  """
  size = (sequence_length or {}).get("image")
  if not size:
    raise ValueError(f"FLIP's image tasks need the image size: set TASK_FEATURE_LENGTHS = "
                     f"{{'image': IMAGE_SIZE, 'targets': TEXT_LENGTH}} (the model's sizes; the "
                     f"eval and pretrain run files bind exactly that), got {sequence_length!r}")
  return int(size)


def _text_length(sequence_length: Optional[Mapping[str, int]]) -> Optional[int]:
  """The caption length L, or None: ids are not cut here and the text tower pads or cuts them."""
  length = (sequence_length or {}).get("targets")
  return int(length) if length else None


def image_text_preprocessor(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]] = None,
    output_features: Optional[Mapping[str, seqio.Feature]] = None,
    *,
    train: bool = True,
    counter: str = "train",
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    augmentation: images.TrainAugmentation = images.TrainAugmentation(),
    eval_pad: int = 0,
) -> tf.data.Dataset:
  """Raw `{image, text[, label]}` bytes -> `{image, targets[, label]}`, skipping bad records.

  Args:
    dataset: records from `flip_t5x.data.sources`.
    sequence_length: task feature lengths; `image` is the side S, `targets` the text length L.
    output_features: the task's features; `targets` must carry the WordPiece vocabulary.
    train: the official crop "v4" + flip if True, else its centre crop (`eval_image`).
    counter: name of the skip counters this pipeline adds to (see `skipped_counts`).
    max_image_pixels: images whose header says more pixels (width * height) are skipped.
    augmentation: the training crop and flip (train only).
    eval_pad: the evaluation crop's pad (`eval_image`; evaluation only).
  """
  size, length = image_size(sequence_length), _text_length(sequence_length)
  if output_features and "targets" in output_features:
    vocab = output_features["targets"].vocabulary
  else:
    vocab = vocabulary_lib.WordPieceVocabulary()
  limit = int(max_image_pixels)
  counts = counters(counter)

  # Plain graph code (no Python control flow on tensors): skipping autograph saves seconds of
  # tracing each time a dataset is built (docs/performance.md, Measurements).
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
    fmt = images.image_format(data)
    empty = tf.equal(tf.strings.length(data), 0)
    unknown = tf.equal(fmt, images.FMT_UNKNOWN)
    pre = tf.where(empty, EMPTY_IMAGE, tf.where(unknown, UNKNOWN_FORMAT, text_reason))
    hw = tf.cond(tf.equal(pre, OK), lambda: images.image_header_size(data, fmt),
                 lambda: tf.ones([2], tf.int64))
    too_large = tf.logical_or(hw[0] * hw[1] > limit, tf.reduce_any(hw <= 0))
    reason = tf.where(tf.equal(pre, OK) & too_large, TOO_LARGE, pre)
    ok = tf.equal(reason, OK)
    if train:
      image = tf.cond(ok, lambda: images.train_image(data, fmt, hw, size, seed, augmentation),
                      lambda: tf.zeros([size, size, 3], tf.float32))
    else:
      image = tf.cond(ok, lambda: eval_image(data, size, eval_pad),
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
  # Captions are checked and tokenised in batches: one tokenizer call per record costs more than
  # copying the batch in and out (docs/performance.md, Measurements).
  dataset = dataset.batch(_TEXT_BATCH).map(tokenize).unbatch()
  dataset = convert(dataset)
  dataset = dataset.ignore_errors()
  dataset = dataset.scan(tf.constant(-1, tf.int64), gap)
  dataset = dataset.filter(count_and_keep)
  # The counters are external state: checkpoints of the iterator save them explicitly
  # (flip_t5x.checkpoints.position), so serialising the iterator may ignore them.
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return dataset.map(drop_private, num_parallel_calls=tf.data.AUTOTUNE).with_options(options)
