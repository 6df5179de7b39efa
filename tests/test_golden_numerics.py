"""Golden numerics: refactors keep the maths, to float32 rounding.

A tiny FLIP (gin_configs/models/flip_tiny.gin) from a fixed seed, on a fixed batch: the masked
training loss (mask 0.5, fixed rng) and the unmasked loss, the sum and L2 norm of each tower's
embeddings, the gradient's L2 norm per top-level module, and after one step of FLIP's AdamW (its
default decay mask) the L2 norm of the update per top-level module. Stored in
tests/data/golden_numerics.json and compared at rtol 1e-5 (float32, CPU).

Only a change meant to alter the numerics regenerates the file, and says so in its commit message:

    .venv/bin/python tests/test_golden_numerics.py --regenerate
"""
import json
import os
import sys

import jax
import numpy as np
import optax
import pytest

import test_train_helpers as h
from test_train_helpers import ROOT

pytestmark = pytest.mark.slow  # compiles the tiny model's training step
GOLDEN = os.path.join(ROOT, "tests", "data", "golden_numerics.json")
RTOL = 1e-5


def compute() -> dict:
  """The figures, from the public model API and FLIP's optimizer."""
  from flip_t5x.runtime import optimizers  # pylint: disable=g-import-not-at-top
  model = h.gin_model()
  rng = np.random.default_rng(0)
  batch = {"images": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
           "texts": rng.integers(1, 1000, size=(8, 16)).astype(np.int32)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), {"images": (8, 32, 32, 3),
                                                               "texts": (8, 16)})["params"]
  mask_rng = jax.random.PRNGKey(1)
  (loss, _), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch,
                                                                            mask_rng)
  tx = optimizers.unwrap(optimizers.adamw(learning_rate=1e-3))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  z_img = np.asarray(jax.jit(model.encode_images)(params, batch["images"]), np.float64)
  z_txt = np.asarray(jax.jit(model.encode_texts)(params, batch["texts"]), np.float64)

  def norms(tree):
    return {name: float(optax.global_norm(sub)) for name, sub in sorted(tree.items())}

  return {
      "masked_loss": float(loss),
      "unmasked_loss": float(jax.jit(model.eval_fn)(params, batch)[0]),
      "image_embedding_sum": float(z_img.sum()), "image_embedding_l2": float(np.linalg.norm(z_img)),
      "text_embedding_sum": float(z_txt.sum()), "text_embedding_l2": float(np.linalg.norm(z_txt)),
      "grad_l2": norms(grads),
      "update_l2": norms(updates),
  }


def test_golden_numerics():
  with open(GOLDEN, encoding="utf-8") as f:
    want = json.load(f)
  got = compute()
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    if isinstance(value, dict):
      assert sorted(got[key]) == sorted(value), key
      for module, v in value.items():
        np.testing.assert_allclose(got[key][module], v, rtol=RTOL, err_msg=f"{key}/{module}")
    else:
      np.testing.assert_allclose(got[key], value, rtol=RTOL, err_msg=key)


if __name__ == "__main__":
  if sys.argv[1:] != ["--regenerate"]:
    sys.exit(f"usage: {sys.argv[0]} --regenerate   (rewrites {GOLDEN})")
  os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
  with open(GOLDEN, "w", encoding="utf-8") as f:
    json.dump(compute(), f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {GOLDEN}")
