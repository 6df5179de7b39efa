"""Bad gin bindings fail before any compile, with a message naming the binding (and file)."""
from __future__ import annotations

import pytest

import test_train_helpers as h

LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'image': 32, 'targets': 16}"


def _fail(args):
  import subprocess, sys
  cmd = [sys.executable, "-m", "flip_t5x.train"] + h.BASE_ARGS[:4] + args
  proc = subprocess.run(cmd, cwd=h.ROOT, env=h.env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = [l for l in proc.stderr.splitlines() if l.startswith("flip_t5x.train: configuration")]
  assert line, proc.stderr[-3000:]
  assert "Compiling" not in proc.stderr
  return "\n".join(proc.stderr.splitlines()[-8:])


@pytest.mark.parametrize("args,expected", [
    (["--gin.partitioning.PjitPartitioner.bogus=1"], ["bogus", "PjitPartitioner"]),
    ([LENGTHS, "--gin.TRAIN_STEPS=3"], ["MODEL_DIR", "gin_configs/runs/pretrain.gin"]),
    ([LENGTHS, "--gin.MODEL_DIR='/tmp/flip_bad'", "--gin.TRAIN_STEPS='abc'"],
     ["total_steps", "abc"]),
    (["--gin_file=gin_configs/no_such_file.gin"], ["no_such_file.gin"]),
])
def test_bad_bindings(args, expected):
  message = _fail(args)
  for text in expected:
    assert text in message, message
