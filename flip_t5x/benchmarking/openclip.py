"""OpenCLIP's PyTorch training step on FLIP's shapes: the reference the benchmark compares with.

The worker runs under another Python (with torch + open_clip_torch, kept out of this project's
environment), reads commands on stdin and answers one JSON line per command on stdout, so its
rounds interleave with JAX's and both see the same machine. The model mirrors FLIP's two towers
(mean-pooled image tower, sin-cos positions, no text causal mask, first-token text pooling, the
masked patches dropped by `patch_dropout`) so FLOPs match.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List, Mapping, Sequence

import jax.numpy as jnp

from flip_t5x import network
from flip_t5x.benchmarking import cases

# The worker's script, run as `python -c OPENCLIP_WORKER CONFIG_JSON`.
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


def compare(worker: OpenClipWorker, ratios: Sequence[float], batch_size: int,
            jax_per_mask_ratio: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
  """OpenCLIP's images/s per ratio and JAX's over it (of the medians, and of the fastest rounds)."""
  oc = {"torch": worker.info.get("torch"), "open_clip": worker.info.get("open_clip"),
        "threads": worker.info.get("threads"), "params": worker.info.get("params"),
        "per_mask_ratio": {}}
  for r in ratios:
    ips = batch_size / cases.median(worker.times[r])
    jax_r = jax_per_mask_ratio[str(r)]
    oc["per_mask_ratio"][str(r)] = {
        "images_per_second": ips, **cases.timing_summary(worker.times[r]),
        "jax_over_openclip": jax_r["images_per_second"] / ips,
        # Fastest rounds against each other: what a slow phase of a shared machine moves least.
        "jax_over_openclip_best_round": min(worker.times[r]) / jax_r["step_time_min_s"]}
  oc_base = oc["per_mask_ratio"]["0.0"]["images_per_second"]
  for r in ratios[1:]:
    oc[f"speedup_{r}"] = oc["per_mask_ratio"][str(r)]["images_per_second"] / oc_base
  return oc
