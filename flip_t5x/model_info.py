r"""Prints a FLIP model's parameter counts and FLOPs; last line is one JSON object.

  python -m flip_t5x.model_info --gin_file=gin_configs/models/flip_vit_l16.gin \
      [--gin.MASK_RATIO=0.75]

Shapes come from `jax.eval_shape`, so even ViT-H is counted without allocating it.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Sequence

from absl import flags
import jax
import numpy as np

from flip_t5x import flops
from flip_t5x import models
from flip_t5x.runtime import gin_utils

FLAGS = flags.FLAGS



def param_shapes(model: models.FlipModel) -> Any:
  """Abstract parameters (ShapeDtypeStructs) of the model, without allocating them."""
  m = model.module
  shapes = {"images": (1, m.image_size, m.image_size, 3), "texts": (1, m.text_length)}
  variables = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes), jax.random.PRNGKey(0))
  return variables["params"]


def count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def model_info(model: models.FlipModel) -> Dict[str, Any]:
  params = param_shapes(model)
  image, text = count(params["image_tower"]), count(params["text_tower"])
  fl = flops.flops_per_example(model.module, model.mask_ratio)
  return {
      "image_tower_params": image,
      "text_tower_params": text,
      "total_params": count(params),
      "mask_ratio": model.mask_ratio,
      "train_gflops_per_example": fl["train"] / 1e9,
      "eval_gflops_per_example": fl["eval"] / 1e9,
      "image_tower_share_of_train_flops": fl["image_tower_forward"] / (fl["train"] / 3),
  }


def main(argv: Sequence[str]) -> None:
  del argv
  model = gin_utils.parse_gin_flags_for_model(FLAGS.gin_search_paths, FLAGS.gin_file,
                                              FLAGS.gin_bindings)
  info = model_info(model)
  for k, v in info.items():
    print(f"{k:>36s}: {v}")
  print(json.dumps(info))


if __name__ == "__main__":
  gin_utils.define_gin_flags()
  gin_utils.run(main)
