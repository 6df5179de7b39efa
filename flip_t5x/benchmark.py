r"""Times FLIP's real jitted train step per mask ratio; the last line printed is one JSON object.

  python -m flip_t5x.benchmark --gin_file=gin_configs/models/flip_vit_b16.gin \
      [--gin.network.ImageTowerConfig.depth=4] [--batch_size=32] [--openclip_python=PY]

The model is built from gin (`MODEL`), the state and step by the runtime exactly as `flip_t5x.train`
builds them (`StateLayout` + `FlipTrainer`: partitioned, donated, masking rng folded from the
step), on whatever devices exist. Every mask ratio gets its own state (same initial parameters);
ratios, the zero-shot eval pass and a reference matmul are timed interleaved, round by round, and
medians are reported, so a shared or throttling machine biases every figure alike.

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
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import flops
from flip_t5x import models
from flip_t5x import network
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import train_state as train_state_lib
from flip_t5x.runtime import trainer as trainer_lib
from flip_t5x.runtime import xla_options

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
  flags.DEFINE_string("openclip_python", "", "Python with torch + open_clip_torch: also time "
                      "OpenCLIP's train step with patch_dropout on the same shapes.")
  flags.DEFINE_boolean("memory_only", False, "Only compile the train step from abstract shapes "
                       "and report XLA's memory analysis.")
  flags.DEFINE_string("target_config", "", "With --memory_only: an XLA GpuTargetConfig text proto "
                      "(scripts/gpu_targets/h100_80gb.pbtxt) to compile for, with no GPU attached. "
                      "Needs jax's CUDA plugin (pip install 'jax[cuda13]').")
  flags.DEFINE_integer("target_devices", 1, "With --target_config: the GPUs of the described host.")
  flags.DEFINE_string("output_json", "", "Also write the JSON result to this file.")



# ------------------------------------------------------------------------------------ helpers
def _median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def _timing(seconds: Sequence[float]) -> Dict[str, float]:
  med = _median(seconds)
  return {"step_time_median_s": med, "step_time_min_s": float(min(seconds)),
          "step_time_max_s": float(max(seconds)),
          "step_time_spread": float((max(seconds) - min(seconds)) / med) if med else 0.0,
          "samples": len(seconds)}


def memory_stats(compiled: Any) -> Dict[str, float]:
  """Peak bytes of a compiled step: arguments + outputs - donated aliases + XLA's temp buffers."""
  try:
    m = compiled.memory_analysis()
  except Exception as e:  # some backends have none
    logging.warning("no memory analysis: %s", e)
    return {}
  if m is None:
    return {}
  args, out = m.argument_size_in_bytes, m.output_size_in_bytes
  alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
  peak = args + out - alias + temp
  return {"peak_memory_gib": peak / 2**30, "temp_memory_gib": temp / 2**30,
          "argument_memory_gib": args / 2**30, "alias_memory_gib": alias / 2**30}


def optimizer_of(model: models.FlipModel) -> Any:
  """The gin-bound optimizer, else FLIP's AdamW (b1 0.9, b2 0.95, wd 0.2)."""
  if model.optimizer_def is not None:
    return optimizers.unwrap(model.optimizer_def)
  return optimizers.unwrap(optimizers.adamw(1e-4))


def synthetic_batch(module: network.FlipTwoTower, batch_size: int, seed: int = 0
                    ) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  s = module.image.image_size
  return {"images": rng.standard_normal((batch_size, s, s, 3), np.float32),
          "texts": rng.integers(1, module.text.vocab_size, (batch_size, module.text.max_length),
                                dtype=np.int32)}


