"""img2dataset shard files -> raw records: TFRecord and webdataset tar readers, patterns, formats.

`expand_data_pattern` turns a data pattern (globs, comma-separated or a list) into sorted files;
`detect_format` tells TFRecord from webdataset by extension; `READERS[format](path, counts)` reads
one file into `{"image": bytes, "text": bytes}` records. A damaged file (a read error before its
end) keeps the records before the damage, is logged with its path and counts once as
`damaged_file` in the skip counters it is given (`flip_t5x.data.preprocessors`).
"""
from __future__ import annotations

import tarfile
from typing import List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from flip_t5x.data import preprocessors

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfrec")
TAR_EXTENSIONS = (".tar",)


def expand_data_pattern(pattern: str | Sequence[str]) -> List[str]:
  """Sorted files matching a glob, comma-separated globs, or a list of globs (any tf.io.gfile FS).

  Raises:
    ValueError: naming the pattern, if it is empty or matches no file.
  """
  if isinstance(pattern, str):
    globs = [p.strip() for p in pattern.split(",")]
  else:
    globs = [str(p).strip() for p in pattern]
  globs = [g for g in globs if g]
  if not globs:
    raise ValueError(f"Empty data pattern {pattern!r}: set TRAIN_DATA_PATTERN in gin to a glob "
                     "(or comma-separated globs) of img2dataset shards.")
  files = []
  for g in globs:
    matches = tf.io.gfile.glob(g)
    if not matches:
      whole = f" (from {pattern!r})" if pattern != g else ""
      raise ValueError(f"Data pattern {g!r}{whole} matches no file.")
    files.extend(matches)
  return sorted(set(files))


def detect_format(files: Sequence[str], fmt: str = "auto") -> str:
  """'tfrecord' or 'webdataset' from `fmt` or, if 'auto', from the file extensions."""
  if fmt in ("tfrecord", "webdataset"):
    return fmt
  if fmt != "auto":
    raise ValueError(f"Unknown data format {fmt!r}; use 'auto', 'tfrecord' or 'webdataset'.")
  kinds = set()
  for f in files:
    name = f.lower()
    if name.endswith(TAR_EXTENSIONS):
      kinds.add("webdataset")
    elif name.endswith(TFRECORD_EXTENSIONS) or ".tfrecord" in name:
      kinds.add("tfrecord")
    else:
      raise ValueError(f"Cannot tell the format of {f!r} from its extension; set the data format "
                       "(TRAIN_DATA_FORMAT = 'tfrecord' or 'webdataset').")
  if len(kinds) != 1:
    raise ValueError(f"Data pattern mixes formats {sorted(kinds)}; use one format per pattern.")
  return kinds.pop()


# ------------------------------------------------------------------------------------------------
# Readers: path (scalar string tensor) -> dataset of {"image", "text"}.
#
# A shard that ends in a read error (truncated or corrupt) loses the records after the damage;
# how many it held is unknowable, so the reader counts the file once, as `damaged_file` in the
# skip counters it is given, and logs its path. Records of a damaged file read before the damage
# are kept.
_IMAGE_KEYS = ("jpg", "png", "webp", "image")
_TFRECORD_SPEC = {k: tf.io.FixedLenFeature([], tf.string, default_value="")
                  for k in _IMAGE_KEYS + ("txt",)}
_TFRECORD_FRAMING = 16  # bytes around each record: length (8), its CRC (4), data CRC (4)
# After a file's last record: never a tf.train.Example (field number 0 does not exist).
_END_OF_FILE = b"\0flip_t5x:end-of-file"


def _parse_img2dataset_example(serialized: tf.Tensor) -> dict:
  """The first non-empty image column and the caption.

  tf.cond passes the chosen string through; tf.where would copy the image bytes (a measurable
  cost per record: docs/performance.md, Measurements).
  """
  ex = tf.io.parse_single_example(serialized, _TFRECORD_SPEC)
  image = ex[_IMAGE_KEYS[-1]]
  for k in reversed(_IMAGE_KEYS[:-1]):
    image = tf.cond(tf.strings.length(ex[k]) > 0, lambda k=k: ex[k], lambda image=image: image)
  return {"image": image, "text": ex["txt"]}


