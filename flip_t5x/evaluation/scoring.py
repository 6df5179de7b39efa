"""Cosine ranking shared by zero-shot and retrieval (pure numpy, so every path scores alike)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> Dict[int, int]:
  """How many rows have their label among the k highest logits, for each k."""
  labels = np.asarray(labels).reshape(-1)
  order = np.argsort(-np.asarray(logits), axis=1)
  hits = order == labels[:, None]
  return {k: int(hits[:, :k].any(axis=1).sum()) for k in ks}
