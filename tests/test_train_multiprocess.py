"""Two processes through jax.distributed on localhost train like one process."""
from __future__ import annotations

import socket
import subprocess

import numpy as np
import pytest

import test_train_helpers as h

pytestmark = pytest.mark.e2e

STEPS = 4
# Each process reads its own shard (even/odd examples), so the global batch holds the same
# examples as one process's batch in another row order. The contrastive loss does not depend on
# the order, but per-row masks would: this test runs unshuffled and unmasked (mask and mesh
# invariance are covered by test_runtime_multidevice).
COMMON = ["--gin.CHECKPOINT_PERIOD=2", "--gin.SHUFFLE_TRAIN_EXAMPLES=False", "--gin.MASK_RATIO=0.0"]


def _free_port(low: int = 0) -> int:
  """A port nothing listens on: any (low 0), or one in [low, 65535]."""
  for port in ([0] if low == 0 else range(low, 65536)):
    with socket.socket() as s:
      try:
        s.bind(("localhost", port))
      except OSError:
        continue
      return s.getsockname()[1]
  raise RuntimeError(f"no free port from {low}")


def _explicit(i: int, port: int):
  """t5x.train's explicit flags: coordinator, process count and index."""
  return [f"--coordinator_address=localhost:{port}", "--process_count=2",
          f"--process_index={i}"], {}


def _slurm(i: int, port: int):
  """What srun sets for task i of two on one node: jax.distributed finds the rest itself (its
  coordinator port is 61440 + job id % 4096)."""
  env = {"SLURM_JOB_ID": str(port - 61440), "SLURM_STEP_NODELIST": "localhost",
         "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
         "SLURM_STEP_NUM_NODES": "1"}
  return ["--multiprocess_gpu"], env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  ref_dir = str(tmp_path_factory.mktemp("one"))
  h.run_train(ref_dir, STEPS, COMMON)
  return ref_dir


@pytest.mark.parametrize("launch", [_explicit, _slurm])
def test_two_processes_match_one(tmp_path, reference, launch):
  multi_dir = str(tmp_path / "two")
  port = _free_port(61440 if launch is _slurm else 0)
  procs = []
  for i in range(2):
    flags, env = launch(i, port)
    procs.append(subprocess.Popen(
        h.train_args(multi_dir, STEPS, COMMON + flags), cwd=h.ROOT, env={**h.env(1), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
    assert "process 0 of 2" in out or "process 1 of 2" in out, out[-3000:]
  ref, multi = h.read_params(reference), h.read_params(multi_dir)
  assert sorted(ref) == sorted(multi)
  for k in ref:
    if k.endswith("key/bias"):
      continue  # softmax ignores the key bias: its gradient is rounding noise Adam amplifies
    np.testing.assert_allclose(multi[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
  ref_loss = [r["loss"] for r in h.read_metrics(reference) if "loss" in r]
  multi_loss = [r["loss"] for r in h.read_metrics(multi_dir) if "loss" in r]
  np.testing.assert_allclose(multi_loss, ref_loss, rtol=1e-5)