class TrainCase:
  """One mask ratio: its model, state and the runtime's jitted, donating train step."""

  def __init__(self, module: network.FlipTwoTower, optimizer_def: Any, mask_ratio: float,
               partitioner: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
    self.mask_ratio = mask_ratio
    self.model = models.FlipModel(module, optimizer_def=optimizer_def, mask_ratio=mask_ratio)
    tx = optimizer_of(self.model)
    batch_size = batch["images"].shape[0]
    self.layout = train_state_lib.StateLayout(
        self.model, tx, partitioner, train_state_lib.model_input_shapes(self.model, batch_size))
    self.state = self.layout.initialize(rng)
    self.trainer = trainer_lib.FlipTrainer(
        model=self.model, train_state=self.state, partitioner=partitioner, eval_names=(),
        summary_dir=None, train_state_axes=self.layout, rng=jax.random.fold_in(rng, 1))
    self.batch = batch
    self.times: List[float] = []
    t0 = time.perf_counter()
    self.memory = memory_stats(self.trainer.lower_train_step(self.state, batch).compile())
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
  """The zero-shot image-embedding pass (every patch), as the eval binary runs it."""

  def __init__(self, case: TrainCase, partitioner: Any, images: jax.Array):
    model = case.model
    self.images = images
    self.case = case  # read its params at run time: each train step donates the old ones
    with case.trainer._contexts():  # pylint: disable=protected-access
      self.fn = jax.jit(lambda p, x: model.encode_images(p, x),
                        in_shardings=(case.layout.shardings.params, partitioner.data_sharding),
                        compiler_options=xla_options.compiler_options())
    self.contexts = case.trainer._contexts  # pylint: disable=protected-access
    self.run(1)
    self.times: List[float] = []

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    with self.contexts():
      outs = [self.fn(self.case.state.params, self.images) for _ in range(steps)]
    jax.block_until_ready(outs)
    return (time.perf_counter() - t0) / steps


# ------------------------------------------------------------------------------- OpenCLIP
# Runs under --openclip_python (torch + open_clip_torch); reads commands on stdin, answers one
# JSON line per command on stdout. The model mirrors FLIP's two towers (mean-pooled image tower,
# sin-cos positions, no text causal mask, first-token text pooling) so FLOPs match.
OPENCLIP_WORKER = r"""
import json, sys, time, types
# torchvision's wheel on PyPI is CUDA-linked; open_clip only needs its Python transforms.
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))
import torch, open_clip
from open_clip.transformer import PatchDropout
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(cfg["threads"])
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg["dtype"]]
model = open_clip.model.CLIP(
    embed_dim=cfg["embed_dim"],
    vision_cfg=open_clip.model.CLIPVisionCfg(
        layers=cfg["image_depth"], width=cfg["image_width"],
        head_width=cfg["image_width"] // cfg["image_heads"], patch_size=cfg["patch_size"],
        image_size=cfg["image_size"], mlp_ratio=cfg["mlp_ratio"], pool_type="avg",
        pos_embed_type="sin_cos_2d", no_ln_pre=True),
    text_cfg=open_clip.model.CLIPTextCfg(
        context_length=cfg["text_length"], vocab_size=cfg["vocab_size"], width=cfg["text_width"],
        heads=cfg["text_heads"], layers=cfg["text_depth"], mlp_ratio=cfg["text_mlp_ratio"],
        no_causal_mask=True, pool_type="first"),
    output_dict=True)
model.train()
loss_fn = open_clip.loss.ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.2)
g = torch.Generator().manual_seed(0)
images = torch.randn(cfg["batch_size"], 3, cfg["image_size"], cfg["image_size"], generator=g)
texts = torch.randint(1, cfg["vocab_size"], (cfg["batch_size"], cfg["text_length"]), generator=g)
amp = dtype != torch.float32

def step():
  opt.zero_grad(set_to_none=True)
  with torch.autocast("cpu", dtype=dtype, enabled=amp):
    out = model(images, texts)
    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
  loss.backward()
  opt.step()
  return float(loss.detach())

def set_ratio(r):
  model.visual.patch_dropout = PatchDropout(r) if r > 0 else torch.nn.Identity()

print(json.dumps({"ready": True, "torch": torch.__version__, "open_clip": open_clip.__version__,
                  "threads": torch.get_num_threads(),
                  "params": sum(p.numel() for p in model.parameters())}), flush=True)
for line in sys.stdin:
  cmd = json.loads(line)
  if cmd.get("quit"):
    break
  set_ratio(cmd["ratio"])
  t0 = time.perf_counter()
  for _ in range(cmd["steps"]):
    loss = step()
  print(json.dumps({"seconds_per_step": (time.perf_counter() - t0) / cmd["steps"],
                    "loss": loss}), flush=True)
"""


class OpenClipWorker:
  """OpenCLIP's train step in a separate Python; idle (blocked on stdin) while JAX runs."""

  def __init__(self, python: str, module: network.FlipTwoTower, batch_size: int):
    image, text = module.image, module.text
    cfg = {"batch_size": batch_size, "image_size": image.image_size,
           "patch_size": image.patch_size, "image_width": image.width,
           "image_depth": image.depth, "image_heads": image.num_heads,
           "text_width": text.width, "text_depth": text.depth,
           "text_heads": text.num_heads, "vocab_size": text.vocab_size,
           "text_length": text.max_length, "embed_dim": module.embed_dim,
           "mlp_ratio": image.mlp_ratio, "text_mlp_ratio": text.mlp_ratio,
           "dtype": str(jnp.dtype(module.dtype)),
           "threads": os.cpu_count() or 1}
    self.proc = subprocess.Popen([python, "-c", OPENCLIP_WORKER, json.dumps(cfg)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()
    self.times: Dict[float, List[float]] = {}

  def _read(self) -> Dict[str, Any]:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError("the OpenCLIP worker exited (see its stderr above)")
    return json.loads(line)

  def run(self, ratio: float, steps: int) -> float:
    self.proc.stdin.write(json.dumps({"ratio": ratio, "steps": steps}) + "\n")
    self.proc.stdin.flush()
    return float(self._read()["seconds_per_step"])

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------- runs
def environment() -> Dict[str, Any]:
  devices = jax.devices()
  preload = os.environ.get("LD_PRELOAD", "")
  return {"device": devices[0].device_kind, "platform": devices[0].platform,
          "num_devices": len(devices), "host_cpus": os.cpu_count(),
          "jax": jax.__version__, "python": platform.python_version(),
          "allocator": "jemalloc" if "jemalloc" in preload else
                       ("tcmalloc" if "tcmalloc" in preload else "system"),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def abstract_params(module: network.FlipTwoTower) -> Any:
  """The parameter tree's shapes and dtypes, without initialising it."""
  return jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, module.image.image_size, module.image.image_size, 3)),
      jnp.zeros((1, module.text.max_length), jnp.int32))["params"])


