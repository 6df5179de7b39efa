"""Zero-shot prompts: class names, prompt templates and their tokenisation.

The CLIP ImageNet-1K class names (index = TFDS `imagenet2012` label) and the two template sets
(80 prompts, and the 7 FLIP evaluates with by default) ship as files in `flip_t5x/data/assets`.
A template set is named "7", "80" or by a file path; gin chooses it with the model file's macro

    ZEROSHOT_TEMPLATES = "80"   # "7" (default), "80", or a file path

(`tasks.TaskConfig.zeroshot_templates`). Evaluators build class embeddings from
`prompt_token_ids(class_names, templates(name), vocab, L)`: for each class, every template filled
with the class name.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from flip_t5x.data import vocabulary as vocabulary_lib

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
IMAGENET_CLASSNAMES_FILE = os.path.join(ASSETS_DIR, "imagenet1k_clip_classnames.txt")
TEMPLATE_FILES = {
    "80": os.path.join(ASSETS_DIR, "imagenet1k_templates_80.txt"),
    "7": os.path.join(ASSETS_DIR, "imagenet1k_templates_7.txt"),
}
DEFAULT_TEMPLATE_SET = "7"  # FLIP's


def read_lines(path: str) -> List[str]:
  """Non-empty, right-stripped lines of a text file (any tf.io.gfile filesystem)."""
  with tf.io.gfile.GFile(path, "r") as f:
    return [line.rstrip("\r\n") for line in f if line.strip()]


def imagenet_class_names() -> List[str]:
  """The 1,000 CLIP ImageNet-1K class names in label order."""
  return read_lines(IMAGENET_CLASSNAMES_FILE)


def templates(name: str = DEFAULT_TEMPLATE_SET) -> List[str]:
  """Prompt templates ('{}' = class name) of set `name` ("7", "80" or a file path)."""
  name = str(name)
  path = TEMPLATE_FILES.get(name, name)
  if not tf.io.gfile.exists(path):
    raise ValueError(f"Unknown template set {name!r}: use one of {sorted(TEMPLATE_FILES)} or a "
                     "file with one template per line ('{}' = class name).")
  result = read_lines(path)
  bad = [t for t in result if "{}" not in t]
  if bad:
    raise ValueError(f"Templates without '{{}}' in {path}: {bad[:3]}")
  return result


def folder_classes(root: str, class_names_file: Optional[str] = None
                   ) -> Tuple[List[str], List[str]]:
  """(folders in label order, class names) for an image tree `root/CLASS_NAME/*`.

  Without a file, labels follow the sorted folder names and names are the folder names with '_'
  read as a space. A class-names file either has lines `FOLDER<TAB>class name` (file order =
  label order) or one name per line for the sorted folders.
  """
  if not tf.io.gfile.isdir(root):
    raise ValueError(f"Zero-shot image folder {root!r} does not exist.")
  folders = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                   if tf.io.gfile.isdir(os.path.join(root, d.rstrip("/"))))
  if not folders:
    raise ValueError(f"No class folders under {root!r} (expected root/CLASS_NAME/*.jpg).")
  if not class_names_file:
    return folders, [f.replace("_", " ") for f in folders]
  lines = read_lines(class_names_file)
  if all("\t" in line for line in lines):
    pairs = [line.split("\t", 1) for line in lines]
    missing = sorted(set(folders) - {p[0] for p in pairs})
    if missing:
      raise ValueError(f"{class_names_file} names no class for folders {missing[:5]}.")
    return [p[0] for p in pairs], [p[1].strip() for p in pairs]
  if len(lines) != len(folders):
    raise ValueError(f"{class_names_file} has {len(lines)} names for {len(folders)} folders "
                     f"under {root!r}.")
  return folders, lines


def prompts(class_names: Sequence[str], template_list: Sequence[str]) -> List[List[str]]:
  """[num_classes][num_templates] prompt strings."""
  return [[t.format(c) for t in template_list] for c in class_names]


def prompt_token_ids(class_names: Sequence[str], template_list: Sequence[str],
                     vocab: vocabulary_lib.WordPieceVocabulary, length: int = 32) -> np.ndarray:
  """int32 [num_classes, num_templates, length] WordPiece ids of every prompt, 0-padded."""
  texts = [p for row in prompts(class_names, template_list) for p in row]
  ids = vocab.encode_tf(tf.constant(texts))
  ids = ids[:, :length].to_tensor(default_value=0, shape=[len(texts), length])
  return ids.numpy().astype(np.int32).reshape(len(class_names), len(template_list), length)
