"""End to end on the tiny model: train, checkpoint, resume (also after kill -9), metrics, tuning."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import test_train_helpers as h

pytestmark = pytest.mark.e2e

STEPS = 12


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("full"))
  h.run_train(model_dir, STEPS, ["--gin.CHECKPOINT_PERIOD=4", "--gin.KEEP_CHECKPOINTS=2"])
  return model_dir


def test_outputs_and_keep(uninterrupted):
  names = sorted(os.listdir(uninterrupted))
  assert "config.gin" in names and "metrics.jsonl" in names
  assert any(n.startswith("events.out.tfevents") for n in names)
  # keep=2: checkpoints 8 and 12 remain, no temporary directories left behind.
  assert sorted(n for n in names if n.startswith("checkpoint")) == ["checkpoint_12", "checkpoint_8"]
  with open(os.path.join(uninterrupted, "config.gin")) as f:
    assert "TRAIN_STEPS = 12" in f.read()
  with open(os.path.join(uninterrupted, "operative_config.gin")) as f:
    # Written once the trainer is built (as t5x.train does): the bindings that reached it.
    assert "trainer.Trainer.learning_rate_fn = %LEARNING_RATE" in f.read()
  rows = [r for r in h.read_metrics(uninterrupted) if "loss" in r]
  assert rows and rows[-1]["step"] == STEPS
  last = rows[-1]
  for key in ("loss", "learning_rate", "temperature", "accuracy/image_to_text",
              "accuracy/text_to_image", "timing/steps_per_second", "timing/images_per_second",
              "timing/eta_hours", "timing/mfu", "input/skipped/decode_error"):
    assert key in last, key
  assert np.isfinite(last["loss"])
  # FLOP utilisation against the matmul peak measured at start-up (CPU has no vendor figure).
  assert 0 < last["timing/mfu"] < 1.5


def test_resume_matches_uninterrupted(uninterrupted, tmp_path):
  model_dir = str(tmp_path / "resumed")
  # Stop at step 4 of the 12-step schedule (the cosine length stays that of the full run).
  h.run_train(model_dir, 4, ["--gin.CHECKPOINT_PERIOD=4",
                             f"--gin.optimizers.warmup_cosine_schedule.total_steps={STEPS}"])
  # t5x's layout: the tf.data position is the `dataset` item's train_ds-<shard>-of-<count>.
  position = os.path.join(model_dir, "checkpoint_4", "dataset")
  assert os.path.exists(os.path.join(position, "train_ds-000-of-001.index"))
  # Same command with the final TRAIN_STEPS: resumes at step 4, the tf.data iterator restored
  # from the checkpoint (no batches skipped).
  proc = h.run_train(model_dir, STEPS, ["--gin.CHECKPOINT_PERIOD=4"])
  assert "input stream repositioned from checkpoint_4" in proc.stderr
  assert "skipping" not in proc.stderr
  h.assert_params_equal(h.read_params(uninterrupted), h.read_params(model_dir))


def test_resume_without_saved_input_position_skips_to_the_same_data(uninterrupted, tmp_path):
  model_dir = str(tmp_path / "no_position")
  h.run_train(model_dir, 4, ["--gin.CHECKPOINT_PERIOD=4",
                             "--gin.utils.SaveCheckpointConfig.save_dataset=False",
                             f"--gin.optimizers.warmup_cosine_schedule.total_steps={STEPS}"])
  assert not os.path.exists(os.path.join(model_dir, "checkpoint_4", "dataset",
                                         "train_ds-000-of-001.index"))
  proc = h.run_train(model_dir, STEPS, ["--gin.CHECKPOINT_PERIOD=4"])
  assert "skipping 4 batches" in proc.stderr
  h.assert_params_equal(h.read_params(uninterrupted), h.read_params(model_dir))


def test_kill_9_then_resume(uninterrupted, tmp_path):
  model_dir = str(tmp_path / "killed")
  args = h.train_args(model_dir, STEPS, ["--gin.CHECKPOINT_PERIOD=1"])
  proc = subprocess.Popen(args, cwd=h.ROOT, env=h.env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(model_dir, "checkpoint_3")):
      assert proc.poll() is None, "training ended before it could be killed"
      assert time.time() < deadline, "no checkpoint_3 within the deadline"
      time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = sorted(int(n.split("_")[1]) for n in os.listdir(model_dir)
                if n.startswith("checkpoint_") and n.split("_")[1].isdigit())
  assert done and done[-1] < STEPS, done
  # The same command again: resumes from the latest complete checkpoint (a half-written one,
  # if the kill hit a write, is a temporary directory that orbax ignores and cleans up).
  h.run_train(model_dir, STEPS, ["--gin.CHECKPOINT_PERIOD=1"])
  h.assert_params_equal(h.read_params(uninterrupted), h.read_params(model_dir))
  assert not [n for n in os.listdir(model_dir) if "tmp" in n]


def test_unmasked_tuning_restores_params_and_resets_optimizer(uninterrupted, tmp_path):
  model_dir = str(tmp_path / "tuned")
  h.run_train(model_dir, 2, [
      "--gin_file=gin_configs/runs/unmasked_tuning.gin",
      f"--gin.INITIAL_CHECKPOINT_PATH='{uninterrupted}/checkpoint_12'",
      "--gin.WARMUP_EPOCHS=None", "--gin.WARMUP_STEPS=1", "--gin.TRAIN_STEPS=2",
      "--gin.BASE_LEARNING_RATE=0.0", "--gin.CHECKPOINT_PERIOD=1"])
  with open(os.path.join(model_dir, "config.gin")) as f:
    config = f.read()
  assert "MASK_RATIO = 0.0" in config
  # lr 0: AdamW with a zero rate leaves the restored parameters exactly as they were.
  h.assert_params_equal(h.read_params(uninterrupted), h.read_params(model_dir, step=2))
  from flip_t5x import checkpoints
  meta = checkpoints.read_meta(os.path.join(model_dir, "checkpoint_1"))
  assert meta["step"] == 1  # the tuning run counts from 0 with a fresh optimizer
  opt = _read_opt_count(os.path.join(model_dir, "checkpoint_1"))
  assert opt == 1


def _read_opt_count(step_dir: str) -> int:
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ckptr:  # t5x's state dict: state/param_states holds optax's
    tree = ckptr.restore(os.path.join(step_dir, "state"))["state"]["param_states"]
  counts = []

  def visit(x):
    if isinstance(x, dict):
      for k, v in x.items():
        if k == "count":
          counts.append(int(np.asarray(v)))
        else:
          visit(v)
    elif isinstance(x, (list, tuple)):
      for v in x:
        visit(v)
  visit(tree)
  assert counts
  return counts[0]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path):
  model_dir = str(tmp_path / "diverges")
  shutil.copytree(os.path.join(uninterrupted, "checkpoint_12"),
                  os.path.join(model_dir, "checkpoint_12"))
  before = h.read_params(model_dir)
  # An absurd learning rate blows the parameters up on the first step after resuming.
  proc = h.run_train(model_dir, 20, ["--gin.BASE_LEARNING_RATE=1e30", "--gin.CHECKPOINT_PERIOD=1"],
                     check=False)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "loss is" in proc.stderr and "checkpoint_12" in proc.stderr
  steps = sorted(n for n in os.listdir(model_dir) if n.startswith("checkpoint_"))
  for name in steps:  # whatever was saved before the loss was seen is finite
    params = h.read_params(model_dir, step=int(name.split("_")[1]))
    assert all(np.all(np.isfinite(v)) for v in params.values()), name
  h.assert_params_equal(before, h.read_params(model_dir, step=12))


def test_profile_steps_write_a_jax_profile(uninterrupted, tmp_path):
  model_dir = str(tmp_path / "profiled")
  shutil.copytree(os.path.join(uninterrupted, "checkpoint_12"),
                  os.path.join(model_dir, "checkpoint_12"))
  h.run_train(model_dir, 16, ["--gin.PROFILE_STEPS=2",
                              "--gin.monitoring.MonitoringConfig.profile_first_step=1"])
  traces = [os.path.join(d, f) for d, _, fs in os.walk(model_dir) for f in fs
            if f.endswith((".xplane.pb", ".trace.json.gz"))]
  assert traces, sorted(os.listdir(model_dir))
