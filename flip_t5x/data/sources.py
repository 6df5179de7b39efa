"""seqio data sources for FLIP: img2dataset shards (TFRecord / webdataset tar), image folders, TFDS.

Every source yields raw records `{"image": bytes, "text": bytes[, "label": int32]}`; the shard
files are read by `flip_t5x.data.shard_readers`, decoding and skip counting happen in
`flip_t5x.data.preprocessors`. Sources take plain values; the tasks build them when a dataset is
built (`tasks.ConfiguredSource`), from the paths gin binds by then.

The pipeline is deterministic for a given seed and its tf.data iterator is checkpointable: the
input position (iterator state and skip counters) is saved and restored with each checkpoint by
`flip_t5x.checkpoints.position`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.data import shard_readers


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How `Img2DatasetSource` reads its shards when it shuffles (the training stream).

  shuffle_files: each pass reads the host's files in a new seeded order; False reads them in
    sorted order every pass, as the official pipeline does (it relies on img2dataset shards of
    LAION being in random order already).
  interleave_cycle_length: shard files read at once per host.
  record_shuffle_buffer_size: raw (compressed) records in the per-host shuffle buffer after file
    interleaving and repeat.
  """

  shuffle_files: bool = True
  interleave_cycle_length: int = 16
  record_shuffle_buffer_size: int = 4096


