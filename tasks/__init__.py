"""seqio tasks for FLIP, registered on import (gin files say `import tasks`).

Tasks
- `flip_laion400m`, `flip_laion2b_en`, `flip_img2dataset`: image-text training on img2dataset output
  (TFRecord shards with `jpg`/`txt`/`key`/..., or webdataset tars of KEY.jpg/KEY.txt/KEY.json);
  split `train`. They differ only in name (any img2dataset output works with `flip_img2dataset`:
  CC12M, DataComp, your own captions).
- `flip_imagenet1k_zeroshot`: TFDS `imagenet2012` validation (splits `validation` and `test` both
  read it), labels 0..999, `targets` = the CLIP class name's WordPiece ids.
- `flip_folder_zeroshot`: any image tree `root/CLASS_NAME/*.jpg` (splits `validation`, `test`).
- `flip_tfds_zeroshot`: any TFDS image classification data set.
Features: `image` float32 [S, S, 3], `targets` int32 [<= L]; zero-shot tasks add `label` int32 (a
passthrough feature: pass `passthrough_features={"label": ...}` to the feature converter and list
`"label": 1` in TASK_FEATURE_LENGTHS to keep it). S and L are TASK_FEATURE_LENGTHS' `image` and
`targets`.

Configuration: everything the tasks read is one gin-configurable `TaskConfig`, resolved by
`config()` when a dataset is built (so bindings may come after `import tasks`) and handed to
`flip_t5x.data` as plain values. gin_configs/tasks.gin binds its data macros to it
(runs/pretrain.gin and runs/eval.gin include it), the model file (gin_configs/models/flip_base.gin)
the text vocabulary and the zero-shot templates:
    TRAIN_DATA_PATTERN = "/data/laion/*.tfrecord"  # glob or comma-separated globs, any FS
    TRAIN_DATA_FORMAT = "auto"           # optional: "tfrecord" / "webdataset" (default: extension)
    TFDS_DATA_DIR = "/data/tfds"         # optional: TFDS data_dir for the zero-shot tasks
    TFDS_MANUAL_DIR = "/data/imagenet"   # optional: ImageNet archives to prepare on first use
    ZEROSHOT_FOLDER = "/data/my_classes" # root of flip_folder_zeroshot
    ZEROSHOT_CLASS_NAMES = "/data/names.txt"  # optional: class names for the folder/TFDS tasks
    ZEROSHOT_TFDS_NAME = "cifar10"       # flip_tfds_zeroshot's data set (+ ZEROSHOT_TFDS_SPLIT)
    VOCAB_FILE, ZEROSHOT_TEMPLATES       # the model file's
The tuning knobs have the official defaults, e.g. `tasks.TaskConfig.record_shuffle_buffer_size`,
`.max_image_pixels`, `.crop_x_step` (and the other `images.TrainAugmentation` fields) and
`.eval_pad` (every evaluation task; 0, the official setting).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, List, Optional, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from flip_t5x.data import images
from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.data import sources
from flip_t5x.data import vocabulary as vocabulary_lib


@gin.configurable(module="tasks")
@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """What FLIP's tasks read, as gin binds it (`config()`); None paths are unset."""

  # Where the data is (gin_configs/tasks.gin's macros).
  train_data_pattern: Optional[str] = None  # TRAIN_DATA_PATTERN
  train_data_format: str = "auto"  # TRAIN_DATA_FORMAT: 'auto' (by extension), 'tfrecord', ...
  tfds_data_dir: Optional[str] = None  # TFDS_DATA_DIR; None: TFDS' default
  tfds_manual_dir: Optional[str] = None  # TFDS_MANUAL_DIR, e.g. ImageNet's archives
  zeroshot_folder: Optional[str] = None  # ZEROSHOT_FOLDER: root of flip_folder_zeroshot
  zeroshot_class_names: Optional[str] = None  # ZEROSHOT_CLASS_NAMES (folder and TFDS tasks)
  zeroshot_tfds_name: Optional[str] = None  # ZEROSHOT_TFDS_NAME: flip_tfds_zeroshot's data set
  zeroshot_tfds_split: str = "test"  # ZEROSHOT_TFDS_SPLIT
  retrieval_data_pattern: Optional[str] = None  # RETRIEVAL_DATA_PATTERN (tasks.zeroshot_seqio)
  # The model's text inputs (models/flip_base.gin's macros).
  vocab_file: Optional[str] = None  # VOCAB_FILE; None: FLIP's vocabulary, shipped
  zeroshot_templates: str = prompts.DEFAULT_TEMPLATE_SET  # ZEROSHOT_TEMPLATES: '7', '80', a file
  # Reading the training shards (`sources.ReadOptions`).
  shuffle_files: bool = sources.ReadOptions.shuffle_files
  interleave_cycle_length: int = sources.ReadOptions.interleave_cycle_length
  record_shuffle_buffer_size: int = sources.ReadOptions.record_shuffle_buffer_size
  # Decoding and crops (`preprocessors.image_text_preprocessor`, `images.TrainAugmentation`).
  max_image_pixels: int = preprocessors.MAX_IMAGE_PIXELS
  area_range: Tuple[float, float] = images.TrainAugmentation.area_range
  aspect_ratio_range: Tuple[float, float] = images.TrainAugmentation.aspect_ratio_range
  flip: bool = images.TrainAugmentation.flip
  resize_method: str = images.TrainAugmentation.resize_method
  crop_x_step: int = images.TrainAugmentation.crop_x_step
  eval_pad: int = 0  # the official eval crop's pad (`preprocessors.eval_image`)

  def vocabulary(self) -> vocabulary_lib.WordPieceVocabulary:
    """The text vocabulary; an empty VOCAB_FILE is a mistake, not FLIP's default."""
    if self.vocab_file is not None and not self.vocab_file:
      raise ValueError(
          "VOCAB_FILE is empty: leave it unset for FLIP's BERT uncased vocabulary, or set "
          "VOCAB_FILE = \"/path/vocab.txt\" (e.g. built with `python -m flip_t5x.build_vocab`).")
    return vocabulary_lib.WordPieceVocabulary(self.vocab_file)

  def read_options(self) -> sources.ReadOptions:
    return sources.ReadOptions(self.shuffle_files, self.interleave_cycle_length,
                               self.record_shuffle_buffer_size)

  def augmentation(self) -> images.TrainAugmentation:
    return images.TrainAugmentation(self.area_range, self.aspect_ratio_range, self.flip,
                                    self.resize_method, self.crop_x_step)


