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

gin: gin_configs/tasks.gin binds each configurable below to a macro, read when a dataset is
built (so bindings may come after `import tasks`); runs/pretrain.gin and runs/eval.gin include it:
    TRAIN_DATA_PATTERN = "/data/laion/*.tfrecord"  # glob or comma-separated globs, any FS
    TRAIN_DATA_FORMAT = "auto"           # optional: "tfrecord" / "webdataset" (default: extension)
    TFDS_DATA_DIR = "/data/tfds"         # optional: TFDS data_dir for the zero-shot tasks
    TFDS_MANUAL_DIR = "/data/imagenet"   # optional: ImageNet archives to prepare on first use
    ZEROSHOT_FOLDER = "/data/my_classes" # root of flip_folder_zeroshot
    ZEROSHOT_CLASS_NAMES = "/data/names.txt"  # optional: class names for the folder/TFDS tasks
    ZEROSHOT_TFDS_NAME = "cifar10"       # flip_tfds_zeroshot's data set (+ ZEROSHOT_TFDS_SPLIT)
The model file binds the text vocabulary (VOCAB_FILE) and the zero-shot templates
(ZEROSHOT_TEMPLATES) the same way (gin_configs/models/flip_base.gin).
The configurables can also be bound directly, e.g.
`tasks.train_data_pattern.pattern = "..."`, `tasks.zeroshot_folder.root = "..."`,
`flip_t5x.data.vocabulary.wordpiece_vocab_file.path = "..."`; tuning knobs:
`flip_t5x.data.sources.record_shuffle_buffer_size.size`, `flip_t5x.data.preprocessors.max_image_pixels.limit`,
`flip_t5x.data.preprocessors.train_augmentation.*`,
`flip_t5x.data.preprocessors.eval_crop.eval_pad` (every evaluation task; 0, the official setting).
"""
from __future__ import annotations

from typing import Optional

import gin
import seqio
import tensorflow as tf

from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.data import sources
from flip_t5x.data import vocabulary as vocabulary_lib


@gin.configurable(module="tasks")
def train_data_pattern(pattern: Optional[str] = None) -> str:
  """Glob(s) of the training shards (gin: TRAIN_DATA_PATTERN)."""
  if not pattern:
    raise ValueError(
        "No training data pattern: set TRAIN_DATA_PATTERN = \"/path/to/shards/*.tfrecord\" in gin "
        f"(got {pattern!r}).")
  return pattern


@gin.configurable(module="tasks")
def train_data_format(fmt: str = "auto") -> str:
  """'auto' (by extension), 'tfrecord' or 'webdataset' (gin: TRAIN_DATA_FORMAT)."""
  return fmt


@gin.configurable(module="tasks")
def tfds_data_dir(path: Optional[str] = None) -> Optional[str]:
  """TFDS data_dir for the zero-shot tasks (gin: TFDS_DATA_DIR); None: TFDS' default."""
  return path


@gin.configurable(module="tasks")
def tfds_manual_dir(path: Optional[str] = None) -> Optional[str]:
  """TFDS manual_dir, e.g. ImageNet's tars (gin: TFDS_MANUAL_DIR)."""
  return path


@gin.configurable(module="tasks")
def zeroshot_folder(root: Optional[str] = None, class_names_file: Optional[str] = None) -> tuple:
  """(root, class_names_file) of flip_folder_zeroshot (gin: ZEROSHOT_FOLDER, _CLASS_NAMES)."""
  if not root:
    raise ValueError("flip_folder_zeroshot needs ZEROSHOT_FOLDER = \"/path/root\" in gin "
                     "(images in root/CLASS_NAME/*.jpg).")
  return root, class_names_file


@gin.configurable(module="tasks")
def zeroshot_tfds(name: Optional[str] = None, split: str = "test",
                  class_names_file: Optional[str] = None) -> tuple:
  """(name, split, class_names_file) of flip_tfds_zeroshot (gin: ZEROSHOT_TFDS_NAME, _SPLIT)."""
  if not name:
    raise ValueError("flip_tfds_zeroshot needs ZEROSHOT_TFDS_NAME = \"cifar10\" (a TFDS name).")
  return name, split, class_names_file


def output_features() -> dict:
  """FLIP task features; the vocabulary resolves VOCAB_FILE lazily."""
  return {
      "image": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(1), dtype=tf.float32, rank=3,
                             add_eos=False, required=True),
      "targets": seqio.Feature(vocabulary=vocabulary_lib.WordPieceVocabulary(), dtype=tf.int32,
                               rank=1, add_eos=False, required=True),
  }


def _tfds_class_names(builder) -> list:
  file = zeroshot_tfds()[2]
  if file:
    return prompts.read_lines(file)
  return list(builder.info.features["label"].names)


def register_image_text_task(name: str) -> seqio.Task:
  """An img2dataset image-text training task reading TRAIN_DATA_PATTERN."""
  return seqio.TaskRegistry.add(
      name,
      source=sources.Img2DatasetSource(train_data_pattern, train_data_format, splits=("train",)),
      output_features=output_features(),
      preprocessors=[preprocessors.train_preprocessor],
      shuffle_buffer_size=None)


def register_zeroshot_task(name: str, source: seqio.DataSource) -> seqio.Task:
  """A zero-shot task: eval-preprocessed `image`, class-name `targets`, `label`."""
  return seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(),
      preprocessors=[preprocessors.eval_preprocessor], shuffle_buffer_size=256)


TRAIN_TASKS = ("flip_laion400m", "flip_laion2b_en", "flip_img2dataset")
for _name in TRAIN_TASKS:
  if _name not in seqio.TaskRegistry.names():
    register_image_text_task(_name)

if "flip_imagenet1k_zeroshot" not in seqio.TaskRegistry.names():
  register_zeroshot_task("flip_imagenet1k_zeroshot", sources.TfdsSource(
      name_fn=lambda: "imagenet2012", split_map={"validation": "validation", "test": "validation"},
      class_names_fn=lambda builder: prompts.imagenet_class_names(),
      data_dir_fn=tfds_data_dir, manual_dir_fn=tfds_manual_dir))

if "flip_folder_zeroshot" not in seqio.TaskRegistry.names():
  register_zeroshot_task("flip_folder_zeroshot", sources.FolderSource(
      root_fn=lambda: zeroshot_folder()[0], class_names_file_fn=lambda: zeroshot_folder()[1]))

if "flip_tfds_zeroshot" not in seqio.TaskRegistry.names():
  register_zeroshot_task("flip_tfds_zeroshot", sources.TfdsSource(
      name_fn=lambda: zeroshot_tfds()[0],
      split_map={"validation": lambda: zeroshot_tfds()[1], "test": lambda: zeroshot_tfds()[1]},
      class_names_fn=_tfds_class_names, data_dir_fn=tfds_data_dir, manual_dir_fn=tfds_manual_dir))


def zeroshot_class_names(task_name: str) -> list:
  """Class names (label order) of a registered zero-shot task, for building the classifier."""
  class_names = getattr(seqio.get_mixture_or_task(task_name).source, "class_names", None)
  if not callable(class_names):
    raise ValueError(f"{task_name} is not a zero-shot task.")
  return list(class_names())
