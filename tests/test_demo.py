"""A shortened scripts/demo.sh: data prep, masked pre-training, unmasked tuning, two zero-shot evals."""
import json
import os
import subprocess

import pytest

from test_train_helpers import ROOT

pytestmark = pytest.mark.e2e

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def test_shortened_demo_runs_the_whole_chain(tmp_path):
  assert os.path.isdir(FASHION_MNIST), (
      "demo images absent: apt-get install dataset-fashion-mnist (.ci/run does)")
  run_dir = tmp_path / "run"
  out = subprocess.run(
      ["bash", "scripts/demo.sh", f"--data_dir={tmp_path / 'data'}", f"--run_dir={run_dir}",
       "--pretrain_steps=4", "--tune_steps=2", "--num_train=256", "--num_eval_per_class=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert {"zeroshot_top1", "zeroshot_top5", "chance", "wall_seconds",
          "train_images_per_second"} <= set(summary)
  assert summary["chance"] == pytest.approx(10.0)
  assert summary["stages"]["pretrain"]["steps"] == 4
  assert summary["stages"]["tuned"]["steps"] == 2
  for stage in ("pretrain", "tuned"):
    assert summary["stages"][stage]["num_examples"] == 40
    assert 0.0 <= summary["stages"][stage]["zeroshot_top1"] <= summary["stages"][stage]["zeroshot_top5"]
    assert (run_dir / stage / "config.gin").exists()
  # periodic zero-shot accuracy during training reaches the metrics
  rows = [json.loads(l) for l in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  assert any("zeroshot/flip_folder_zeroshot/top1" in r for r in rows)
  # the tuning run really started from the pre-trained parameters, with masking off
  tuned_config = (run_dir / "tuned" / "config.gin").read_text()
  assert "mask_ratio = 0.0" in tuned_config or "MASK_RATIO = 0.0" in tuned_config
  assert "masked pre-training" in out.stdout
