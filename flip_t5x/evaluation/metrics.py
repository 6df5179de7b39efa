"""seqio metric functions and postprocessor that score FLIP embeddings under upstream `t5x.eval`.

seqio 0.0.20 routes a task's `metric_fns` by their positional parameter names. A
`(targets, predictions)` metric only ever sees predictions after `vocabulary.decode`, which would
turn FLIP's float embeddings into text, so the zero-shot metric takes
`(targets, predictions, aux_values)` and reads the embeddings from `aux_values`: t5x's evaluator
fills them from `FlipModel.predict_batch_with_aux` (`image_embedding`, `text_embedding`), untouched.

A zero-shot task for this metric (see `tasks/zeroshot_seqio.py`) lists the prompt examples (class x
template texts, `is_prompt=True`) before the image examples; `zeroshot_postprocess` hands the
metric each example's `label` and `is_prompt` as its target, so one evaluator pass embeds every
prompt once and every image once.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from flip_t5x.evaluation import retrieval
from flip_t5x.evaluation import zeroshot


def zeroshot_postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                         is_target: bool = False) -> Any:
  """Targets become {label, is_prompt} from the example; predictions pass through unchanged."""
  if not is_target:
    return output
  if example is None or "label" not in example or "is_prompt" not in example:
    raise ValueError("zero-shot targets need examples with `label` and `is_prompt` features "
                     "(use a task from tasks/zeroshot_seqio.py)")
  return {"label": int(example["label"]), "is_prompt": bool(example["is_prompt"])}


def _embedding(aux_values: Mapping[str, Any], key: str) -> np.ndarray:
  if key not in aux_values:
    raise ValueError(f"aux_values has no {key!r} (got {sorted(aux_values)}): the model's "
                     "predict_batch_with_aux must return FLIP's image and text embeddings")
  return np.asarray(aux_values[key], np.float32)


def zeroshot_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[Any],
                    aux_values: Mapping[str, Any], ks: Sequence[int] = (1, 5)
                    ) -> Dict[str, float]:
  """Zero-shot top-k accuracy (%) from one pass over prompt rows followed by image rows.

  Class embeddings come from the text embeddings of the prompt rows (grouped by label: normalise,
  average, normalise); image rows are scored against them, as `zeroshot.zeroshot_evaluate` does.
  """
  del predictions  # decoded text of the embeddings: meaningless, the embeddings are in aux_values
  labels = np.array([t["label"] for t in targets], np.int64)
  is_prompt = np.array([t["is_prompt"] for t in targets], bool)
  if not is_prompt.any():
    raise ValueError("zero-shot eval got no prompt rows (is_prompt=True)")
  if is_prompt.all():
    raise ValueError("zero-shot eval got no image rows (is_prompt=False)")
  text_emb = _embedding(aux_values, "text_embedding")
  image_emb = _embedding(aux_values, "image_embedding")
  num_classes = int(labels[is_prompt].max()) + 1
  class_emb = zeroshot.class_embeddings_from_labeled_prompts(
      text_emb[is_prompt], labels[is_prompt], num_classes)
  acc = zeroshot.ZeroShotAccumulator(class_emb, ks)
  acc.update(image_emb[~is_prompt], labels[~is_prompt])
  return acc.result()


def retrieval_metric(targets: Sequence[Any], predictions: Sequence[Any],
                     aux_values: Mapping[str, Any], ks: Sequence[int] = (1, 5, 10)
                     ) -> Dict[str, float]:
  """Image<->text recall@k (%) over an image-text eval split (row i's caption matches image i)."""
  del predictions
  image_emb = _embedding(aux_values, "image_embedding")
  text_emb = _embedding(aux_values, "text_embedding")
  if len(targets) != image_emb.shape[0]:
    raise ValueError(f"{len(targets)} targets for {image_emb.shape[0]} embeddings")
  out = retrieval.retrieval_recall(image_emb, text_emb, ks)
  out["num_examples"] = int(image_emb.shape[0])
  return out
