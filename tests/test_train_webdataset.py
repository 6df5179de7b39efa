"""The training binary on real image shards with bad input: webdataset tars and TFRecord files.

`python -m flip_t5x.train` (a fresh process) trains the tiny model on the flip_img2dataset task
reading TRAIN_DATA_PATTERN: the shard set of `test_bad_input.write_bad_shards` (img2dataset's
layouts: NNN.jpg + NNN.txt + NNN.json in tars; `jpg`/`txt` Examples in TFRecords), where good
records sit beside every kind of bad record, a truncated file, a corrupt or cut file and a
zero-byte file. Training must finish, log the damaged files' paths, and its metrics must count the
skips pass by pass: the stream is unshuffled, so each pass over the shards adds exactly the
per-pass counts that `test_bad_input` checks in process.
"""
from __future__ import annotations

import math
import os

import pytest

import test_bad_input
import test_data_pipeline as dp
import test_train_helpers as h

pytestmark = pytest.mark.e2e

BATCH, STEPS = 8, 6
SETUP_LINE = "configuration checked; setting up the model"


@pytest.mark.parametrize("fmt", ["webdataset", "tfrecord"])
def test_train_binary_on_bad_shards(tmp_path, fmt):
  shards = test_bad_input.write_bad_shards(str(tmp_path / "shards"), fmt)
  per_pass = shards["expected"]
  model_dir = str(tmp_path / "run")
  proc = h.run_binary("train", [
      "--gin_file=gin_configs/models/flip_tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin",
      "--gin.MIXTURE_OR_TASK_NAME='flip_img2dataset'",
      f"--gin.TRAIN_DATA_PATTERN='{shards['pattern']}'",
      f"--gin.VOCAB_FILE='{dp._vocab_file(str(tmp_path))}'",
      f"--gin.TASK_FEATURE_LENGTHS={{'image': {h.IMAGE}, 'targets': {h.TEXT}}}",
      f"--gin.BATCH_SIZE={BATCH}", f"--gin.TRAIN_STEPS={STEPS}", "--gin.EVAL_PERIOD=0",
      "--gin.RANDOM_SEED=3", "--gin.SHUFFLE_TRAIN_EXAMPLES=False", f"--gin.MODEL_DIR='{model_dir}'",
  ], timeout=600, check=True)
  err = proc.stderr
  # The configuration checks run before the model is set up (test_train_gin_errors relies on it).
  assert SETUP_LINE in err and err.index(SETUP_LINE) < err.index("training steps 0..")
  assert os.path.isdir(os.path.join(model_dir, f"checkpoint_{STEPS}"))
  for path in shards["damaged"]:
    assert path in err, f"{path} not logged:\n{err[-4000:]}"

  final = [m for m in h.read_metrics(model_dir) if m.get("step") == STEPS and "loss" in m]
  assert final, h.read_metrics(model_dir)
  m = final[-1]
  assert math.isfinite(m["loss"])
  kept = m["input/kept"]
  # At least STEPS * BATCH good records were kept (more may sit in prefetch buffers), so at least
  # `passes` whole passes went by and the current one is unfinished: every per-pass count has
  # been added `passes` times, and at most once more.
  assert kept >= STEPS * BATCH
  passes = int(kept // per_pass["ok"])
  assert passes >= 2, (kept, per_pass)
  for reason in ("empty_image", "unknown_format", "too_large", "decode_error", "empty_caption",
                 "bad_utf8"):
    got, n = m[f"input/skipped/{reason}"], per_pass[reason]
    # The counters are read one after another while tf.data's threads keep reading ahead (a
    # loaded machine let one run 2 records past `kept`'s pass), and a record a decoder raised on
    # is counted by the gap it leaves, when the next record comes. So the count must match the
    # passes seen to within one pass below and two above: never zero, never counted twice over.
    assert (passes - 1) * n <= got <= (passes + 2) * n, (reason, got, n, passes, m)
  # Damaged files are counted as the shards are read, before the records reach the counting
  # filter: the reader runs ahead of it by the pipeline's buffers, hence no upper bound.
  assert m["input/skipped/damaged_file"] >= passes * per_pass["damaged_file"], m