def _file_size(path: bytes) -> np.int64:
  return np.int64(tf.io.gfile.stat(path.decode()).length)


def _log_damaged_tfrecord(path: bytes, read: np.int64, size: np.int64) -> np.bool_:
  """Logs a TFRecord file whose records stop before its end; returns True (it is damaged)."""
  logging.warning("TFRecord shard %s is damaged: its readable records end at byte %d of %d; the "
                  "rest of the file is skipped (counted once as input/skipped/damaged_file)",
                  path.decode(), read, size)
  return np.bool_(True)


def _count(counts: Optional[preprocessors.SkipCounters], reason: int,
           n: tf.Tensor) -> List[tf.Operation]:
  if counts is None:
    return []
  return [counts.skipped.scatter_nd_add([[reason]], [tf.cast(n, tf.int64)])]


def read_tfrecord_file(path: tf.Tensor,
                       counts: Optional[preprocessors.SkipCounters] = None) -> tf.data.Dataset:
  """img2dataset `--output_format tfrecord` shard -> records.

  A read error ends the file (tf.data moves on to the next file), so the bytes of the records read
  are compared with the file size to tell a damaged file from a complete one. Records whose
  `tf.train.Example` cannot be parsed are counted as `decode_error`. The bookkeeping is small
  beside decoding the image (docs/performance.md, Measurements).
  """
  size = tf.numpy_function(_file_size, [path], tf.int64, stateful=False)
  end = tf.data.Dataset.from_tensors(tf.constant(_END_OF_FILE))
  ds = tf.data.TFRecordDataset(path, buffer_size=1 << 20)
  ds = ds.concatenate(end).ignore_errors()  # a read error skips to `end`

  def number(state, record):  # (bytes read before this record, its index)
    read, index = state
    length = tf.cast(tf.strings.length(record), tf.int64) + _TFRECORD_FRAMING
    return (read + length, index + 1), (record, read, index)

  ds = ds.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), number)

  def parse(record, read, index):
    is_end = tf.equal(record, _END_OF_FILE)
    ex = _parse_img2dataset_example(tf.where(is_end, tf.constant(b""), record))
    return ex, is_end, read, index

  ds = ds.map(parse).ignore_errors()  # unparsable records leave gaps in the index

  def gap(last, x):
    ex, is_end, read, index = x
    return index, (ex, is_end, read, index - last - 1)

  ds = ds.scan(tf.constant(-1, tf.int64), gap)

  def count_and_keep(ex, is_end, read, unparsable):
    def count():
      damaged = tf.logical_and(is_end, tf.not_equal(read, size))
      damaged = tf.cond(damaged, lambda: tf.numpy_function(
          _log_damaged_tfrecord, [path, read, size], tf.bool, stateful=True),
                        lambda: tf.constant(False))
      ops = (_count(counts, preprocessors.DECODE_ERROR, unparsable)
             + _count(counts, preprocessors.DAMAGED_FILE, tf.cast(damaged, tf.int64)))
      with tf.control_dependencies(ops):
        return tf.logical_not(is_end)
    return tf.cond(tf.logical_or(is_end, unparsable > 0), count, lambda: tf.constant(True))

  return ds.filter(count_and_keep).map(lambda ex, *_: ex)


def _split_member(name: str) -> Tuple[str, str]:
  base = name.rsplit("/", 1)
  stem = base[-1]
  if "." not in stem:
    return name, ""
  key, ext = stem.split(".", 1)
  prefix = base[0] + "/" if len(base) == 2 else ""
  return prefix + key, ext.lower()


def _tar_damage(f, tar: tarfile.TarFile, size: int) -> Optional[str]:
  """Why a tar whose member iteration ended is damaged, or None if it ended at its end marker.

  tarfile ends the iteration silently at a truncated or corrupt header; a complete archive has a
  zero block there.
  """
  f.seek(tar.offset)
  block = f.read(tarfile.BLOCKSIZE)
  if block == tarfile.NUL * tarfile.BLOCKSIZE:
    return None
  if len(block) < tarfile.BLOCKSIZE:
    return f"it ends at byte {size} without the end-of-archive block"
  return f"unreadable header at byte {tar.offset}"


