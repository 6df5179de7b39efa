"""Zero-shot classification (CLIP/FLIP protocol): class embeddings from prompt templates, top-k.

A class embedding is the normalised mean of its prompts' normalised text embeddings (every
template filled with the class name); an image's prediction is the class of highest cosine
similarity. `ZeroShotAccumulator` streams images and keeps only counts (top-k and per class).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Mapping, Tuple

from absl import logging
import jax
import numpy as np
import seqio

from flip_t5x import models
from flip_t5x import progress as progress_lib
from flip_t5x import xla_options as xla_options_lib
from flip_t5x.data import prompts
from flip_t5x.evaluation import EvalError
from flip_t5x.evaluation import datasets
from flip_t5x.evaluation import encoder as encoder_lib
from flip_t5x.evaluation import scoring

PyTree = Any
TextEncoder = Callable[[Sequence[str]], np.ndarray]  # prompts -> L2-normalised [N, E] embeddings


# ------------------------------------------------------------------------ class embeddings
def fill_templates(class_names: Sequence[str], templates: Sequence[str]) -> List[str]:
  """Prompts in class-major order: [c0t0, c0t1, ..., c1t0, ...]."""
  for t in templates:
    if "{}" not in t:
      raise ValueError(f"prompt template {t!r} has no '{{}}' for the class name")
  return [t.format(c) for c in class_names for t in templates]


def class_embeddings_from_prompts(prompt_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
  """[C*T, E] prompt embeddings (class-major) -> [C, E]: normalise, average, normalise again."""
  e = scoring.l2_normalize(prompt_embeddings)
  if e.shape[0] % num_classes:
    raise ValueError(f"{e.shape[0]} prompt embeddings do not split into {num_classes} classes")
  return scoring.l2_normalize(e.reshape(num_classes, -1, e.shape[-1]).mean(axis=1))


def class_embeddings_from_labeled_prompts(prompt_embeddings: np.ndarray, labels: np.ndarray,
                                          num_classes: int) -> np.ndarray:
  """Like `class_embeddings_from_prompts`, grouping rows by `labels` instead of by position.

  The seqio zero-shot path gets prompt rows back in dataset order with their class label, so it
  does not rely on every class having the same number of rows in class-major order.
  """
  e = scoring.l2_normalize(prompt_embeddings)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"prompt labels must lie in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}]")
  counts = np.bincount(labels, minlength=num_classes)
  if (counts == 0).any():
    missing = np.flatnonzero(counts == 0)[:10].tolist()
    raise ValueError(f"no prompt embeddings for classes {missing} (of {num_classes})")
  sums = np.zeros((num_classes, e.shape[-1]), np.float64)
  np.add.at(sums, labels, e)
  return scoring.l2_normalize(sums / counts[:, None])


def class_embeddings(encode_texts: TextEncoder, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """[num_classes, embed_dim] classifier from a strings -> embeddings function (the predictor)."""
  prompts = fill_templates(class_names, templates)
  return class_embeddings_from_prompts(np.asarray(encode_texts(prompts)), len(class_names))


def model_class_embeddings(model: models.FlipModel, params: PyTree, class_names: Sequence[str],
                           templates: Sequence[str], vocabulary: seqio.Vocabulary,
                           text_length: int, batch_size: int = 256,
                           mesh: Optional[jax.sharding.Mesh] = None, data_axis: Any = "data",
                           xla_options: Optional[xla_options_lib.XlaOptions] = None
                           ) -> np.ndarray:
  """[num_classes, embed_dim] classifier of `params`: every prompt embedded once, in batches."""
  if not class_names:
    raise EvalError("zero-shot eval needs at least one class name")
  if not templates:
    raise EvalError("zero-shot eval needs at least one prompt template")
  ids = prompts.prompt_token_ids(class_names, templates, vocabulary, text_length)
  sharding = encoder_lib.data_sharding(mesh, data_axis, batch_size)
  prompt_emb = encoder_lib.encoder_for(model, xla_options).encode_texts(
      params, ids.reshape(-1, text_length), batch_size, sharding)
  return class_embeddings_from_prompts(prompt_emb, len(class_names))


# ----------------------------------------------------------------------------- scoring
def zeroshot_accuracy(image_embeddings: np.ndarray, class_emb: np.ndarray, labels: np.ndarray,
                      ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
  """top-k accuracy (in %) of argmax cosine similarity between images and class embeddings."""
  logits = scoring.l2_normalize(image_embeddings) @ class_emb.T
  ks = [k for k in ks if k <= class_emb.shape[0]]
  correct = scoring.topk_correct(logits, labels, ks)
  return {f"top{k}": 100.0 * correct[k] / max(len(labels), 1) for k in ks}


class ZeroShotAccumulator:
  """Streams image batches against fixed class embeddings, counting top-k hits.

  Keeps only counts, so evaluating 50,000 ImageNet images never holds their embeddings at once.
  """

  def __init__(self, class_emb: np.ndarray, ks: Sequence[int] = (1, 5)):
    self.class_emb = np.asarray(class_emb, np.float32)
    self.ks = [k for k in ks if k <= self.class_emb.shape[0]]
    self.correct = {k: 0 for k in self.ks}
    self.num_examples = 0
    num_classes = self.class_emb.shape[0]
    self.class_images = np.zeros(num_classes, np.int64)  # per class: images, top-1 hits
    self.class_top1 = np.zeros(num_classes, np.int64)

  def update(self, image_embeddings: np.ndarray, labels: np.ndarray) -> None:
    labels = np.asarray(labels).reshape(-1)
    if not labels.size:
      return
    logits = scoring.l2_normalize(image_embeddings) @ self.class_emb.T
    for k, c in scoring.topk_correct(logits, labels, self.ks).items():
      self.correct[k] += c
    self.num_examples += labels.size
    np.add.at(self.class_images, labels, 1)
    np.add.at(self.class_top1, labels, np.argmax(logits, axis=1) == labels)

  def worst_classes(self, n: int = 5) -> List[Tuple[int, float, int]]:
    """The `n` classes of lowest top-1 (%) among those with images: [(index, top1, images)]."""
    seen = np.flatnonzero(self.class_images)
    top1 = 100.0 * self.class_top1[seen] / self.class_images[seen]
    order = np.lexsort((seen, top1))[:n]  # lowest accuracy first; ties by class index
    return [(int(seen[i]), float(top1[i]), int(self.class_images[seen[i]])) for i in order]

  def result(self) -> Dict[str, float]:
    """top-k accuracies in %, plus `num_examples` and `num_classes`."""
    out: Dict[str, float] = {
        f"top{k}": 100.0 * self.correct[k] / max(self.num_examples, 1) for k in self.ks}
    out["num_examples"] = self.num_examples
    out["num_classes"] = int(self.class_emb.shape[0])
    return out


# ------------------------------------------------------------------------ a seqio task
def _task_vocabulary(task_name: str) -> seqio.Vocabulary:
  task = datasets.get_task(task_name)
  if "targets" not in task.output_features:
    raise EvalError(f"Task {task_name!r} has no `targets` feature to take the vocabulary "
                    "from; pass `vocabulary`")
  return task.output_features["targets"].vocabulary


def zeroshot_evaluate(model: models.FlipModel, params: PyTree, *, task_name: str, split: str,
                      feature_lengths: Mapping[str, int], batch_size: int,
                      class_names: Optional[Sequence[str]] = None,
                      templates: Optional[Sequence[str]] = None,
                      vocabulary: Optional[seqio.Vocabulary] = None,
                      max_examples: Optional[int] = None,
                      mesh: Optional[jax.sharding.Mesh] = None, data_axis: Any = "data",
                      xla_options: Optional[xla_options_lib.XlaOptions] = None,
                      text_batch_size: Optional[int] = None,
                      log_every_s: float = 30.0) -> Dict[str, Any]:
  """Zero-shot top-1/top-5 (%) of `params` on a labelled seqio task.

  Args:
    model: the FlipModel (its towers are jitted once per model and reused across calls).
    params: model parameters (host arrays or already placed on `mesh`).
    task_name: seqio task/mixture whose examples have `image` and `label`.
    split: e.g. "validation".
    feature_lengths: task feature lengths, {"image": S, "targets": L}; L is the prompt length.
    batch_size: images per step (a multiple of the data-axis size when `mesh` is given).
    class_names: label-ordered names; default: the task source's `class_names()`.
    templates: prompt templates ('{}' = class name); default: the task source's `templates()`
      (FLIP's tasks: ZEROSHOT_TEMPLATES), else FLIP's 7.
    vocabulary: tokenizer of the prompts; default: the task's `targets` vocabulary.
    max_examples: evaluate only the first N images (periodic evals during training).
    mesh, data_axis: shard every batch over this mesh axis (None: one device / jit's choice).
    xla_options: what the encoders compile with (the partitioner's; None: the defaults).
    text_batch_size: prompts per text-tower step (default `batch_size`).
    log_every_s: seconds between progress lines.

  Returns:
    {"task", "split", "top1", "top5", "num_examples", "num_classes", "num_templates",
     "images_per_second", "seconds", "skipped", "worst_classes"}; `skipped` counts the images left
    out as unreadable, by reason (`datasets.skipped_since`); `worst_classes` lists the five
    classes of lowest top-1 as {"class", "top1", "num_examples"}, lowest first.
  """
  t0 = time.time()
  names = datasets.task_class_names(task_name) if class_names is None else list(class_names)
  templates = datasets.task_templates(task_name) if templates is None else list(templates)
  vocabulary = _task_vocabulary(task_name) if vocabulary is None else vocabulary
  ds = datasets.task_dataset(task_name, split, feature_lengths, ("image", "label"))
  skipped_before = datasets.skipped_counts()
  class_emb = model_class_embeddings(model, params, names, templates, vocabulary,
                                     int(feature_lengths["targets"]),
                                     text_batch_size or batch_size, mesh, data_axis, xla_options)
  logging.info("Embedded %d prompts (%d classes x %d templates) in %.1fs",
               len(names) * len(templates), len(names), len(templates), time.time() - t0)
  encoder = encoder_lib.encoder_for(model, xla_options)
  sharding = encoder_lib.data_sharding(mesh, data_axis, batch_size)
  acc = ZeroShotAccumulator(class_emb, ks=(1, 5))
  progress = progress_lib.Progress(f"zero-shot {task_name}", log_every_s=log_every_s,
                                  format_value=progress_lib.format_count("images"))
  for batch in datasets.numpy_batches(ds, ("image", "label"), batch_size, max_examples):
    labels = batch["label"]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
      raise EvalError(f"label {int(labels.max())} outside the {len(names)} class names")
    acc.update(encoder.encode_images(params, batch["image"], batch_size, sharding), labels)
    progress.update(labels.size)
  progress.close()
  if not acc.num_examples:
    raise EvalError(f"Task {task_name!r} split {split!r} yielded no examples")
  result = {"task": task_name, "split": split}
  result.update(acc.result())
  result.update(num_templates=len(templates), images_per_second=progress.rate,
                seconds=time.time() - t0, skipped=datasets.skipped_since(skipped_before))
  result["worst_classes"] = [{"class": names[i], "top1": top1, "num_examples": n}
                             for i, top1, n in acc.worst_classes(5)]
  logging.info("zero-shot %s: top1 %.2f top5 %.2f over %d images (%.1f images/s)", task_name,
               result["top1"], result.get("top5", float("nan")), result["num_examples"],
               progress.rate)
  return result
