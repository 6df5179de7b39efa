"""seqio data sources for FLIP: img2dataset shards (TFRecord / webdataset tar), image folders, TFDS.

Every source yields raw records `{"image": bytes, "text": bytes[, "label": int32]}`; decoding and
skip counting happen in `flip_t5x.data.preprocessors`. Paths, patterns and TFDS names are passed as
zero-argument callables and read when a dataset is built, so tasks registered at import time pick
up gin bindings parsed later.

The pipeline is deterministic for a given seed and its tf.data iterator is checkpointable: the
input position (iterator state and skip counters) is saved and restored with each checkpoint by
`flip_t5x.checkpoints.position`.
"""
from __future__ import annotations

import functools
import os
import tarfile
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import gin
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.data import preprocessors
from flip_t5x.data import zeroshot

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfrec")
TAR_EXTENSIONS = (".tar",)


@gin.configurable(module="flip_t5x.data.sources")
def record_shuffle_buffer_size(size: int = 4096) -> int:
  """Raw (compressed) records in the per-host shuffle buffer after file interleaving and repeat."""
  return int(size)


@gin.configurable(module="flip_t5x.data.sources")
def interleave_cycle_length(length: int = 16) -> int:
  """Shard files read at once per host."""
  return int(length)


@gin.configurable(module="flip_t5x.data.sources")
def shuffle_files(enabled: bool = True) -> bool:
  """Whether each pass reads the host's files in a new seeded order.

  False reads them in sorted order every pass, as the official pipeline does (it relies on
  img2dataset shards of LAION being in random order already).
  """
  return bool(enabled)


# ------------------------------------------------------------------------------------------------
# Patterns.
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
                       "(tasks.train_data_format.fmt = 'tfrecord' or 'webdataset').")
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

  tf.cond passes the chosen string through; tf.where would copy the image bytes (~0.05 ms a
  record, measured by scripts/bench_input.py).
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
  `tf.train.Example` cannot be parsed are counted as `decode_error`. The bookkeeping costs ~0.1 ms
  a record over a bare read (two files read in parallel: ~4,500 against ~7,800 records/s on a
  shared 2-core machine), small beside decoding the image.
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


# ------------------------------------------------------------------------------------------------
# Sources.
class Img2DatasetSource(seqio.DataSource):
  """img2dataset output (TFRecord or webdataset tar shards) matching a lazily read pattern.

  Each host reads its own files (seqio passes `shard_info` when there are at least as many files
  as hosts; file i goes to host i % hosts). Unshuffled, the source is one pass over the files in
  sorted order (seqio repeats it for `num_epochs`). Shuffled, it is the endless training stream of
  the official input pipeline (input_pipeline_laion.py: `repeat()`, then a record shuffle buffer):

    files in a new seeded order each pass -> interleave `interleave_cycle_length()` files
    -> repeat -> shuffle `record_shuffle_buffer_size()` raw records

  so no two passes share an order and the buffer mixes the end of a pass with the start of the
  next. The stream is a function of the seed, and the tf.data iterator checkpoint restores it
  exactly, the pass count and the file shuffle's generator included (tests/test_data_epochs.py).
  Tasks using this source set `shuffle_buffer_size=None`; `num_epochs` has no effect on the
  endless shuffled stream. Damaged files are counted in the skip counters named `counter` (the
  name the task's preprocessor counts under).
  """

  def __init__(self, pattern_fn: Callable[[], str | Sequence[str]],
               format_fn: Callable[[], str] = lambda: "auto",
               splits: Iterable[str] = ("train",), counter: str = "train"):
    self._pattern_fn = pattern_fn
    self._format_fn = format_fn
    self._counter = counter
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=False,
                     performs_internal_shuffling=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return expand_data_pattern(self._pattern_fn())

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    files = self.list_shards(split)
    reader = functools.partial(READERS[detect_format(files, self._format_fn())],
                               counts=preprocessors.counters(self._counter))
    if shard_info and shard_info.num_shards > 1:
      if len(files) < shard_info.num_shards:
        raise ValueError(f"{len(files)} files cannot be split over {shard_info.num_shards} hosts.")
      files = files[shard_info.index::shard_info.num_shards]
    ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if shuffle and shuffle_files():
      # A new file order each time `repeat` starts a pass; the iterator checkpoint keeps the
      # shuffle's generator state, so a restored stream continues with the same orders.
      ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(reader, cycle_length=min(interleave_cycle_length(), len(files)),
                       block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
      # tf.data's repeat ends the stream on an empty pass instead of looping on it.
      ds = ds.repeat().shuffle(record_shuffle_buffer_size(), seed=seed)
    return ds


def list_image_folder(root: str, class_names_file: Optional[str] = None
                      ) -> Tuple[List[str], List[int], List[str]]:
  """(files, labels, class_names) for a `root/CLASS/*.jpg` tree; see `zeroshot.folder_classes`."""
  folders, class_names = zeroshot.folder_classes(root, class_names_file)
  files, labels = [], []
  for label, folder in enumerate(folders):
    for name in sorted(tf.io.gfile.listdir(os.path.join(root, folder))):
      if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
        files.append(os.path.join(root, folder, name))
        labels.append(label)
  if not files:
    raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}/CLASS_NAME/.")
  return files, labels, class_names


