"""Every experiment file's resolved recipe against the official FLIP configs, and the weight-decay
mask on real parameter trees (what `python -m flip_t5x.model_info` reports)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import optax
import pytest

from flip_t5x import model_info
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import train_loop
from test_train_helpers import ROOT

# Transcribed from facebookresearch/flip (its only commit). Per experiment: the official config,
# its num_epochs and warmup_epochs (configs/cfg_flip_*.py, else configs/default.py: 40) and base
# learning_rate per 256 examples (configs/cfg_flip_*_L2B_2x.py: 2e-6, else default.py: 4e-6);
# then the numbers they give at configs/default.py's batch_size 65,536 through train.py
# (steps_per_epoch = samples_per_epoch // batch_size, samples_per_epoch = 1,281,167; num_epochs x
# steps_per_epoch steps) and t5x/train_state_initializer.py (peak lr = learning_rate x batch /
# 256; linear warmup from warmup_abs_lr = 0 over warmup_epochs x steps_per_epoch steps).
OFFICIAL = {
    # file: (official config, num_epochs, warmup_epochs, learning_rate,
    #        total_steps, warmup_steps, peak learning rate)
    "flip_vit_b.gin": ("configs/cfg_flip_base.py", 10000, 40, 4e-6, 190_000, 760, 1.024e-3),
    "flip_vit_l.gin": ("configs/cfg_flip_large.py", 10000, 40, 4e-6, 190_000, 760, 1.024e-3),
    "flip_vit_h14.gin": ("configs/cfg_flip_huge14.py", 10000, 200, 4e-6, 190_000, 3_800,
                         1.024e-3),
    "flip_vit_l_laion2b.gin": ("configs/cfg_flip_large_L2B_2x.py", 20000, 40, 2e-6, 380_000, 760,
                               5.12e-4),
    "flip_vit_h14_laion2b.gin": ("configs/cfg_flip_huge14_L2B_2x.py", 20000, 200, 2e-6,
                                 380_000, 3_800, 5.12e-4),
}
# configs/default.py, the same for every experiment.
OFFICIAL_COMMON = {"batch_size": 65536, "steps_per_epoch": 19, "weight_decay": 0.2, "b1": 0.9,
                   "b2": 0.95, "mask_ratio": 0.5, "eval_crop_pad": 0}
# README.md "Unmasked tuning": the same config with mask_ratio=0.0, learning_rate=4e-8,
# num_epochs=100, warmup_epochs=20.
OFFICIAL_UNMASKED = {"mask_ratio": 0.0, "total_steps": 1_900, "warmup_steps": 380,
                     "peak_learning_rate": 4e-8 * 65536 / 256}

EXPERIMENTS = sorted(os.path.basename(p)
                     for p in glob.glob(os.path.join(ROOT, "gin_configs", "flip_vit_*.gin")))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def configure(files, bindings=()):
  return model_info.configured_model(["."], [f"gin_configs/{f}" for f in files], list(bindings))


def resolved(files, bindings=()):
  model = configure(files, bindings)
  return model_info.recipe(model, model_info.param_shapes(model))


def test_every_experiment_file_has_an_official_row():
  assert EXPERIMENTS and EXPERIMENTS == sorted(OFFICIAL)


def test_table_follows_the_official_arithmetic():
  """The transcribed step counts are what train.py computes from the transcribed epochs."""
  steps_per_epoch = 1_281_167 // OFFICIAL_COMMON["batch_size"]
  assert steps_per_epoch == OFFICIAL_COMMON["steps_per_epoch"]
  for _, epochs, warmup, lr, total_steps, warmup_steps, peak in OFFICIAL.values():
    assert (epochs * steps_per_epoch, warmup * steps_per_epoch) == (total_steps, warmup_steps)
    assert peak == pytest.approx(lr * OFFICIAL_COMMON["batch_size"] / 256, rel=1e-12)
  assert OFFICIAL_UNMASKED["total_steps"] == 100 * steps_per_epoch
  assert OFFICIAL_UNMASKED["warmup_steps"] == 20 * steps_per_epoch


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_recipe_is_the_official_one(experiment):
  _, _, _, _, total_steps, warmup_steps, peak = OFFICIAL[experiment]
  r = resolved([experiment])
  assert {k: r[k] for k in OFFICIAL_COMMON} == OFFICIAL_COMMON
  assert (r["total_steps"], r["warmup_steps"]) == (total_steps, warmup_steps)
  assert r["peak_learning_rate"] == pytest.approx(peak, rel=1e-12)
  # The number upstream t5x.train and flip_t5x.train receive as train(total_steps=...).
  total = gin.get_bindings(train_loop.train)["total_steps"]
  assert total == total_steps and isinstance(total, int)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_unmasked_tuning_recipe_is_the_official_one(experiment):
  r = resolved([experiment, "runs/unmasked_tuning.gin"])
  expected = {**OFFICIAL_COMMON, **OFFICIAL_UNMASKED}
  for key, value in expected.items():
    assert r[key] == pytest.approx(value, rel=1e-12), key
  assert gin.get_bindings(train_loop.train)["total_steps"] == OFFICIAL_UNMASKED["total_steps"]


@pytest.mark.slow
def test_steps_given_later_win_over_epochs():
  r = resolved(["flip_vit_l.gin"], ["TRAIN_STEPS = 2", "WARMUP_STEPS = 1"])
  assert (r["total_steps"], r["warmup_steps"]) == (2, 1)
  assert gin.get_bindings(train_loop.train)["total_steps"] == 2
  gin.clear_config()
  r = resolved(["flip_vit_l.gin"], ["TRAIN_EPOCHS = 3", "WARMUP_EPOCHS = 1"])
  assert (r["total_steps"], r["warmup_steps"]) == (57, 19)
  gin.clear_config()
  r = resolved(["flip_vit_l.gin"], ["BATCH_SIZE = 4096"])  # the epochs follow the batch size
  assert (r["steps_per_epoch"], r["total_steps"], r["warmup_steps"]) == (312, 3_120_000, 12_480)
  assert r["peak_learning_rate"] == pytest.approx(4e-6 * 4096 / 256, rel=1e-12)


@pytest.mark.slow
def test_recipe_reads_what_is_bound():
  r = resolved(["flip_vit_b.gin"], ["tasks.TaskConfig.eval_pad = 32",
                                    "WEIGHT_DECAY = 0.05", "MASK_RATIO = 0.75",
                                    "optimizers.adamw.b2 = 0.98"])
  assert (r["eval_crop_pad"], r["weight_decay"], r["mask_ratio"], r["b2"]) == (32, 0.05, 0.75, 0.98)


def test_bad_lengths_get_clear_errors():
  with pytest.raises(ValueError, match="WARMUP_STEPS"):  # 760 warmup steps in a 2-step run
    configure(["flip_vit_l.gin"], ["TRAIN_STEPS = 2"])
  gin.clear_config()
  with pytest.raises(ValueError, match="TRAIN_EPOCHS"):
    configure(["models/flip_tiny.gin", "runs/pretrain.gin"],
              ["TRAIN_STEPS = @train_steps/optimizers.epochs_to_steps()",
               "OPTIMIZER = @optimizers.adamw()"])
  with pytest.raises(ValueError, match="batch_size"):
    optimizers.epochs_to_steps(1, 2_000_000)


def test_schedule_is_official_warmup_then_cosine():
  s = optimizers.warmup_cosine_schedule(4e-6, 65536, total_steps=190_000, warmup_steps=760)
  # optax.join_schedules(linear_schedule(0, peak, 760), cosine_decay_schedule(peak, 189_240)).
  official = optax.join_schedules(
      [optax.linear_schedule(0.0, 1.024e-3, 760), optax.cosine_decay_schedule(1.024e-3, 189_240)],
      [760])
  steps = np.array([0, 1, 380, 759, 760, 761, 50_000, 189_999, 190_000, 200_000])
  # optax's linear schedule subtracts from the peak in float32: absolute error ~1e-5 x peak.
  np.testing.assert_allclose([float(s(i)) for i in steps], [float(official(i)) for i in steps],
                             rtol=1e-5, atol=1e-5 * 1.024e-3)
  assert float(s(0)) == 0.0 and float(s(190_000)) == 0.0
  with pytest.raises(TypeError, match="total_steps"):
    optimizers.warmup_cosine_schedule(1e-3, 8, total_steps="abc")


def test_schedule_warmup_start_and_end_rates_are_the_official_switches():
  """`warmup_abs_lr` / `min_abs_lr` of configs/default.py (both 0 in the released recipes)."""
  s = optimizers.warmup_cosine_schedule(4e-6, 65536, total_steps=2_000, warmup_steps=100,
                                        warmup_start_learning_rate=1e-5, end_learning_rate=2e-5)
  official = optax.join_schedules(
      [optax.linear_schedule(1e-5, 1.024e-3, 100),
       optax.cosine_decay_schedule(1.024e-3, 1_900, alpha=2e-5 / 1.024e-3)], [100])
  steps = np.array([0, 1, 50, 99, 100, 101, 1_000, 1_999, 2_000])
  np.testing.assert_allclose([float(s(i)) for i in steps], [float(official(i)) for i in steps],
                             rtol=1e-5, atol=1e-5 * 1.024e-3)
  assert float(s(0)) == pytest.approx(1e-5) and float(s(2_000)) == pytest.approx(2e-5)


def _paths(tree):
  return {optimizers._path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _official_decays(path: str) -> bool:
  """utils/opt_util.py: filter_bias_and_norm (last name 'bias' or 'scale') and filter_posembed
  ('pos_embedding' anywhere in the path) say False; everything else is decayed."""
  return path.split("/")[-1] not in ("bias", "scale") and "pos_embedding" not in path


@pytest.mark.slow
def test_decay_mask_on_the_vit_l_parameter_tree():
  model = configure(["flip_vit_l.gin"])
  params = model_info.param_shapes(model)
  no_decay = model_info.recipe(model, params)["no_decay_parameters"]
  expected = sorted(p for p in _paths(params) if not _official_decays(p))
  assert no_decay == expected
  # What the official mask decides that a rank rule would not: CLS and the temperature decay.
  assert "image_tower/cls" not in no_decay and "logit_scale" not in no_decay
  assert "text_tower/pos_embedding" in no_decay
  assert "image_tower/encoder/block_0/attention/query/bias" in no_decay  # 2-D, still exempt
  assert "image_tower/encoder/block_0/pre_mlp_layer_norm/scale" in no_decay


@pytest.mark.slow
def test_decay_min_ndim_option_decays_matrices_only():
  model = configure(["flip_vit_l.gin"], ["optimizers.adamw.decay_min_ndim = 2"])
  params = model_info.param_shapes(model)
  no_decay = set(model_info.recipe(model, params)["no_decay_parameters"])
  official = {p for p in _paths(params) if not _official_decays(p)}
  assert no_decay - official == {"image_tower/cls", "logit_scale"}
  assert official <= no_decay


@pytest.mark.slow
def test_adamw_decays_exactly_the_masked_parameters():
  """Zero gradients: Adam's step is 0, so only decayed parameters move (by lr x wd x p)."""
  model = configure(["models/flip_tiny.gin"])
  image = model.module.image
  shapes = {"images": (1, image.image_size, image.image_size, 3),
            "texts": (1, model.module.text.max_length)}
  params = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(0))["params"]
  tx = optimizers.unwrap(optimizers.adamw(learning_rate=1.0, weight_decay=0.5))
  zeros = jax.tree_util.tree_map(np.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  moved = {optimizers._path_name(p) for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]
           if np.any(np.asarray(u) != 0)}
  assert moved == {p for p in _paths(params) if _official_decays(p)}
  flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    if optimizers._path_name(path) in moved:
      np.testing.assert_allclose(u, -0.5 * np.asarray(flat_p[path]), rtol=1e-6)


@pytest.mark.e2e
def test_model_info_binary_reports_the_recipe_of_an_experiment():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "flip_t5x.model_info", "--gin_file=gin_configs/flip_vit_b.gin",
         "--gin_file=gin_configs/runs/unmasked_tuning.gin",
         "--gin.MODEL_DIR=\"/tmp/unused\"", "--gin.TRAIN_DATA_PATTERN=\"/tmp/unused/*\""]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recipe = json.loads(proc.stdout.strip().splitlines()[-1])["recipe"]
  assert (recipe["total_steps"], recipe["warmup_steps"], recipe["mask_ratio"]) == (1900, 380, 0.0)
  assert "logit_scale" not in recipe["no_decay_parameters"]


def test_model_info_names_an_unset_model_macro():
  with pytest.raises(gin_utils.GinConfigError, match="vocab_size"):  # the demo's VOCAB_SIZE
    configure(["demo/pretrain.gin"])
