"""The README's zero-shot ImageNet-1K commands, as written, on TFDS's mock imagenet2012.

Both commands are read from README.md and run with their own gin files and flags; three are
swapped: the L/16 model file (for tests/data/imagenet_eval_model.gin, the tiny model with FLIP's
vocabulary), the checkpoint and the output directory. `tfds.testing.mock_data` serves imagenet2012
in this process only, so flip_t5x.eval's `main` runs here on the parsed flags, and t5x.eval is
played by seqio's Evaluator built from the same flags as t5x.eval builds it (test_eval_e2e; the
real t5x.eval runs in scripts/check_t5x_parity.sh). The mock's labels are picked from the model's
own ranking of the 1,000 classes, so both runtimes must find a known top-1 and top-5.
"""
import contextlib
import io
import json
import os
import shlex
import sys

from absl import flags
import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from flip_t5x import checkpoints
from flip_t5x import eval as flip_eval
from flip_t5x.data import prompts
from flip_t5x.evaluation import zeroshot as zeroshot_eval
from flip_t5x.pretrained import cli as pretrained_cli
from flip_t5x.runtime import gin_utils
import test_eval_e2e
import test_train_helpers as h
from test_train_helpers import ROOT

pytestmark = pytest.mark.e2e  # runs flip_t5x.eval's main

L16_FILE = "--gin_file=gin_configs/models/flip_vit_l16.gin"
EVAL_FILE = "--gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin"
TEST_MODEL_FILE = "tests/data/imagenet_eval_model.gin"
LENGTHS = {"image": 32, "targets": 16}
# Where each mock image's label ranks among the model's 1,000 classes: 4 top-1, 3 more top-5.
LABEL_RANKS = (0, 0, 0, 0, 1, 2, 4, 5, 100, 999)
TOP1, TOP5 = (100.0 * np.mean(np.array(LABEL_RANKS) < k) for k in (1, 5))  # 40, 70


def readme_commands():
  """The commands of the bash block under the README's **Zero-shot ImageNet-1K**, as argv lists."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = text.split("**Zero-shot ImageNet-1K**", 1)[1].split("```bash\n", 1)[1].split("```")[0]
  lines = block.replace("\\\n", " ").splitlines()
  return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


def as_tested(argv, ckpt, out):
  """`argv` with the test model, checkpoint and output directory in place of the README's."""
  swaps = {L16_FILE: f"--gin_file={TEST_MODEL_FILE}",
           "--gin.CHECKPOINT_PATH": f'--gin.CHECKPOINT_PATH="{ckpt}"',
           "--gin.EVAL_OUTPUT_DIR": f'--gin.EVAL_OUTPUT_DIR="{out}"'}
  tested = [swaps.get(arg.split("=")[0], swaps.get(arg, arg)) for arg in argv]
  assert sum(a != b for a, b in zip(argv, tested)) == 3, argv
  return tested


@contextlib.contextmanager
def parsed_flags(argv):
  """The binaries' flags parsed from `argv` (the gin flags as both binaries define them)."""
  gin_utils.define_gin_flags()
  if "pretrained" not in flags.FLAGS:
    pretrained_cli.define_flags()
  flags.FLAGS.unparse_flags()  # a multi-flag parsed before would add to these values
  flags.FLAGS(gin_utils.rewrite_gin_args(argv))
  try:
    yield flags.FLAGS
  finally:
    flags.FLAGS.unparse_flags()
    gin.clear_config()


def mock_imagenet(images, labels):
  """TFDS's mock with these images (encoded) and labels as imagenet2012's examples."""
  def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    del builder, split, decoders, read_config, kwargs  # the image is read encoded (SkipDecoding)
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "label": np.asarray(labels, np.int64),
        "file_name": [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(images))]})
  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
  model = h.gin_model(TEST_MODEL_FILE)
  params = model.get_initial_variables(jax.random.PRNGKey(0), model.input_shapes())["params"]
  ckpt = checkpoints.save_params(params, str(tmp_path_factory.mktemp("flip_l_tuned")), step=1900)
  return model, params, ckpt


