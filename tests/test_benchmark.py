"""Smoke test of `python -m flip_t5x.benchmark` on the tiny model: the JSON contract users read."""
import importlib.util
import json
import os
import subprocess
import sys

import gin
import jax
import pytest

from flip_t5x import xla_options
from flip_t5x.benchmarking import cases
from flip_t5x.benchmarking import memory
from flip_t5x.runtime import gin_utils
from test_train_helpers import ROOT


def test_timing_summary():
  t = cases.timing_summary([2.0, 1.0, 4.0])
  assert t["step_time_median_s"] == 2.0 and t["step_time_min_s"] == 1.0
  assert t["step_time_spread"] == pytest.approx(1.5) and t["samples"] == 3


@pytest.mark.e2e
def test_benchmark_cli_prints_sane_json_last():
  cmd = [sys.executable, "-m", "flip_t5x.benchmark",
         "--gin_file=gin_configs/models/flip_tiny.gin", "--batch_size=8",
         "--mask_ratios=0.0,0.5", "--rounds=1", "--warmup_steps=0", "--matmul_size=256"]
  # Smoke test: LLVM at -O0 compiles the tiny step several times faster.
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["platform"] == "cpu" and out["num_devices"] >= 1
  assert out["batch_size"] == 8 and out["params"] > 0
  assert out["matmul_peak_flops_per_device"] > 0
  # The XLA options every jitted function compiled with (Eigen matmuls on the CPU by default).
  assert out["compiler_options"] == xla_options.compiler_options("cpu", xla_options.XlaOptions())
  per = out["per_mask_ratio"]
  assert set(per) == {"0.0", "0.5"}
  for r in per.values():
    assert r["images_per_second"] > 0 and r["step_time_median_s"] > 0
    assert r["step_time_min_s"] <= r["step_time_median_s"] <= r["step_time_max_s"]
    assert r["train_flops_per_example"] > 0 and r["achieved_flops_per_second"] > 0
    assert 0 < r["mfu"] < 10  # tiny shapes are far from the matmul peak, but never absurd
    assert r["peak_memory_gib"] > 0
  # Masking half the patches leaves fewer FLOPs; the theory ratio comes from flip_t5x.flops.
  assert per["0.5"]["train_flops_per_example"] < per["0.0"]["train_flops_per_example"]
  assert 1.0 < out["theoretical_speedup_0.5"] < 2.0
  assert out["speedup_0.5"] > 0
  assert out["speedup_fraction_of_theory_0.5"] == pytest.approx(
      out["speedup_0.5"] / out["theoretical_speedup_0.5"])
  assert out["eval_images_per_second"] > 0


@pytest.mark.slow
def test_saved_activations_shrink_with_remat_and_batch(clean_gin_and_counters):
  """--memory_only's backend-independent figure: what each remat policy keeps for the backward."""
  kept = {}
  for policy in ("none", "full"):
    gin.clear_config()
    model = gin_utils.parse_gin_flags_for_model(
        [], [os.path.join(ROOT, "gin_configs/models/flip_tiny.gin")],
        [f"REMAT_POLICY = '{policy}'"])
    for batch_size in (4, 8):
      batch = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype)
               for k, v in cases.synthetic_batch(model.module, 1).items()}
      kept[policy, batch_size] = memory.saved_activation_bytes(model, batch)
  for policy in ("none", "full"):  # parameters are kept once; activations grow with the batch
    assert kept[policy, 8] > kept[policy, 4]
  assert kept["none", 8] - kept["none", 4] > 2 * (kept["full", 8] - kept["full", 4]), kept


H100 = os.path.join(ROOT, "scripts/gpu_targets/h100_80gb.pbtxt")


def _has_cuda_plugin() -> bool:
  try:
    return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))
  except ModuleNotFoundError:  # no jax plugin package at all
    return False


HAS_CUDA_PLUGIN = _has_cuda_plugin()


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="on an accelerator machine (jax's CUDA plugin is installed here)")
def test_target_config_without_the_cuda_plugin_says_what_to_install():
  with pytest.raises(RuntimeError, match=r"pip install 'jax\[cuda13\]"):
    memory.described_gpus(H100)


@pytest.mark.skipif(not HAS_CUDA_PLUGIN,
                    reason="needs an accelerator toolchain: jax's CUDA plugin (pip install 'jax[cuda13]')")
@pytest.mark.e2e
def test_memory_only_for_a_described_gpu_honours_remat():
  """XLA:GPU's memory analysis of the step for an H100 with none attached: remat shrinks it, and
  XLA's FLOPs count the recomputation."""
  peak, flops = {}, {}
  for policy in ("none", "full"):
    cmd = [sys.executable, "-m", "flip_t5x.benchmark",
           "--gin_file=gin_configs/models/flip_tiny.gin", f"--gin.REMAT_POLICY='{policy}'",
           "--memory_only", "--batch_size=64", "--mask_ratios=0.5", f"--target_config={H100}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["compiled_for"] == "NVIDIA H100 80GB HBM3" and out["compiled_for_devices"] == 1
    assert "note" not in out  # the CPU-only caveat does not apply to a GPU compile
    peak[policy] = out["0.5"]["peak_memory_gib"]
    flops[policy] = out["0.5"]["xla_flops"]
  assert 0 < peak["full"] < peak["none"], peak
  assert 0 < flops["none"] < flops["full"], flops
