r"""Micro-benchmark of FLIP's patch-masking variants; the last line printed is one JSON object.

  .venv/bin/python scripts/bench_masking.py [--batch=32] [--rounds=5] [--tower_batch=8]

Variants (same random subset semantics: keep the `keep` patches with the smallest noise):
  argsort  argsort(noise)[:, :keep] + take_along_axis        (MAE's recipe)
  topk     top_k(-noise, keep) + take_along_axis            (network.py's "gather")
  onehot   top_k ids, then einsum against a one-hot matrix  (network.py's "onehot", MXU-friendly)

Measured at ViT-B/16 shapes (196 patches of 768 values): the masking op alone, forward and
forward+backward (the latter matters only if masking is moved after a parameterised layer: in
FLIP it acts on raw patches, so its backward is never run), and the jitted image-tower train step
(forward+backward w.r.t. parameters) with each variant. Variants are timed interleaved, A/B/C per
round, and the median over rounds is reported, because the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp

from flip_t5x import network

NUM_PATCHES, PATCH_DIM = 196, 768


def _keep_ids(noise: jax.Array, keep: int, how: str) -> jax.Array:
  if how == "argsort":
    return jnp.argsort(noise, axis=1)[:, :keep]
  return jax.lax.top_k(-noise, keep)[1]


def masking_op(variant: str, keep: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """x [B, L, D], rng -> kept tokens [B, keep, D] with the chosen variant."""

  def fn(x, rng):
    noise = jax.random.uniform(rng, x.shape[:2])
    ids = _keep_ids(noise, keep, "argsort" if variant == "argsort" else "topk")
    if variant == "onehot":
      return jnp.einsum("bkl,bld->bkd", jax.nn.one_hot(ids, x.shape[1], dtype=x.dtype), x)
    return jnp.take_along_axis(x, ids[:, :, None], axis=1)

  return fn


def _time(fn: Callable[[], object]) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def interleaved(cases: Dict[str, Callable[[], object]], rounds: int, inner: int) -> Dict[str, dict]:
  """Median and spread (ms) per case over `rounds` rounds of `inner` calls, cases interleaved."""
  for fn in cases.values():  # compile + warm up
    jax.block_until_ready(fn())
  samples: Dict[str, List[float]] = {k: [] for k in cases}
  for _ in range(rounds):
    for name, fn in cases.items():
      samples[name].append(sum(_time(fn) for _ in range(inner)) / inner * 1e3)
  return {k: {"median_ms": round(statistics.median(v), 3),
              "min_ms": round(min(v), 3), "max_ms": round(max(v), 3)} for k, v in samples.items()}


def op_cases(batch: int, mask_ratio: float, backward: bool) -> Dict[str, Callable[[], object]]:
  keep = network.num_kept_patches(NUM_PATCHES, mask_ratio)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, NUM_PATCHES, PATCH_DIM))
  ct = jax.random.normal(jax.random.PRNGKey(1), (batch, keep, PATCH_DIM))
  rng = jax.random.PRNGKey(2)
  cases = {}
  for variant in ("argsort", "topk", "onehot"):
    op = masking_op(variant, keep)
    if backward:
      f = jax.jit(jax.grad(lambda x, r, op=op: jnp.vdot(op(x, r), ct)))
    else:
      f = jax.jit(op)
    cases[variant] = lambda f=f: f(x, rng)
  return cases


def _variant_masking(variant: str):
  """A `network.random_masking` replacement implementing `variant` (same return contract)."""

  def random_masking(x, rng, mask_ratio, method="gather"):
    del method
    keep = network.num_kept_patches(x.shape[1], mask_ratio)
    noise = jax.random.uniform(rng, x.shape[:2])
    ids = _keep_ids(noise, keep, "argsort" if variant == "argsort" else "topk")
    return masking_op(variant, keep)(x, rng), ids

  return random_masking


def tower_cases(batch: int, depth: int, mask_ratio: float) -> Dict[str, Callable[[], object]]:
  """The ViT-B/16 image tower (given depth), jitted loss+grad w.r.t. parameters, per variant.

  Each variant is swapped in for `network.random_masking` while its step is traced, so the
  tower is exactly network.py's apart from the masking op.
  """
  images = jax.random.normal(jax.random.PRNGKey(0), (batch, 224, 224, 3))
  rng = jax.random.PRNGKey(3)
  tower = network.ImageTower(network.ImageTowerConfig(depth=depth))
  params = jax.jit(tower.init)(jax.random.PRNGKey(1), images[:1])
  cases = {}
  original = network.random_masking
  for variant in ("argsort", "topk", "onehot"):
    def loss(p, variant=variant):
      network.random_masking = _variant_masking(variant)
      try:
        return jnp.sum(tower.apply(p, images, mask_ratio, rng) ** 2)
      finally:
        network.random_masking = original

    f = jax.jit(jax.value_and_grad(loss))
    cases[variant] = lambda f=f: f(params)
  return cases


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32, help="batch for the op alone")
  parser.add_argument("--tower_batch", type=int, default=8)
  parser.add_argument("--tower_depth", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--skip_tower", action="store_true")
  args = parser.parse_args()
  results = {"device": jax.devices()[0].device_kind, "batch": args.batch,
             "tower_batch": args.tower_batch, "tower_depth": args.tower_depth,
             "masking_methods_in_network": list(network.MASKING_METHODS)}
  for ratio in (0.5, 0.75):
    results[f"op_forward_{ratio}"] = interleaved(op_cases(args.batch, ratio, False),
                                                 args.rounds, 20)
    results[f"op_fwd_bwd_{ratio}"] = interleaved(op_cases(args.batch, ratio, True),
                                                 args.rounds, 20)
    print(ratio, "op fwd", results[f"op_forward_{ratio}"], flush=True)
    print(ratio, "op fwd+bwd", results[f"op_fwd_bwd_{ratio}"], flush=True)
    if not args.skip_tower:
      results[f"tower_step_{ratio}"] = interleaved(
          tower_cases(args.tower_batch, args.tower_depth, ratio), args.rounds, 1)
      print(ratio, "tower step", results[f"tower_step_{ratio}"], flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
