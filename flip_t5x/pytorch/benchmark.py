"""CLIP_benchmark's model loader for flip_t5x models (`--model_type=flip_t5x`).

CLIP_benchmark (PyPI `clip-benchmark`) picks a loader by `--model_type` from
`clip_benchmark.models.TYPE2FUNC`; a loader takes (model_name, pretrained, cache_dir, device) and
returns (model, transform, tokenizer). `register` adds flip_t5x's, serving a model the caller
already loaded (`flip_t5x.clip_benchmark` resolves --checkpoint / --pretrained, with their
errors, before CLIP_benchmark starts): the PyTorch model converted in memory (equal to the JAX
towers within 1e-5, tested), the official eval crop as the transform, FLIP's tokenizer.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from flip_t5x import predictor as predictor_lib
from flip_t5x.pytorch import compat
from flip_t5x.pytorch import convert
from flip_t5x.pytorch import factory
from flip_t5x.pytorch import transforms

MODEL_TYPE = "flip_t5x"
Loader = Callable[..., Tuple[Any, Any, Any]]


def components(predictor: predictor_lib.FlipPredictor, preprocess_cfg: Dict[str, Any]
               ) -> Tuple[Any, transforms.OfficialEvalCrop, factory.Tokenizer]:
  """(PyTorch model, official eval crop, FLIP tokenizer) of a loaded model."""
  model = convert.torch_model(predictor.module, predictor.params)
  _, eval_crop = transforms.image_transforms(preprocess_cfg)
  return model, eval_crop, factory.Tokenizer(predictor.vocabulary, predictor.text_length)


def loader(predictor: predictor_lib.FlipPredictor, preprocess_cfg: Dict[str, Any]) -> Loader:
  """A CLIP_benchmark loader serving this model (converted once, on CLIP_benchmark's first call)."""
  built = []

  def load(model_name: str, pretrained: str, cache_dir: Any = None, device: Any = "cpu"):
    del model_name, pretrained, cache_dir  # they name the model in CLIP_benchmark's results
    if not built:
      built.append(components(predictor, preprocess_cfg))
    model, transform, tokenizer = built[0]
    return model.to(device), transform, tokenizer
  return load


def register(load: Loader) -> None:
  """Makes `--model_type=flip_t5x` CLIP_benchmark's name for `load` (before its CLI parses)."""
  from clip_benchmark import models  # pylint: disable=g-import-not-at-top
  compat.fix_clip_benchmark_accuracy()
  models.TYPE2FUNC[MODEL_TYPE] = load
  if MODEL_TYPE not in models.MODEL_TYPES:  # the list the CLI's --model_type choices are
    models.MODEL_TYPES.append(MODEL_TYPE)