def model_summary(module: network.FlipTwoTower) -> Dict[str, Any]:
  cfg = network.config_dict(module)
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract_params(module)))
  return {"model": {k: v for k, v in cfg.items() if not callable(v)}, "params": params}


def saved_activation_bytes(model: models.FlipModel, batch: Mapping[str, Any]) -> int:
  """Bytes the backward pass keeps from the forward (jax.vjp's residuals), from abstract shapes.

  Backend-independent, so it shows what `remat_policy` saves where XLA's compiled figure cannot:
  XLA:CPU drops remat's CSE guards, so its memory analysis is the same for every policy.
  """
  def backward(p, b):
    return jax.vjp(lambda p: model.loss_fn(p, b, jax.random.PRNGKey(0))[0], p)[1]

  kept = jax.tree_util.tree_leaves(jax.eval_shape(backward, abstract_params(model.module), batch))
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in kept)


def described_gpus(target_config: str, num_devices: int = 1) -> List[Any]:
  """The devices of one host of `num_devices` GPUs described by an XLA GpuTargetConfig.

  Nothing need be attached: XLA:GPU compiles for the description (jax's deviceless AOT path), so
  its memory analysis is that of the card, remat included, which XLA:CPU's is not.
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  with open(target_config, encoding="utf-8") as f:
    text = f.read()
  try:
    topology = topologies.get_topology_desc("flip_t5x", "cuda", target_config=text,
                                            topology=f"1x1x{num_devices}")
  except NotImplementedError as e:
    raise RuntimeError(
        "--target_config compiles with jax's CUDA plugin, which this Python lacks; install it "
        f"(no GPU needed), e.g. in a separate venv: pip install 'jax[cuda13]=={jax.__version__}'"
    ) from e
  return list(topology.devices)


def for_devices(module: network.FlipTwoTower, devices: Optional[Sequence[Any]]
                ) -> network.FlipTwoTower:
  """The module with `cpu_backward` left to the backend resolved for `devices` (None: attached).

  The network resolves it from this host's backend, which is not the target's when compiling for
  described GPUs.
  """
  if devices is None or module.cpu_backward is not None:
    return module
  return module.clone(cpu_backward=devices[0].platform == "cpu")


# XLA:GPU without a device cannot autotune, and its Triton GEMM tiling then fails on some small
# shapes ("Couldn't find output tile sizes"); cuBLAS GEMMs take their place for the analysis.
_DEVICELESS_GPU_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def memory_only(module: network.FlipTwoTower, optimizer_def: Any, ratios: Sequence[float],
                batch_size: int, devices: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
  """XLA's memory analysis of the train step per ratio, compiled from abstract shapes.

  With it, `saved_activation_gib`: what the backward keeps (parameters it reads included).
  `devices` (e.g. `described_gpus`): compile for those instead of the attached devices.
  """
  partitioner = (partitioning.PjitPartitioner() if devices is None
                 else partitioning.LocalPjitPartitioner(devices=devices))
  target = partitioner.mesh.devices.flat[0]
  module = for_devices(module, devices)
  compile_options = (_DEVICELESS_GPU_OPTIONS if devices is not None and target.platform == "gpu"
                     else None)
  out: Dict[str, Any] = {"batch_size": batch_size, "memory_only": True,
                         "compiled_for": target.device_kind,
                         "compiled_for_devices": partitioner.mesh.devices.size}
  if target.platform == "cpu" and module.remat_policy != "none":
    out["note"] = ("XLA:CPU ignores remat (it drops the CSE guards): the compiled figures are "
                   "those of remat_policy='none'; saved_activation_gib shows the policy's effect")
  for r in ratios:
    model = models.FlipModel(module, optimizer_def=optimizer_def, mask_ratio=r)
    layout = train_state_lib.StateLayout(model, optimizer_of(model), partitioner,
                                         train_state_lib.model_input_shapes(model, batch_size))
    trainer = trainer_lib.FlipTrainer(
        model=model, train_state=None, partitioner=partitioner, eval_names=(), summary_dir=None,
        train_state_axes=layout, rng=jax.random.PRNGKey(0))
    shapes = synthetic_batch(module, 1)
    batch = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype,
                                     sharding=partitioner.data_sharding)
             for k, v in shapes.items()}
    t0 = time.perf_counter()
    compiled = trainer.lower_train_step(layout.abstract_with_shardings(), batch).compile(
        compile_options)
    out[str(r)] = {**memory_stats(compiled), "compile_s": time.perf_counter() - t0,
                   "saved_activation_gib": saved_activation_bytes(model, batch) / 2**30}
    print(f"mask {r}: {out[str(r)]}", flush=True)
  return out


def benchmark(module: network.FlipTwoTower, optimizer_def: Any, ratios: Sequence[float],
              batch_size: int, rounds: int, steps_per_round: int, warmup_steps: int,
              run_eval: bool = True, eval_batch_size: int = 0, matmul_size: int = 0,
              openclip_python: str = "") -> Dict[str, Any]:
  """Times every ratio's train step (and eval, matmul, OpenCLIP) interleaved; returns results."""
  ratios = [float(r) for r in ratios]
  if not ratios or ratios[0] != 0.0:
    raise ValueError(f"mask ratios must start with 0 (speedups are relative to it), got {ratios}")
  partitioner = partitioning.PjitPartitioner()
  host = synthetic_batch(module, batch_size)
  batch = {k: jax.device_put(v, partitioner.data_sharding) for k, v in host.items()}
  rng = jax.random.PRNGKey(0)
  cases = [TrainCase(module, optimizer_def, r, partitioner, batch, rng) for r in ratios]
  for c in cases:
    for _ in range(warmup_steps):
      c.run(1)
  peak = flops.MatmulPeak(jnp.dtype(module.dtype), matmul_size)
  peaks: List[float] = []
  evaluator = None
  if run_eval:
    eb = eval_batch_size or batch_size
    images = jax.device_put(synthetic_batch(module, eb, seed=1)["images"],
                            partitioner.data_sharding)
    evaluator = EvalCase(cases[0], partitioner, images)
  worker = None
  if openclip_python:
    worker = OpenClipWorker(openclip_python, module, batch_size)
    worker.times = {r: [] for r in ratios}
    for r in ratios:
      for _ in range(warmup_steps):
        worker.run(r, 1)
  try:
    for i in range(rounds):
      peaks.append(peak.measure())
      for c in cases:
        c.times.append(c.run(steps_per_round))
      if evaluator is not None:
        evaluator.times.append(evaluator.run(max(1, steps_per_round)))
      if worker is not None:
        for r in ratios:
          worker.times[r].append(worker.run(r, steps_per_round))
      logging.info("round %d: %s", i, [f"{c.mask_ratio}: {c.times[-1]:.3f}s" for c in cases])
      print(f"round {i}: " + ", ".join(f"mask {c.mask_ratio}: {c.times[-1]:.3f} s"
                                        for c in cases) +
            (", openclip: " + ", ".join(f"{r}: {worker.times[r][-1]:.3f} s" for r in ratios)
             if worker else ""), flush=True)
  finally:
    if worker is not None:
      worker.close()

  n_dev = jax.device_count()
  peak_per_device = _median(peaks)
  results: Dict[str, Any] = {
      "batch_size": batch_size, "rounds": rounds, "steps_per_round": steps_per_round,
      "dtype": str(jnp.dtype(module.dtype)), "remat_policy": module.remat_policy,
      "masking_method": module.masking_method,
      "compiler_options": xla_options.compiler_options(),
      "matmul_peak_flops_per_device": peak_per_device,
      "matmul_peak_flops_max": float(max(peaks)), "matmul_size": peak.size,
      "per_mask_ratio": {}}
  base_flops = flops.flops_per_example(module, 0.0, batch_size)["train"]
  for c in cases:
    t = _timing(c.times)
    train_flops = flops.flops_per_example(module, c.mask_ratio, batch_size)["train"]
    ips = batch_size / t["step_time_median_s"]
    achieved = ips * train_flops
    results["per_mask_ratio"][str(c.mask_ratio)] = {
        "images_per_second": ips, "images_per_second_per_device": ips / n_dev, **t,
        "train_flops_per_example": train_flops, "achieved_flops_per_second": achieved,
        "mfu": achieved / (peak_per_device * n_dev), "compile_s": c.compile_s, **c.memory}
  base_ips = results["per_mask_ratio"]["0.0"]["images_per_second"]
  for c in cases[1:]:
    r = str(c.mask_ratio)
    speedup = results["per_mask_ratio"][r]["images_per_second"] / base_ips
    theory = base_flops / flops.flops_per_example(module, c.mask_ratio, batch_size)["train"]
    results[f"speedup_{c.mask_ratio}"] = speedup
    results[f"theoretical_speedup_{c.mask_ratio}"] = theory
    results[f"speedup_fraction_of_theory_{c.mask_ratio}"] = speedup / theory
  results["min_mfu"] = min(v["mfu"] for v in results["per_mask_ratio"].values())
  if evaluator is not None:
    eb = evaluator.images.shape[0]
    results["eval_images_per_second"] = eb / _median(evaluator.times)
    results["eval_batch_size"] = eb
  if worker is not None:
    oc = {"torch": worker.info.get("torch"), "open_clip": worker.info.get("open_clip"),
          "threads": worker.info.get("threads"), "params": worker.info.get("params"),
          "per_mask_ratio": {}}
    for r in ratios:
      ips = batch_size / _median(worker.times[r])
      jax_r = results["per_mask_ratio"][str(r)]
      oc["per_mask_ratio"][str(r)] = {
          "images_per_second": ips, **_timing(worker.times[r]),
          "jax_over_openclip": jax_r["images_per_second"] / ips,
          # Fastest rounds against each other: what a slow phase of a shared machine moves least.
          "jax_over_openclip_best_round": min(worker.times[r]) / jax_r["step_time_min_s"]}
    oc_base = oc["per_mask_ratio"]["0.0"]["images_per_second"]
    for r in ratios[1:]:
      oc[f"speedup_{r}"] = oc["per_mask_ratio"][str(r)]["images_per_second"] / oc_base
    results["openclip"] = oc
    for key in ("jax_over_openclip", "jax_over_openclip_best_round"):
      results[f"min_{key}"] = min(v[key] for v in oc["per_mask_ratio"].values())
  return results


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
  devices = (described_gpus(FLAGS.target_config, FLAGS.target_devices)
             if FLAGS.target_config else None)
  module = for_devices(model.module, devices)
  ratios = [float(r) for r in FLAGS.mask_ratios]
  out: Dict[str, Any] = {"benchmark": "flip_t5x.train_step", "gin_files": list(FLAGS.gin_file),
                         "gin_bindings": list(FLAGS.gin_bindings), **environment(),
                         **model_summary(module)}
  if FLAGS.memory_only:
    out.update(memory_only(module, model.optimizer_def, ratios, FLAGS.batch_size, devices))
  else:
    out.update(benchmark(module, model.optimizer_def, ratios, FLAGS.batch_size, FLAGS.rounds,
                         FLAGS.steps_per_round, FLAGS.warmup_steps, FLAGS.eval,
                         FLAGS.eval_batch_size, FLAGS.matmul_size, FLAGS.openclip_python))
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