def config() -> TaskConfig:
  """The task configuration as gin binds it now (called when a dataset is built)."""
  return TaskConfig()


def _required(value: Optional[str], message: str) -> str:
  if not value:
    raise ValueError(message)
  return value


# ------------------------------------------------------------------------------------------------
# What the registered tasks hold: built at import, reading `config()` when used.
class TaskVocabulary(vocabulary_lib.WordPieceVocabulary):
  """The WordPiece vocabulary of the bound VOCAB_FILE, read when it is used."""

  @property
  def vocab_file(self) -> str:
    return config().vocabulary().vocab_file


class ConfiguredSource(seqio.DataSource):
  """A `flip_t5x.data.sources` source that `build` makes from `config()` whenever seqio reads it.

  Tasks register at import, before gin parses the files that say where their data is; this source
  builds the real one from the values bound when a dataset is built (and `build` names the macro a
  missing value needs).
  """

  def __init__(self, build: Callable[[TaskConfig], seqio.DataSource], splits: Sequence[str], *,
               performs_internal_shuffling: bool = False, arbitrary_sharding: bool = True):
    self._build = build
    self._arbitrary_sharding = arbitrary_sharding
    super().__init__(splits=splits, caching_permitted=False,
                     performs_internal_shuffling=performs_internal_shuffling)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self._arbitrary_sharding

  def source(self) -> seqio.DataSource:
    return self._build(config())

  def list_shards(self, split: str) -> Sequence[str]:
    return self.source().list_shards(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    return self.source().get_dataset(split, shuffle, seed, shard_info,
                                     sequence_length=sequence_length, use_cached=use_cached,
                                     num_epochs=num_epochs)


class ZeroShotSource(ConfiguredSource):
  """A labelled image source that also names its classes and prompt templates."""

  def class_names(self) -> List[str]:
    """Label-ordered class names (the zero-shot classifier's rows)."""
    return list(self.source().class_names())

  def templates(self) -> List[str]:
    """The prompt templates of the bound set (ZEROSHOT_TEMPLATES)."""
    return prompts.templates(config().zeroshot_templates)


def preprocess(dataset: tf.data.Dataset, sequence_length=None, output_features=None, *,
               train: bool) -> tf.data.Dataset:
  """`preprocessors.image_text_preprocessor` with the bound decoding and crop settings."""
  c = config()
  return preprocessors.image_text_preprocessor(
      dataset, sequence_length, output_features, train=train,
      counter="train" if train else "eval", max_image_pixels=c.max_image_pixels,
      augmentation=c.augmentation(), eval_pad=c.eval_pad)


def output_features() -> dict:
  """FLIP task features; the vocabulary follows VOCAB_FILE."""
  return {
      "image": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(1), dtype=tf.float32, rank=3,
                             add_eos=False, required=True),
      "targets": seqio.Feature(vocabulary=TaskVocabulary(), dtype=tf.int32, rank=1,
                               add_eos=False, required=True),
  }