class Img2DatasetSource(seqio.DataSource):
  """img2dataset output (TFRecord or webdataset tar shards) matching a pattern.

  Each host reads its own files (seqio passes `shard_info` when there are at least as many files
  as hosts; file i goes to host i % hosts). Unshuffled, the source is one pass over the files in
  sorted order (seqio repeats it for `num_epochs`). Shuffled, it is the endless training stream of
  the official input pipeline (input_pipeline_laion.py: `repeat()`, then a record shuffle buffer):

    files in a new seeded order each pass -> interleave `interleave_cycle_length` files
    -> repeat -> shuffle `record_shuffle_buffer_size` raw records (`ReadOptions`)

  so no two passes share an order and the buffer mixes the end of a pass with the start of the
  next. The stream is a function of the seed, and the tf.data iterator checkpoint restores it
  exactly, the pass count and the file shuffle's generator included (tests/test_data_epochs.py).
  Tasks using this source set `shuffle_buffer_size=None`; `num_epochs` has no effect on the
  endless shuffled stream. Damaged files are counted in the skip counters named `counter` (the
  name the task's preprocessor counts under).
  """

  def __init__(self, pattern: str | Sequence[str], fmt: str = "auto",
               splits: Iterable[str] = ("train",), counter: str = "train",
               read: ReadOptions = ReadOptions()):
    self._pattern = pattern
    self._format = fmt
    self._counter = counter
    self._read = read
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=False,
                     performs_internal_shuffling=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return shard_readers.expand_data_pattern(self._pattern)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    files = self.list_shards(split)
    fmt = shard_readers.detect_format(files, self._format)
    reader = functools.partial(shard_readers.READERS[fmt],
                               counts=preprocessors.counters(self._counter))
    if shard_info and shard_info.num_shards > 1:
      if len(files) < shard_info.num_shards:
        raise ValueError(f"{len(files)} files cannot be split over {shard_info.num_shards} hosts.")
      files = files[shard_info.index::shard_info.num_shards]
    ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if shuffle and self._read.shuffle_files:
      # A new file order each time `repeat` starts a pass; the iterator checkpoint keeps the
      # shuffle's generator state, so a restored stream continues with the same orders.
      ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(reader, cycle_length=min(self._read.interleave_cycle_length, len(files)),
                       block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
      # tf.data's repeat ends the stream on an empty pass instead of looping on it.
      ds = ds.repeat().shuffle(self._read.record_shuffle_buffer_size, seed=seed)
    return ds


def list_image_folder(root: str, class_names_file: Optional[str] = None
                      ) -> Tuple[List[str], List[int], List[str]]:
  """(files, labels, class_names) for a `root/CLASS/*.jpg` tree; see `prompts.folder_classes`."""
  folders, class_names = prompts.folder_classes(root, class_names_file)
  files, labels = [], []
  for label, folder in enumerate(folders):
    for name in sorted(tf.io.gfile.listdir(os.path.join(root, folder))):
      if name.rsplit(".", 1)[-1].lower() in shard_readers.IMAGE_EXTENSIONS:
        files.append(os.path.join(root, folder, name))
        labels.append(label)
  if not files:
    raise ValueError(f"No images ({', '.join(shard_readers.IMAGE_EXTENSIONS)}) under "
                     f"{root!r}/CLASS_NAME/.")
  return files, labels, class_names


class FolderSource(seqio.DataSource):
  """Labelled images in `root/CLASS_NAME/*.{jpg,png,...}`; `text` is the class name."""

  def __init__(self, root: str, class_names_file: Optional[str] = None,
               splits: Iterable[str] = ("validation", "test")):
    self._root = root
    self._class_names_file = class_names_file
    super().__init__(splits=splits, caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return list_image_folder(self._root, self._class_names_file)[0]

  def class_names(self) -> List[str]:
    """Label-ordered class names (the zero-shot classifier's rows)."""
    return prompts.folder_classes(self._root, self._class_names_file)[1]

  def get_dataset(self, split: str = "validation", shuffle: bool = False,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    files, labels, names = list_image_folder(self._root, self._class_names_file)
    ds = tf.data.Dataset.from_tensor_slices(
        (np.array(files, dtype=str), np.array(labels, np.int32),
         np.array([names[l] for l in labels], dtype=str)))
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed)
    def read(f, l, n):
      data = tf.py_function(_read_or_empty, [f], tf.string)
      return {"image": tf.ensure_shape(data, []), "text": n, "label": l}
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def _read_or_empty(path: tf.Tensor) -> bytes:
  """A file's bytes, or b"" when it cannot be read (vanished, a dangling link, no permission).

  Empty bytes reach the preprocessor, which counts them (`empty_image`) instead of the record
  vanishing uncounted; the warning names the file.
  """
  name = path.numpy().decode("utf-8", "replace")
  try:
    with tf.io.gfile.GFile(name, "rb") as f:
      return f.read()
  except (OSError, tf.errors.OpError) as e:
    logging.warning("skipping unreadable image %s: %s", name, e)
    return b""


class TfdsSource(seqio.DataSource):
  """A TFDS image classification split read with undecoded image bytes; `text` is the class name.

  `split_map`: this source's splits -> TFDS split names. `class_names`: label-ordered names (None:
  the data set's own `label` names). `data_dir` / `manual_dir` follow TFDS: the prepared data lives
  in `data_dir`; for data TFDS cannot download (ImageNet), the archives in `manual_dir` are
  prepared on first use.
  """

  def __init__(self, name: str, split_map: Mapping[str, str],
               class_names: Optional[Sequence[str]] = None, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None, image_key: str = "image",
               label_key: str = "label"):
    self._name = name
    self._split_map = dict(split_map)
    self._class_names = None if class_names is None else list(class_names)
    self._data_dir = data_dir
    self._manual_dir = manual_dir
    self._image_key = image_key
    self._label_key = label_key
    super().__init__(splits=list(split_map), caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [self._split_map[split]]

  def builder(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(self._name, data_dir=self._data_dir)
    if self._manual_dir:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=self._manual_dir))
    return builder

  def _names(self, builder) -> List[str]:
    if self._class_names is not None:
      return self._class_names
    return list(builder.info.features[self._label_key].names)

  def class_names(self) -> List[str]:
    """Label-ordered class names (the zero-shot classifier's rows)."""
    return self._names(self.builder())

  def get_dataset(self, split: str = "validation", shuffle: bool = False,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = self.builder()
    tfds_split = self._split_map[split]
    if shard_info and shard_info.num_shards > 1:
      tfds_split = tfds.even_splits(tfds_split, n=shard_info.num_shards)[shard_info.index]
    names = tf.constant(self._names(builder))
    ds = builder.as_dataset(
        split=tfds_split, shuffle_files=shuffle,
        decoders={self._image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed))
    image_key, label_key = self._image_key, self._label_key

    def convert(ex):
      label = tf.cast(ex[label_key], tf.int32)
      return {"image": ex[image_key], "text": tf.gather(names, label), "label": label}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
