"""FLIP's real jitted train step timed per mask ratio, with FLOPs and utilisation.

The state and step are built by the runtime exactly as `flip_t5x.train` builds them (`StateLayout`
+ `FlipTrainer`: partitioned, donated, masking rng folded from the step), on whatever devices
exist. Every mask ratio gets its own state (same initial parameters); ratios, the zero-shot eval
pass and a reference matmul are timed interleaved, round by round, and medians are reported, so a
shared or throttling machine biases every figure alike.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import flops
from flip_t5x import models
from flip_t5x import network
from flip_t5x import train_state as train_state_lib
from flip_t5x import xla_options as xla_options_lib
from flip_t5x.benchmarking import cases
from flip_t5x.benchmarking import memory
from flip_t5x.benchmarking import openclip
from flip_t5x.evaluation import encoder as encoder_lib
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import trainer as trainer_lib


class TrainCase:
  """One mask ratio: its model, state and the runtime's jitted, donating train step."""

  def __init__(self, module: network.FlipTwoTower, optimizer_def: Any, mask_ratio: float,
               partitioner: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
    self.mask_ratio = mask_ratio
    self.model = models.FlipModel(module, optimizer_def=optimizer_def, mask_ratio=mask_ratio)
    tx = cases.optimizer_of(self.model)
    batch_size = batch["images"].shape[0]
    self.layout = train_state_lib.StateLayout(
        self.model, tx, partitioner, self.model.input_shapes(batch_size))
    self.state = self.layout.initialize(rng)
    self.trainer = trainer_lib.FlipTrainer(model=self.model, partitioner=partitioner,
                                           layout=self.layout, rng=jax.random.fold_in(rng, 1))
    self.batch = batch
    self.times: List[float] = []
    t0 = time.perf_counter()
    self.memory = memory.memory_stats(self.trainer.lower_train_step(self.state, batch).compile())
    self.compile_s = time.perf_counter() - t0

  def run(self, steps: int) -> float:
    """Seconds per step over `steps` steps (the state is donated and replaced each step)."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, scalars = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready((self.state, scalars))
    dt = (time.perf_counter() - t0) / steps
    if not np.isfinite(float(scalars["loss"])):
      raise FloatingPointError(f"non-finite loss at mask ratio {self.mask_ratio}")
    return dt


class EvalCase:
  """The zero-shot image-embedding pass (every patch): the evaluation library's jitted encoder."""

  def __init__(self, case: TrainCase, images: jax.Array):
    self.images = images
    self.case = case  # read its params at run time: each train step donates the old ones
    self.fn = encoder_lib.encoder_for(case.model, case.trainer.partitioner.xla_options).image_fn
    self.contexts = case.trainer._contexts  # pylint: disable=protected-access
    self.run(1)
    self.times: List[float] = []

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    with self.contexts():
      outs = [self.fn(self.case.state.params, self.images) for _ in range(steps)]
    jax.block_until_ready(outs)
    return (time.perf_counter() - t0) / steps


def _round_line(i: int, train_cases: Sequence[TrainCase], worker, ratios) -> str:
  line = f"round {i}: " + ", ".join(f"mask {c.mask_ratio}: {c.times[-1]:.3f} s"
                                      for c in train_cases)
  if worker is not None:
    line += ", openclip: " + ", ".join(f"{r}: {worker.times[r][-1]:.3f} s" for r in ratios)
  return line


def benchmark(module: network.FlipTwoTower, optimizer_def: Any, ratios: Sequence[float],
              batch_size: int, rounds: int, steps_per_round: int, warmup_steps: int,
              run_eval: bool = True, eval_batch_size: int = 0, matmul_size: int = 0,
              openclip_python: str = "",
              report: Callable[[str], None] = lambda line: None,
              xla_options: Optional[xla_options_lib.XlaOptions] = None) -> Dict[str, Any]:
  """Times every ratio's train step (and eval, matmul, OpenCLIP) interleaved; returns results.

  `report` gets one line per round as it ends. Everything compiles with `xla_options` (None:
  `XlaOptions()`), the matmul whose peak the steps are measured against included.
  """
  xla_options = xla_options or xla_options_lib.XlaOptions()
  ratios = [float(r) for r in ratios]
  if not ratios or ratios[0] != 0.0:
    raise ValueError(f"mask ratios must start with 0 (speedups are relative to it), got {ratios}")
  partitioner = partitioning.PjitPartitioner(xla_options=xla_options)
  host = cases.synthetic_batch(module, batch_size)
  batch = {k: jax.device_put(v, partitioner.data_sharding) for k, v in host.items()}
  rng = jax.random.PRNGKey(0)
  train_cases = [TrainCase(module, optimizer_def, r, partitioner, batch, rng) for r in ratios]
  for c in train_cases:
    for _ in range(warmup_steps):
      c.run(1)
  peak = flops.MatmulPeak(jnp.dtype(module.dtype), matmul_size, xla_options)
  peaks: List[float] = []
  evaluator = None
  if run_eval:
    eb = eval_batch_size or batch_size
    images = jax.device_put(cases.synthetic_batch(module, eb, seed=1)["images"],
                            partitioner.data_sharding)
    evaluator = EvalCase(train_cases[0], images)
  worker = None
  if openclip_python:
    worker = openclip.OpenClipWorker(openclip_python, module, batch_size)
    worker.times = {r: [] for r in ratios}
    for r in ratios:
      for _ in range(warmup_steps):
        worker.run(r, 1)
  try:
    for i in range(rounds):
      peaks.append(peak.measure())
      for c in train_cases:
        c.times.append(c.run(steps_per_round))
      if evaluator is not None:
        evaluator.times.append(evaluator.run(max(1, steps_per_round)))
      if worker is not None:
        for r in ratios:
          worker.times[r].append(worker.run(r, steps_per_round))
      logging.info("round %d: %s", i, [f"{c.mask_ratio}: {c.times[-1]:.3f}s" for c in train_cases])
      report(_round_line(i, train_cases, worker, ratios))
  finally:
    if worker is not None:
      worker.close()

  results = _results(module, train_cases, batch_size, rounds, steps_per_round, peaks, peak.size,
                     xla_options_lib.compiler_options(None, xla_options))
  if evaluator is not None:
    eb = evaluator.images.shape[0]
    results["eval_images_per_second"] = eb / cases.median(evaluator.times)
    results["eval_batch_size"] = eb
  if worker is not None:
    results["openclip"] = openclip.compare(worker, ratios, batch_size, results["per_mask_ratio"])
    for key in ("jax_over_openclip", "jax_over_openclip_best_round"):
      results[f"min_{key}"] = min(v[key] for v in results["openclip"]["per_mask_ratio"].values())
  return results


def _results(module: network.FlipTwoTower, train_cases: Sequence[TrainCase], batch_size: int,
             rounds: int, steps_per_round: int, peaks: Sequence[float],
             matmul_size: int, compiler_options: Dict[str, str]) -> Dict[str, Any]:
  """Images/s, step times, FLOPs and utilisation per ratio; speedups against mask 0 and theory."""
  n_dev = jax.device_count()
  peak_per_device = cases.median(peaks)
  results: Dict[str, Any] = {
      "batch_size": batch_size, "rounds": rounds, "steps_per_round": steps_per_round,
      "dtype": str(jnp.dtype(module.dtype)), "remat_policy": module.remat_policy,
      "masking_method": module.masking_method,
      "compiler_options": compiler_options,
      "matmul_peak_flops_per_device": peak_per_device,
      "matmul_peak_flops_max": float(max(peaks)), "matmul_size": matmul_size,
      "per_mask_ratio": {}}
  base_flops = flops.flops_per_example(module, 0.0, batch_size)["train"]
  for c in train_cases:
    t = cases.timing_summary(c.times)
    train_flops = flops.flops_per_example(module, c.mask_ratio, batch_size)["train"]
    ips = batch_size / t["step_time_median_s"]
    achieved = ips * train_flops
    results["per_mask_ratio"][str(c.mask_ratio)] = {
        "images_per_second": ips, "images_per_second_per_device": ips / n_dev, **t,
        "train_flops_per_example": train_flops, "achieved_flops_per_second": achieved,
        "mfu": achieved / (peak_per_device * n_dev), "compile_s": c.compile_s, **c.memory}
  base_ips = results["per_mask_ratio"]["0.0"]["images_per_second"]
  for c in train_cases[1:]:
    r = str(c.mask_ratio)
    speedup = results["per_mask_ratio"][r]["images_per_second"] / base_ips
    theory = base_flops / flops.flops_per_example(module, c.mask_ratio, batch_size)["train"]
    results[f"speedup_{c.mask_ratio}"] = speedup
    results[f"theoretical_speedup_{c.mask_ratio}"] = theory
    results[f"speedup_fraction_of_theory_{c.mask_ratio}"] = speedup / theory
  results["min_mfu"] = min(v["mfu"] for v in results["per_mask_ratio"].values())
  return results
