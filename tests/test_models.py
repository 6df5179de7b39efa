"""FlipModel under the t5x BaseModel contract, model sizes and the model_info binary."""
import json
import os
import subprocess
import sys

import clu.metrics as clu_metrics
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip_t5x import model_info
from flip_t5x import models
from flip_t5x import network
from flip_t5x.data.feature_converters import ImageTextFeatureConverter
from test_train_helpers import ROOT
from test_train_helpers import TINY_NETWORK as TINY


def load_model(gin_file, bindings=()):
  gin.clear_config()
  gin.parse_config_files_and_bindings([os.path.join(ROOT, gin_file)], list(bindings))
  try:
    return gin.query_parameter("models.FlipModel.module").scoped_configurable_fn(), \
        gin.query_parameter("%MASK_RATIO")
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_contract_methods_and_outputs():
  model = models.FlipModel(network.FlipTwoTower(**TINY), optimizer_def="opt", mask_ratio=0.5)
  assert isinstance(model, models.BaseModel)
  assert model.optimizer_def == "opt"
  assert model.FEATURE_CONVERTER_CLS is ImageTextFeatureConverter
  variables = model.get_initial_variables(jax.random.PRNGKey(0),
                                          {"images": (8, 32, 32, 3), "texts": (8, 8)},
                                          {"images": jnp.float32, "texts": jnp.int32})
  assert set(variables) == {"params", "params_axes"}
  batch = {"images": jnp.ones((4, 32, 32, 3)), "texts": jnp.ones((4, 8), jnp.int32)}
  loss, metrics = model.loss_fn(variables["params"], batch, jax.random.PRNGKey(1))
  assert loss.shape == ()
  assert {"loss", "temperature", "accuracy/image_to_text", "accuracy/text_to_image"} <= set(metrics)
  assert all(isinstance(m, clu_metrics.Metric) for m in metrics.values())
  np.testing.assert_allclose(metrics["temperature"].compute(), 0.07, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"].compute(), loss, rtol=1e-6)
  preds, aux = model.predict_batch_with_aux(variables["params"], batch)
  assert preds.shape == (4, 32)
  np.testing.assert_allclose(preds[:, :16], aux["image_embedding"])
  np.testing.assert_allclose(preds[:, 16:], aux["text_embedding"])
  np.testing.assert_allclose(model.predict_batch(variables["params"], batch), preds)
  scores = model.score_batch(variables["params"], batch)
  expected = aux["logit_scale"] * jnp.sum(aux["image_embedding"] * aux["text_embedding"], -1)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_bad_mask_ratio_is_rejected():
  with pytest.raises(ValueError, match="mask_ratio"):
    models.FlipModel(network.FlipTwoTower(**TINY), mask_ratio=1.5)


REFERENCE_COUNTS = {  # millions: the parameter counts the FLIP paper gives per model size
    "flip_vit_b16": (86, 53),
    "flip_vit_l16": (303, 108),
    "flip_vit_h14": (630, 334),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_match_facts_sheet(name):
  module, mask_ratio = load_model(f"gin_configs/models/{name}.gin")
  info = model_info.model_info(models.FlipModel(module, mask_ratio=mask_ratio))
  image_ref, text_ref = REFERENCE_COUNTS[name]
  assert abs(info["image_tower_params"] / 1e6 - image_ref) / image_ref < 0.02
  assert abs(info["text_tower_params"] / 1e6 - text_ref) / text_ref < 0.02
  assert info["total_params"] == info["image_tower_params"] + info["text_tower_params"] + 1


@pytest.mark.slow
def test_masking_flops_shrink_with_the_ratio():
  module, _ = load_model("gin_configs/models/flip_vit_l16.gin")
  at = {r: model_info.model_info(models.FlipModel(module, mask_ratio=r))
        for r in (0.0, 0.5, 0.75)}
  assert at[0.0]["train_gflops_per_example"] == pytest.approx(3 * at[0.0]["eval_gflops_per_example"])
  speedup_05 = at[0.0]["train_gflops_per_example"] / at[0.5]["train_gflops_per_example"]
  speedup_075 = at[0.0]["train_gflops_per_example"] / at[0.75]["train_gflops_per_example"]
  assert 1.8 < speedup_05 < 2.0 and 3.0 < speedup_075 < 3.6  # image tower ~95% of the FLOPs


@pytest.mark.e2e
def test_model_info_binary_prints_json_last():
  out = subprocess.run(
      [sys.executable, "-m", "flip_t5x.model_info",
       "--gin_file=gin_configs/models/flip_vit_b16.gin", "--gin.MASK_RATIO=0.75"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
  info = json.loads(out.stdout.strip().splitlines()[-1])
  assert info["mask_ratio"] == 0.75
  assert abs(info["image_tower_params"] / 1e6 - 86) < 1.5
  assert info["train_gflops_per_example"] > 0 and info["eval_gflops_per_example"] > 0


@pytest.mark.e2e
def test_model_info_binary_names_a_bad_binding():
  out = subprocess.run(
      [sys.executable, "-m", "flip_t5x.model_info",
       "--gin_file=gin_configs/models/flip_tiny.gin", "--gin.network.FlipTwoTower.widht=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "widht" in out.stderr


def test_initial_variables_refuse_other_task_lengths():
  # t5x.train / t5x.eval derive input_shapes from TASK_FEATURE_LENGTHS: a 64-px or 4-id task on
  # the 32-px, 8-id model ends at initialisation, naming the macros, before any step runs.
  model = models.FlipModel(network.FlipTwoTower(**TINY))
  model.check_feature_lengths({"image": 32, "targets": 8})
  for shapes in ({"images": (2, 64, 64, 3), "texts": (2, 8)},
                 {"images": (2, 32, 32, 3), "texts": (2, 4)}):
    with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS .* differ from the model's sizes "
                                         r"\{'image': 32, 'targets': 8\} \(IMAGE_SIZE, TEXT_LENGTH"):
      model.get_initial_variables(jax.random.PRNGKey(0), shapes)
  with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
    model.check_feature_lengths(None)
