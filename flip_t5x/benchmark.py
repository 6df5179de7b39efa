r"""Times FLIP's real jitted train step per mask ratio; the last line printed is one JSON object.

  python -m flip_t5x.benchmark --gin_file=gin_configs/models/flip_vit_b16.gin \
      [--gin.network.ImageTowerConfig.depth=4] [--batch_size=32] [--openclip_python=PY]

The model is built from gin (`MODEL`); `flip_t5x.benchmarking` builds the state and step as
`flip_t5x.train` does and times every mask ratio, the zero-shot eval pass and a reference matmul
interleaved, round by round, reporting medians (`benchmarking.step_timing`).

Reported per mask ratio: images/s, step time (median, min, max), analytic train FLOPs per example
(`flip_t5x.flops`, model FLOPs = 3x forward), achieved FLOP/s and model FLOP utilisation against
the matmul peak measured in this run (a large matmul in the activation dtype), and the step's peak
memory from XLA's memory analysis; plus `speedup_<r>` (images/s relative to mask 0) next to
`theoretical_speedup_<r>` (FLOP ratio) and the zero-shot image-embedding rate.

`--openclip_python` (a Python with torch and open_clip_torch, kept out of this project's
environment) adds OpenCLIP's PyTorch training step with `patch_dropout` on the same shapes, run in
a worker process whose rounds are interleaved with JAX's, and reports images/s ratios (of the
medians, and of the fastest rounds).

`--memory_only` compiles the step from abstract shapes and reports XLA's memory analysis without
running it (what fits, e.g. ViT-L/16 at a global batch of 4,096), and the bytes the backward pass
keeps under the gin-bound `remat_policy`. With `--target_config` it compiles for a GPU described by
an XLA GpuTargetConfig instead of the attached devices (XLA:GPU's own buffer assignment, remat
honoured), so what fits on an 80 GB card can be read off a CPU machine.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import json
import os
from typing import Any, Dict, Sequence

from absl import app
from absl import flags

from flip_t5x import xla_options
from flip_t5x.benchmarking import cases
from flip_t5x.benchmarking import memory
from flip_t5x.benchmarking import step_timing
from flip_t5x.runtime import gin_utils

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The binary's flags; defined when run, so importing the module registers none."""
  gin_utils.define_gin_flags()
  flags.DEFINE_integer("batch_size", 32, "Global batch size of the train step.")
  flags.DEFINE_list("mask_ratios", ["0.0", "0.5", "0.75"], "Mask ratios to time (0 first).")
  flags.DEFINE_integer("rounds", 3, "Timed rounds; each round times every ratio once.")
  flags.DEFINE_integer("steps_per_round", 1, "Train steps per ratio per round.")
  flags.DEFINE_integer("warmup_steps", 1, "Untimed steps per ratio after compiling.")
  flags.DEFINE_boolean("eval", True, "Also time the zero-shot image-embedding pass (mask 0).")
  flags.DEFINE_integer("eval_batch_size", 0, "Batch of the eval pass (0: --batch_size).")
  flags.DEFINE_integer("matmul_size", 0, "Side of the reference matmul (0: 2048 on CPU, 8192 else).")
  flags.DEFINE_enum("cpu_dot_library", xla_options.XlaOptions.cpu_dot_library,
                    xla_options.CPU_DOT_LIBRARIES, "XlaOptions.cpu_dot_library of every timed "
                    "compile (the steps, the eval pass, the reference matmul).")
  flags.DEFINE_string("openclip_python", "", "Python with torch + open_clip_torch: also time "
                      "OpenCLIP's train step with patch_dropout on the same shapes.")
  flags.DEFINE_boolean("memory_only", False, "Only compile the train step from abstract shapes "
                       "and report XLA's memory analysis.")
  flags.DEFINE_string("target_config", "", "With --memory_only: an XLA GpuTargetConfig text proto "
                      "(scripts/gpu_targets/h100_80gb.pbtxt) to compile for, with no GPU attached. "
                      "Needs jax's CUDA plugin (pip install 'jax[cuda13]').")
  flags.DEFINE_integer("target_devices", 1, "With --target_config: the GPUs of the described host.")
  flags.DEFINE_string("output_json", "", "Also write the JSON result to this file.")


def _print(line: str) -> None:
  print(line, flush=True)


def main(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.target_config:
    # No GPU driver here, so the CUDA plugin's library version check cannot run (the compile
    # needs none); set before jax first loads its plugins.
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    if not FLAGS.memory_only:
      raise app.UsageError("--target_config needs --memory_only (it compiles, it cannot run)")
  model = gin_utils.parse_gin_flags_for_model(FLAGS.gin_search_paths, FLAGS.gin_file,
                                              FLAGS.gin_bindings)
  devices = (memory.described_gpus(FLAGS.target_config, FLAGS.target_devices)
             if FLAGS.target_config else None)
  module = memory.for_devices(model.module, devices)
  ratios = [float(r) for r in FLAGS.mask_ratios]
  out: Dict[str, Any] = {"benchmark": "flip_t5x.train_step", "gin_files": list(FLAGS.gin_file),
                         "gin_bindings": list(FLAGS.gin_bindings), **cases.environment(),
                         **cases.model_summary(module)}
  if FLAGS.memory_only:
    out.update(memory.memory_only(module, model.optimizer_def, ratios, FLAGS.batch_size, devices,
                                  report=_print))
  else:
    out.update(step_timing.benchmark(
        module, model.optimizer_def, ratios, FLAGS.batch_size, FLAGS.rounds,
        FLAGS.steps_per_round, FLAGS.warmup_steps, FLAGS.eval, FLAGS.eval_batch_size,
        FLAGS.matmul_size, FLAGS.openclip_python, report=_print,
        xla_options=xla_options.XlaOptions(cpu_dot_library=FLAGS.cpu_dot_library)))
    for r, v in out["per_mask_ratio"].items():
      print(f"mask {r}: {v['images_per_second']:.2f} img/s, step {v['step_time_median_s']:.3f} s "
            f"(spread {v['step_time_spread']:.0%}), MFU {v['mfu']:.1%}, "
            f"peak mem {v.get('peak_memory_gib', float('nan')):.2f} GiB", flush=True)
  text = json.dumps(out)
  if FLAGS.output_json:
    with open(FLAGS.output_json, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  print(text, flush=True)


if __name__ == "__main__":
  define_flags()
  gin_utils.run(main)