def labels_at_ranks(model, params, images):
  """Labels whose rank among the model's class scores of each image is LABEL_RANKS' (brute force:
  the task's eval images, every prompt embedded, cosine similarities ranked in numpy)."""
  with mock_imagenet(images, [0] * len(images)):
    ds = seqio.get_mixture_or_task("flip_imagenet1k_zeroshot").get_dataset(
        LENGTHS, split="validation", shuffle=False)
    pixels = np.stack([ex["image"] for ex in ds.as_numpy_iterator()])
  vocab = tasks.output_features()["targets"].vocabulary
  class_emb = zeroshot_eval.model_class_embeddings(
      model, params, prompts.imagenet_class_names(), prompts.templates("7"), vocab,
      LENGTHS["targets"])
  z = np.asarray(model.encode_images(params, pixels), np.float64)
  sims = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ class_emb.T
  order = np.argsort(-sims, axis=1)
  gaps = -np.diff(np.take_along_axis(sims, order, axis=1), axis=1)  # rank r to rank r + 1
  for i, rank in enumerate(LABEL_RANKS):  # no near-tie decides a hit: the neighbours are apart
    assert gaps[i, max(rank - 1, 0):rank + 1].min() > 1e-5
  return [int(order[i, rank]) for i, rank in enumerate(LABEL_RANKS)]


def test_readme_commands_agree_on_mock_imagenet(model_and_checkpoint, tmp_path, monkeypatch):
  flip_cmd, t5x_cmd = readme_commands()
  assert flip_cmd[:3] == ["python", "-m", "flip_t5x.eval"]
  assert t5x_cmd[:3] == ["python", "-m", "t5x.eval"]
  for cmd in (flip_cmd, t5x_cmd):  # t5x's layering: the model file, then the eval file
    assert cmd[3:5] == [L16_FILE, EVAL_FILE]
  model, params, ckpt = model_and_checkpoint
  rng = np.random.RandomState(0)
  images = []
  for i in range(len(LABEL_RANKS)):
    buf = io.BytesIO()
    test_eval_e2e._image(rng, i % 3, size=(40, 48)).save(buf, format="JPEG")  # not square: cropped
    images.append(buf.getvalue())
  labels = labels_at_ranks(model, params, images)

  monkeypatch.setattr(sys.modules["__main__"], "evaluate", flip_eval.evaluate, raising=False)
  with mock_imagenet(images, labels):
    # flip_t5x.eval: its main on the command's flags (the gin files bind `__main__.evaluate`).
    with parsed_flags(as_tested(flip_cmd, ckpt, tmp_path / "flip")[2:]):
      flip_eval.main(["flip_t5x.eval"])
    flip = json.loads((tmp_path / "flip" / "zeroshot_metrics.json").read_text())
    # t5x.eval: seqio's Evaluator, configured by the same flags.
    with parsed_flags(as_tested(t5x_cmd, ckpt, tmp_path / "t5x")[2:]) as parsed:
      args = test_eval_e2e.t5x_eval_arguments(parsed.gin_file, parsed.gin_bindings)
      assert args["dataset_cfg"].mixture_or_task_name == "flip_imagenet1k_zeroshot_seqio"
      assert args["dataset_cfg"].task_feature_lengths == LENGTHS
      t5x = test_eval_e2e.t5x_metrics(args, test_eval_e2e.t5x_evaluator(args))

  assert (flip["task"], flip["split"], flip["checkpoint_step"]) == (
      "flip_imagenet1k_zeroshot", "validation", 1900)
  assert (flip["num_examples"], flip["num_classes"], flip["num_templates"]) == (10, 1000, 7)
  assert (flip["top1"], flip["top5"]) == (pytest.approx(TOP1), pytest.approx(TOP5))
  assert (t5x["num_examples"], t5x["num_classes"]) == (10, 1000)
  assert (t5x["top1"], t5x["top5"]) == (pytest.approx(flip["top1"]), pytest.approx(flip["top5"]))
