"""Image<->text retrieval: recall@k on an image-text split whose row i caption matches image i."""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np

from flip_t5x import models
from flip_t5x import xla_options as xla_options_lib
from flip_t5x import progress as progress_lib
from flip_t5x.evaluation import EvalError
from flip_t5x.evaluation import datasets
from flip_t5x.evaluation import encoder as encoder_lib
from flip_t5x.evaluation import scoring

PyTree = Any


def retrieval_recall(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                     ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
  """Recall@k (in %) for image->text and text->image where row i of each is a matching pair."""
  sims = scoring.l2_normalize(image_embeddings) @ scoring.l2_normalize(text_embeddings).T
  target = np.arange(sims.shape[0])
  out = {}
  for name, s in (("image_to_text", sims), ("text_to_image", sims.T)):
    correct = scoring.topk_correct(s, target, ks)
    out.update({f"{name}/recall@{k}": 100.0 * correct[k] / max(len(target), 1) for k in ks})
  return out


def retrieval_evaluate(model: models.FlipModel, params: PyTree, *, task_name: str, split: str,
                       feature_lengths: Mapping[str, int], batch_size: int,
                       max_examples: Optional[int] = None,
                       mesh: Optional[jax.sharding.Mesh] = None, data_axis: Any = "data",
                       xla_options: Optional[xla_options_lib.XlaOptions] = None,
                       ks: Sequence[int] = (1, 5, 10), log_every_s: float = 30.0
                       ) -> Dict[str, Any]:
  """Image->text and text->image recall@k (%) on an image-text split (`image` + `targets`).

  Batches are sharded as `zeroshot_evaluate`'s (`mesh`, `data_axis`); the encoders compile with
  `xla_options` (the partitioner's; None: the defaults).

  Each example's caption is its image's only match (img2dataset shards: one caption per image).
  All embeddings are kept on the host: meant for eval splits of up to tens of thousands of pairs.
  """
  t0 = time.time()
  ds = datasets.task_dataset(task_name, split, feature_lengths, ("image", "targets"))
  length = int(feature_lengths["targets"])
  ds = ds.map(lambda ex: dict(ex, targets=datasets.pad_text(ex["targets"], length)))
  skipped_before = datasets.skipped_counts()
  encoder = encoder_lib.encoder_for(model, xla_options)
  sharding = encoder_lib.data_sharding(mesh, data_axis, batch_size)
  image_emb, text_emb = [], []
  progress = progress_lib.Progress(f"retrieval {task_name}", log_every_s=log_every_s,
                                  format_value=progress_lib.format_count("images"))
  for batch in datasets.numpy_batches(ds, ("image", "targets"), batch_size, max_examples):
    image_emb.append(encoder.encode_images(params, batch["image"], batch_size, sharding))
    text_emb.append(encoder.encode_texts(params, batch["targets"], batch_size, sharding))
    progress.update(len(batch["image"]))
  progress.close()
  if not image_emb:
    raise EvalError(f"Task {task_name!r} split {split!r} yielded no examples")
  result = {"task": task_name, "split": split}
  result.update(retrieval_recall(np.concatenate(image_emb), np.concatenate(text_emb), ks))
  result.update(num_examples=progress.done, images_per_second=progress.rate,
                seconds=time.time() - t0, skipped=datasets.skipped_since(skipped_before))
  logging.info("retrieval %s: %s", task_name, result)
  return result
