"""Two processes through jax.distributed on localhost train like one process."""
from __future__ import annotations

import socket
import subprocess

import numpy as np

import test_train_helpers as h

STEPS = 4
# Each process reads its own shard (even/odd examples), so the global batch holds the same
# examples as one process's batch in another row order. The contrastive loss does not depend on
# the order, but per-row masks would: this test runs unshuffled and unmasked (mask and mesh
# invariance are covered by test_runtime_multidevice).
COMMON = ["--gin.CHECKPOINT_PERIOD=2", "--gin.SHUFFLE_TRAIN_EXAMPLES=False", "--gin.MASK_RATIO=0.0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  ref_dir = str(tmp_path / "one")
  multi_dir = str(tmp_path / "two")
  port = _free_port()
  procs = [subprocess.Popen(
      h.train_args(multi_dir, STEPS, COMMON + [f"--coordinator_address=localhost:{port}",
                                      "--process_count=2", f"--process_index={i}"]),
      cwd=h.ROOT, env=h.env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  h.run_train(ref_dir, STEPS, COMMON)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  ref, multi = h.read_params(ref_dir), h.read_params(multi_dir)
  assert sorted(ref) == sorted(multi)
  for k in ref:
    if k.endswith("key/bias"):
      continue  # softmax ignores the key bias: its gradient is rounding noise Adam amplifies
    np.testing.assert_allclose(multi[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
  ref_loss = [r["loss"] for r in h.read_metrics(ref_dir) if "loss" in r]
  multi_loss = [r["loss"] for r in h.read_metrics(multi_dir) if "loss" in r]
  np.testing.assert_allclose(multi_loss, ref_loss, rtol=1e-5)
