"""Zero-shot classification and retrieval metrics on embeddings (CLIP/FLIP protocol).

Pure functions over arrays, shared by `flip_t5x.eval`, the seqio metric used under `t5x.eval`,
the training loop's periodic zero-shot eval and the predictor, so every path scores alike.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

TextEncoder = Callable[[Sequence[str]], np.ndarray]  # prompts -> L2-normalised [N, E] embeddings


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def fill_templates(class_names: Sequence[str], templates: Sequence[str]) -> list:
  """Prompts in class-major order: [c0t0, c0t1, ..., c1t0, ...]."""
  for t in templates:
    if "{}" not in t:
      raise ValueError(f"prompt template {t!r} has no '{{}}' for the class name")
  return [t.format(c) for c in class_names for t in templates]


def class_embeddings_from_prompts(prompt_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
  """[C*T, E] prompt embeddings (class-major) -> [C, E]: normalise, average, normalise again."""
  e = l2_normalize(prompt_embeddings)
  if e.shape[0] % num_classes:
    raise ValueError(f"{e.shape[0]} prompt embeddings do not split into {num_classes} classes")
  return l2_normalize(e.reshape(num_classes, -1, e.shape[-1]).mean(axis=1))


def class_embeddings(encode_texts: TextEncoder, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """Class embeddings of CLIP's zero-shot protocol, [num_classes, embed_dim]."""
  prompts = fill_templates(class_names, templates)
  return class_embeddings_from_prompts(np.asarray(encode_texts(prompts)), len(class_names))


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> Dict[int, int]:
  """How many rows have their label among the k highest logits, for each k."""
  labels = np.asarray(labels).reshape(-1)
  order = np.argsort(-np.asarray(logits), axis=1)
  hits = order == labels[:, None]
  return {k: int(hits[:, :k].any(axis=1).sum()) for k in ks}


def zeroshot_accuracy(image_embeddings: np.ndarray, class_emb: np.ndarray, labels: np.ndarray,
                      ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
  """top-k accuracy (in %) of argmax cosine similarity between images and class embeddings."""
  logits = l2_normalize(image_embeddings) @ class_emb.T
  ks = [k for k in ks if k <= class_emb.shape[0]]
  n = len(labels)
  correct = topk_correct(logits, labels, ks)
  return {f"top{k}": 100.0 * correct[k] / max(n, 1) for k in ks}


def retrieval_recall(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                     ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
  """Recall@k (in %) for image->text and text->image where row i of each is a matching pair."""
  sims = l2_normalize(image_embeddings) @ l2_normalize(text_embeddings).T
  target = np.arange(sims.shape[0])
  out = {}
  for name, s in (("image_to_text", sims), ("text_to_image", sims.T)):
    correct = topk_correct(s, target, ks)
    out.update({f"{name}/recall@{k}": 100.0 * correct[k] / max(len(target), 1) for k in ks})
  return out


def class_embeddings_from_labeled_prompts(prompt_embeddings: np.ndarray, labels: np.ndarray,
                                          num_classes: int) -> np.ndarray:
  """Like `class_embeddings_from_prompts`, grouping rows by `labels` instead of by position.

  The seqio zero-shot path gets prompt rows back in dataset order with their class label, so it
  does not rely on every class having the same number of rows in class-major order.
  """
  e = l2_normalize(prompt_embeddings)
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
  return l2_normalize(sums / counts[:, None])


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
    logits = l2_normalize(image_embeddings) @ self.class_emb.T
    for k, c in topk_correct(logits, labels, self.ks).items():
      self.correct[k] += c
    self.num_examples += labels.size
    np.add.at(self.class_images, labels, 1)
    np.add.at(self.class_top1, labels, np.argmax(logits, axis=1) == labels)

  def worst_classes(self, n: int = 5) -> list:
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