class FolderSource(seqio.DataSource):
  """Labelled images in `root/CLASS_NAME/*.{jpg,png,...}`; `text` is the class name."""

  def __init__(self, root_fn: Callable[[], str],
               class_names_file_fn: Callable[[], Optional[str]] = lambda: None,
               splits: Iterable[str] = ("validation", "test")):
    self._root_fn = root_fn
    self._class_names_file_fn = class_names_file_fn
    super().__init__(splits=splits, caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return list_image_folder(self._root_fn(), self._class_names_file_fn())[0]

  def get_dataset(self, split: str = "validation", shuffle: bool = False,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    files, labels, names = list_image_folder(self._root_fn(), self._class_names_file_fn())
    ds = tf.data.Dataset.from_tensor_slices(
        (np.array(files, dtype=str), np.array(labels, np.int32),
         np.array([names[l] for l in labels], dtype=str)))
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed)
    return ds.map(lambda f, l, n: {"image": tf.io.read_file(f), "text": n, "label": l},
                  num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)


class TfdsSource(seqio.DataSource):
  """A TFDS image classification split read with undecoded image bytes; `text` is the class name.

  `data_dir_fn` / `manual_dir_fn` follow TFDS: the prepared data lives in `data_dir`; for data
  TFDS cannot download (ImageNet), the archives in `manual_dir` are prepared on first use.
  """

  def __init__(self, name_fn: Callable[[], str],
               split_map: Mapping[str, str | Callable[[], str]],
               class_names_fn: Callable[[object], Sequence[str]],
               data_dir_fn: Callable[[], Optional[str]] = lambda: None,
               manual_dir_fn: Callable[[], Optional[str]] = lambda: None,
               image_key: str = "image", label_key: str = "label"):
    self._name_fn = name_fn
    self._split_map = dict(split_map)
    self._class_names_fn = class_names_fn
    self._data_dir_fn = data_dir_fn
    self._manual_dir_fn = manual_dir_fn
    self._image_key = image_key
    self._label_key = label_key
    super().__init__(splits=list(split_map), caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def _tfds_split(self, split: str) -> str:
    value = self._split_map[split]
    return value() if callable(value) else value

  def list_shards(self, split: str) -> Sequence[str]:
    return [self._tfds_split(split)]

  def builder(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(self._name_fn(), data_dir=self._data_dir_fn())
    manual_dir = self._manual_dir_fn()
    if manual_dir:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder

  def class_names(self) -> List[str]:
    return list(self._class_names_fn(self.builder()))

  def get_dataset(self, split: str = "validation", shuffle: bool = False,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = self.builder()
    tfds_split = self._tfds_split(split)
    if shard_info and shard_info.num_shards > 1:
      tfds_split = tfds.even_splits(tfds_split, n=shard_info.num_shards)[shard_info.index]
    names = tf.constant(list(self._class_names_fn(builder)))
    ds = builder.as_dataset(
        split=tfds_split, shuffle_files=shuffle,
        decoders={self._image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed))
    image_key, label_key = self._image_key, self._label_key

    def convert(ex):
      label = tf.cast(ex[label_key], tf.int32)
      return {"image": ex[image_key], "text": tf.gather(names, label), "label": label}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