def image_text_source(c: TaskConfig) -> sources.Img2DatasetSource:
  pattern = _required(c.train_data_pattern,
                      "No training data pattern: set TRAIN_DATA_PATTERN = "
                      f"\"/path/to/shards/*.tfrecord\" in gin (got {c.train_data_pattern!r}).")
  return sources.Img2DatasetSource(pattern, c.train_data_format, splits=("train",),
                                   read=c.read_options())


def imagenet_source(c: TaskConfig) -> sources.TfdsSource:
  return sources.TfdsSource("imagenet2012", {"validation": "validation", "test": "validation"},
                            prompts.imagenet_class_names(), c.tfds_data_dir, c.tfds_manual_dir)


def folder_source(c: TaskConfig) -> sources.FolderSource:
  root = _required(c.zeroshot_folder, "flip_folder_zeroshot needs ZEROSHOT_FOLDER = "
                   "\"/path/root\" in gin (images in root/CLASS_NAME/*.jpg).")
  return sources.FolderSource(root, c.zeroshot_class_names)


def tfds_source(c: TaskConfig) -> sources.TfdsSource:
  name = _required(c.zeroshot_tfds_name,
                   "flip_tfds_zeroshot needs ZEROSHOT_TFDS_NAME = \"cifar10\" (a TFDS name).")
  class_names = (prompts.read_lines(c.zeroshot_class_names) if c.zeroshot_class_names
                 else None)
  split = c.zeroshot_tfds_split
  return sources.TfdsSource(name, {"validation": split, "test": split}, class_names,
                            c.tfds_data_dir, c.tfds_manual_dir)


def register_image_text_task(name: str) -> seqio.Task:
  """An img2dataset image-text training task reading TRAIN_DATA_PATTERN."""
  return seqio.TaskRegistry.add(
      name,
      source=ConfiguredSource(image_text_source, ("train",), performs_internal_shuffling=True,
                              arbitrary_sharding=False),
      output_features=output_features(),
      preprocessors=[functools.partial(preprocess, train=True)],
      shuffle_buffer_size=None)


def register_zeroshot_task(name: str, build: Callable[[TaskConfig], seqio.DataSource]
                           ) -> seqio.Task:
  """A zero-shot task: eval-preprocessed `image`, class-name `targets`, `label`."""
  return seqio.TaskRegistry.add(
      name, source=ZeroShotSource(build, ("validation", "test")),
      output_features=output_features(),
      preprocessors=[functools.partial(preprocess, train=False)], shuffle_buffer_size=256)


TRAIN_TASKS = ("flip_laion400m", "flip_laion2b_en", "flip_img2dataset")
for _name in TRAIN_TASKS:
  if _name not in seqio.TaskRegistry.names():
    register_image_text_task(_name)

for _name, _build in (("flip_imagenet1k_zeroshot", imagenet_source),
                      ("flip_folder_zeroshot", folder_source),
                      ("flip_tfds_zeroshot", tfds_source)):
  if _name not in seqio.TaskRegistry.names():
    register_zeroshot_task(_name, _build)


def zeroshot_class_names(task_name: str) -> list:
  """Class names (label order) of a registered zero-shot task, for building the classifier."""
  class_names = getattr(seqio.get_mixture_or_task(task_name).source, "class_names", None)
  if not callable(class_names):
    raise ValueError(f"{task_name} is not a zero-shot task.")
  return list(class_names())
