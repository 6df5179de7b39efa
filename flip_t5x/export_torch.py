r"""Exports a flip_t5x model to PyTorch: safetensors weights, a config JSON and the vocabulary.

  python -m flip_t5x.export_torch --checkpoint=/runs/flip_b16 \
      --gin_file=gin_configs/models/flip_vit_b16.gin --output=exports/flip_b16
  python -m flip_t5x.export_torch --pretrained=flip_vit_l16_laion2b --output=exports/flip_l16

The directory loads with OpenCLIP's interface, from `flip_t5x.pytorch` (the optional extra,
`pip install -e '.[torch]'`):

  model, preprocess_train, preprocess_val = flip_t5x.pytorch.create_model_and_transforms(DIR)
  tokenizer = flip_t5x.pytorch.get_tokenizer(DIR)

After writing, the export is loaded back and its embeddings of a few random images and texts are
compared with the JAX model's; the largest difference is printed, and one over 1e-4 fails the
export (exit status 1). docs/pytorch.md: the format, and why OpenCLIP's own modules are not used.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from flip_t5x import predictor as predictor_lib
from flip_t5x import pytorch
from flip_t5x.pytorch import cli
from flip_t5x.pytorch import convert
from flip_t5x.runtime import gin_utils

FLAGS = flags.FLAGS
CHECK_TOLERANCE = 1e-4  # float32 towers agree to ~1e-6 (tests/test_torch_export.py)


def _define_flags() -> None:
  cli.define_flags()
  flags.DEFINE_string("output", None, "The export directory (created; files in it replaced).")


def max_difference(predictor, model, seed: int = 0) -> float:
  """Largest |PyTorch - JAX| over the embeddings of two random images and texts."""
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  size, length = predictor.image_size, predictor.text_length
  pixels = rng.standard_normal((2, size, size, 3)).astype(np.float32)
  ids = rng.integers(1, predictor.vocabulary.vocab_size, (2, length)).astype(np.int32)
  ids[1, length // 2:] = 0  # a padded text too
  with torch.no_grad():
    image = model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
    text = model.encode_text(torch.from_numpy(ids), normalize=True)
  return max(float(np.abs(image.numpy() - predictor.encode_pixels(pixels)).max()),
             float(np.abs(text.numpy() - predictor.encode_tokens(ids)).max()))


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.output:
    raise app.UsageError("--output (the export directory) is required")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  predictor, source = cli.load_predictor()
  paths = convert.write_export(FLAGS.output, predictor.module, predictor.params,
                               predictor.vocabulary.vocab_file, cli.preprocess_config(predictor),
                               source)
  difference = max_difference(predictor, pytorch.create_model(FLAGS.output))
  print(f"exported {source['pretrained'] or source['checkpoint']} -> {FLAGS.output} "
        f"({', '.join(p.rsplit('/', 1)[-1] for p in paths)}); "
        f"max |torch - jax| embedding difference {difference:.2e}", flush=True)
  if not difference <= CHECK_TOLERANCE:
    raise gin_utils.Failed(f"the PyTorch model differs from the JAX model by {difference:.2e} "
                           f"(> {CHECK_TOLERANCE:g})")


if __name__ == "__main__":
  _define_flags()
  gin_utils.run(main, bad_input=predictor_lib.LOAD_ERRORS)
