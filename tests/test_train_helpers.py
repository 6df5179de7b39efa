"""The tests' shared set-up: ROOT, the tiny models and batch, a tiny seqio task, binaries' runs.

Importing this module registers `flip_test_tiny` (32 px images, 16 tokens of a 1000-word
vocabulary; captions depend on the image so the loss can fall). Gin files reach it with
`MIXTURE_OR_TASK_MODULE = 'test_train_helpers'` when `tests/` is on PYTHONPATH.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x import network

TASK = "flip_test_tiny"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
TINY_GIN = "gin_configs/models/flip_tiny.gin"
# The network-level tests' model (FlipTwoTower arguments): 32 px images in 16 patches, 8 ids of a
# 100-word vocabulary, two blocks a tower. flip_tiny.gin's model (gin_model()) reads 16 ids of
# 1000 words, as the tiny task's data.
TINY_NETWORK = dict(
    image=network.ImageTowerConfig(image_size=32, patch_size=8, width=64, depth=2, num_heads=4),
    text=network.TextTowerConfig(vocab_size=100, max_length=8, width=32, depth=2, num_heads=4),
    embed_dim=16)


def tiny_batch(n: int = 4, seed: int = 0) -> Dict[str, jax.Array]:
  """n random images and ids at TINY_NETWORK's sizes."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  image, text = TINY_NETWORK["image"], TINY_NETWORK["text"]
  return {"images": jax.random.normal(k1, (n, image.image_size, image.image_size, 3)),
          "texts": jax.random.randint(k2, (n, text.max_length), 1, text.vocab_size)}


def gin_model(*gin_files: str, bindings: Sequence[str] = ()) -> Any:
  """`%MODEL` as gin files (paths from ROOT; TINY_GIN when none) and bindings build it.

  Gin is cleared before and after: nothing of the model's files stays bound for the test.
  """
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [os.path.join(ROOT, f) for f in gin_files or (TINY_GIN,)], list(bindings))
    return gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
NUM_EXAMPLES = {"train": 256, "validation": 64}
IMAGE, TEXT = 32, 16


def _examples(split: str) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng(0 if split == "train" else 1)
  n = NUM_EXAMPLES[split]
  cls = rng.integers(0, 10, size=n)
  images = rng.normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32) * 0.5
  images += cls[:, None, None, None].astype(np.float32) / 5.0 - 1.0
  texts = rng.integers(1, 1000, size=(n, TEXT)).astype(np.int32)
  texts[:, 0] = cls + 1
  texts[:, 10:] = 0
  return {"image": images, "targets": texts}


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  del shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(_examples(split))


def register() -> None:
  if TASK in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.FunctionDataSource(_dataset_fn, splits=["train", "validation"]),
      preprocessors=[],
      output_features={
          "image": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.float32, rank=3,
                                 add_eos=False),
          "targets": seqio.Feature(seqio.PassThroughVocabulary(1000), dtype=tf.int32,
                                   add_eos=False),
      })


register()

BASE_ARGS = [
    "--gin_file=gin_configs/models/flip_tiny.gin",
    "--gin_file=gin_configs/runs/pretrain.gin",
    f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
    "--gin.MIXTURE_OR_TASK_MODULE='test_train_helpers'",
    f"--gin.TASK_FEATURE_LENGTHS={{'image': {IMAGE}, 'targets': {TEXT}}}",
    "--gin.BATCH_SIZE=8",
    "--gin.RANDOM_SEED=7",
    "--gin.BASE_LEARNING_RATE=0.05",
    "--gin.WARMUP_STEPS=2",
    "--gin.EVAL_PERIOD=0",
]


def env(num_devices: int = 1) -> Dict[str, str]:
  e = dict(os.environ)
  e["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, e.get("PYTHONPATH", "")])
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  e["JAX_PLATFORMS"] = "cpu"
  e["TF_CPP_MIN_LOG_LEVEL"] = "3"
  e["CUDA_VISIBLE_DEVICES"] = ""
  return e


def run_binary(name: str, args: Sequence[str], timeout: float = 300, num_devices: int = 1,
               check: bool = False) -> subprocess.CompletedProcess:
  """`python -m flip_t5x.<name> ARGS` in a fresh process (as a user runs it), from the repo root.

  A fresh process, never the test's own: what a binary imports lazily, registers with gin or
  defines as flags must work on its own, whatever the test process imported before.
  """
  proc = subprocess.run([sys.executable, "-m", f"flip_t5x.{name}", *args], cwd=ROOT,
                        env=env(num_devices), capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"flip_t5x.{name} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc


def train_args(model_dir: str, steps: int, extra: Sequence[str] = ()) -> List[str]:
  return [sys.executable, "-m", "flip_t5x.train"] + BASE_ARGS + [
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"] + list(extra)


def run_train(model_dir: str, steps: int, extra: Sequence[str] = (), num_devices: int = 1,
              check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
  proc = subprocess.run(train_args(model_dir, steps, extra), cwd=ROOT, env=env(num_devices),
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc


def read_params(model_dir: str, step: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Flat {name: array} of a checkpoint's params, read without a model (host numpy)."""
  from flip_t5x import checkpoints  # pylint: disable=g-import-not-at-top
  path = model_dir if step is None else os.path.join(model_dir, f"checkpoint_{step}")
  return checkpoints.read_arrays(path)


def read_metrics(model_dir: str) -> List[dict]:
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def assert_params_equal(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> None:
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