def tar_index(path: bytes):
  """Per sample of a webdataset tar: (offset, size) of the image and caption (-1 absent).

  Reads only the 512-byte headers (tarfile seeks over the data). A damaged tar keeps the samples
  indexed before the damage (an incomplete last sample, one missing its image or caption, is part
  of the damage) and returns damaged=True, once per file, after logging the path.

  Returns:
    (keys, ranges [samples, 4], damaged)
  """
  path = path.decode() if isinstance(path, bytes) else str(path)
  samples = {}
  order = []
  damage = None
  with tf.io.gfile.GFile(path, "rb") as f:
    size = f.size()
    try:
      if size:
        with tarfile.open(fileobj=f, mode="r:") as tar:
          for m in tar:
            if m.offset_data + m.size > size:
              damage = f"member {m.name} is cut off at byte {size}"
              break
            if not m.isfile():
              continue
            key, ext = _split_member(m.name)
            if key not in samples:
              samples[key] = [-1, -1, -1, -1]
              order.append(key)
            if ext in IMAGE_EXTENSIONS:
              samples[key][0:2] = [m.offset_data, m.size]
            elif ext == "txt":
              samples[key][2:4] = [m.offset_data, m.size]
          else:
            damage = _tar_damage(f, tar, size)
    except (tarfile.TarError, OSError, EOFError) as e:
      damage = str(e)
  if damage is not None:
    if order and -1 in samples[order[-1]][0::2]:
      order.pop()  # the sample the damage cut short
    logging.warning("Webdataset shard %s is damaged (%s): %d samples read before the damage, the "
                    "rest is skipped (counted once as input/skipped/damaged_file)", path, damage,
                    len(order))
  keys = np.array([k.encode() for k in order], dtype=object)
  ranges = np.array([samples[k] for k in order], dtype=np.int64).reshape(-1, 4)
  return keys, ranges, np.bool_(damage is not None)


def _read_ranges(path: bytes, ranges: np.ndarray):
  path = path.decode()
  out = []
  opener = open if "://" not in path else (lambda p, m: tf.io.gfile.GFile(p, m))
  with opener(path, "rb") as f:
    for i in range(0, len(ranges), 2):
      offset, size = int(ranges[i]), int(ranges[i + 1])
      if offset < 0 or size <= 0:
        out.append(b"")
        continue
      f.seek(offset)
      out.append(f.read(size))
  return tuple(np.array(b, dtype=object) for b in out)


def read_webdataset_file(path: tf.Tensor,
                         counts: Optional[preprocessors.SkipCounters] = None) -> tf.data.Dataset:
  """img2dataset `--output_format webdataset` tar shard -> records (KEY.jpg/png/webp + KEY.txt)."""
  _, ranges, damaged = tf.numpy_function(tar_index, [path], [tf.string, tf.int64, tf.bool],
                                         stateful=False)
  ds = tf.data.Dataset.from_tensor_slices(tf.reshape(ranges, [-1, 4]))

  def read(r):
    image, text = tf.numpy_function(_read_ranges, [path, r], [tf.string, tf.string],
                                    stateful=False)
    image.set_shape([])
    text.set_shape([])
    return {"image": image, "text": text}

  def count_damage(_):
    with tf.control_dependencies(_count(counts, preprocessors.DAMAGED_FILE,
                                        tf.cast(damaged, tf.int64))):
      return tf.constant(False)

  # After the file's records, one placeholder that counts the damage and is dropped.
  trailer = tf.data.Dataset.from_tensors(tf.constant([-1, -1, -1, -1], tf.int64))
  return ds.map(read).concatenate(trailer.filter(count_damage).map(read))


READERS = {"tfrecord": read_tfrecord_file, "webdataset": read_webdataset_file}
