r"""Prints a FLIP model's parameter counts, FLOPs and training recipe; last line is one JSON object.

  python -m flip_t5x.model_info --gin_file=gin_configs/flip_vit_l.gin \
      [--gin_file=gin_configs/runs/unmasked_tuning.gin] [--gin.MASK_RATIO=0.75]

Takes a model file or a whole experiment (data paths and MODEL_DIR may be left unset: nothing is
read or written). `recipe` is what the configured schedule, optimizer and model hold, so it
shows what a run with the same flags would train with. Shapes come from `jax.eval_shape`, so
even ViT-H is counted without allocating it.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import dataclasses
import json
from typing import Any, Dict, Sequence

from absl import flags
import gin
import jax
import numpy as np

from flip_t5x import flops
from flip_t5x import models
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import train_loop
import tasks

FLAGS = flags.FLAGS


def param_shapes(model: models.FlipModel) -> Any:
  """Abstract parameters (ShapeDtypeStructs) of the model, without allocating them."""
  shapes = model.input_shapes()
  variables = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes), jax.random.PRNGKey(0))
  return variables["params"]


def count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def recipe(model: models.FlipModel, params: Any) -> Dict[str, Any]:
  """The training recipe as the configured objects hold it: the optimizer the model carries,
  its learning-rate schedule, the model's mask ratio and the evaluation crop. Fields the
  configured optimizer or schedule does not have (none bound, a constant rate) are None."""
  hp = (optimizers.hyperparameters(model.optimizer_def)
        if model.optimizer_def is not None else None)
  lr = hp.learning_rate if hp is not None else None
  schedule = lr if isinstance(lr, optimizers.WarmupCosineSchedule) else None
  mask = hp.decay_mask(params) if hp is not None and hp.decay_mask is not None else None
  return {
      "batch_size": schedule.batch_size if schedule else None,
      "steps_per_epoch": schedule.steps_per_epoch if schedule else None,
      "total_steps": schedule.total_steps if schedule else None,
      "warmup_steps": schedule.warmup_steps if schedule else None,
      "peak_learning_rate": (schedule.peak_learning_rate if schedule
                             else lr if isinstance(lr, (int, float)) else None),
      "weight_decay": hp.weight_decay if hp else None,
      "b1": hp.b1 if hp else None,
      "b2": hp.b2 if hp else None,
      "mask_ratio": model.mask_ratio,
      "eval_crop_pad": tasks.config().eval_pad,
      "no_decay_parameters": (optimizers.undecayed_parameters(mask) if mask is not None
                              else None),
  }


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
      "recipe": recipe(model, params),
  }


def configured_model(gin_search_paths: Sequence[str], gin_files: Sequence[str],
                     gin_bindings: Sequence[str]) -> models.FlipModel:
  """`%MODEL` from model or experiment files. The run files bind `train_script.train`, so the
  train loop's `train` is registered first; the config is not finalized, so required data
  and output paths may stay unset."""
  train_loop.register_train_for_gin()
  model = gin_utils.parse_gin_flags_for_model(gin_search_paths, gin_files, gin_bindings,
                                              finalize_config=False)
  configs = {"network.FlipTwoTower": model.module, "network.ImageTowerConfig": model.module.image,
             "network.TextTowerConfig": model.module.text}
  unset = [f"{name}.{f.name}" for name, c in configs.items() for f in dataclasses.fields(c)
           if getattr(c, f.name) is gin.REQUIRED]
  unset += ["models.FlipModel.mask_ratio"] if model.mask_ratio is gin.REQUIRED else []
  if unset:
    raise gin_utils.GinConfigError(
        f"{', '.join(unset)} come(s) from a macro left at %gin.REQUIRED: set it, e.g. "
        "--gin.VOCAB_SIZE=N for the demo's model")
  return model


def main(argv: Sequence[str]) -> None:
  del argv
  model = configured_model(FLAGS.gin_search_paths, FLAGS.gin_file, FLAGS.gin_bindings)
  info = model_info(model)
  rows = {k: v for k, v in info.items() if k != "recipe"}
  rows.update({f"recipe.{k}": v for k, v in info["recipe"].items()})
  for k, v in rows.items():
    shown = f"{len(v)} parameters (listed in the JSON)" if isinstance(v, list) else v
    print(f"{k:>36s}: {shown}")
  print(json.dumps(info))


if __name__ == "__main__":
  gin_utils.define_gin_flags()
  gin_utils.run(main)
